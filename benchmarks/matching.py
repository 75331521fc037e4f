"""Benchmark: PSCL-MoCo's similarity-guided patch matching alone, per scale, by candidate-list size.

The matching inputs are the real ones: a PSCL-MoCo module of the chosen configuration
(``benchmarks/pretrain_step.py``'s ``paper`` or ``quick``) runs ``--train-steps`` training steps on
the benchmark batch (0 = at initialisation), and the templates and candidate features of its last
step are recorded per scale. Each list size is then timed (best of ``--repeats``) and checked to
give the same cells as the default list size.

Usage: ``python benchmarks/matching.py --config quick --train-steps 150 --list-sizes 4,8,16,64``;
``--profile`` adds, per scale, the operators that take the time at the default list size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def record_matching_inputs(config: str, train_steps: int) -> list[tuple]:
    """(templates, [candidates per unlabelled image]) of every scale of the last training step."""
    import torch

    import pscl.contrastive.patches as patches
    from pretrain_step import CONFIGS, _batch, build_module

    spec = CONFIGS[config]
    module = build_module(config, "moco")
    batch = _batch(module, spec["size"], spec["unlabeled"])
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    recorded: list[tuple] = []
    matcher = patches.similarity_guided_sample_batch

    def recording(templates, candidates, **options):
        recorded.append((templates.detach().clone(), [c.detach().clone() for c in candidates]))
        return matcher(templates, candidates, **options)

    patches.similarity_guided_sample_batch = recording
    try:
        for _ in range(max(1, train_steps)):
            recorded.clear()
            loss = module.training_step(batch, 0)
            if train_steps:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    finally:
        patches.similarity_guided_sample_batch = matcher
    return recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="quick", choices=("quick", "paper"))
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--list-sizes", default="4,8,16,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="per scale, the operators' self time (torch.profiler)")
    args = parser.parse_args(argv)
    list_sizes = [int(size) for size in args.list_sizes.split(",")]

    import torch

    from pscl.contrastive.matching import DEFAULT_LIST_SIZE
    from pscl.contrastive.sampling import similarity_guided_sample_batch

    inputs = record_matching_inputs(args.config, args.train_steps)
    print(f"{args.config}, after {args.train_steps} training steps; ms per scale (best of {args.repeats})")
    print("| templates x cells per image | " + " | ".join(f"list {size}" for size in list_sizes) + " |")
    print("|---|" + "---:|" * len(list_sizes))
    for templates, candidates in inputs:
        reference = similarity_guided_sample_batch(templates, candidates, list_size=DEFAULT_LIST_SIZE)
        cells = []
        for size in list_sizes:
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                got = similarity_guided_sample_batch(templates, candidates, list_size=size)
                times.append(time.perf_counter() - start)
            if not all(torch.equal(a, b) for a, b in zip(got, reference)):
                raise SystemExit(f"list size {size} gave other cells than list size {DEFAULT_LIST_SIZE}: a bug")
            cells.append(f"{1e3 * min(times):.0f}")
        mean_cells = sum(c.shape[0] for c in candidates) / len(candidates)
        print(f"| {templates.shape[0]} x {mean_cells:.0f} ({len(candidates)} images) | " + " | ".join(cells) + " |")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for templates, candidates in inputs:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                similarity_guided_sample_batch(templates, candidates)
            ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:5]
            print(f"{templates.shape[0]} templates: " + ", ".join(
                f"{e.key} {e.self_cpu_time_total / 1e3:.0f} ms" for e in ops))
    return 0


if __name__ == "__main__":
    from pscl.perf import configure_allocator

    configure_allocator()  # the allocator pscl-train uses: may re-execute this script with mimalloc
    sys.exit(main())
