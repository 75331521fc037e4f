"""Benchmark: seconds per PSCL pretraining step vs the bare networks, and peak memory.

Each (configuration, variant, mode) runs in its own process so that peak RSS is its own:

* ``pscl``  - one full PSCL training step (views already in memory): forward of both views,
  heads, correspondence, sampling, losses, backward, Adam step;
* ``bare``  - the same backbone(s) on the same two views, forward + backward of a trivial loss,
  Adam step: the cost of the networks alone (MoCo: the key network in no-grad, as in PSCL).

Configurations (:data:`CONFIGS`; ``make bench`` runs :data:`DEFAULT_CONFIGS`): ``paper``,
``paper_keep``, ``paper_lowmem`` (376 px crops, the paper's UNet with three recomputation
settings), ``quick`` (``experiment=quick``: 128 px crops, the small UNet) and ``quick_resnet18``
(the quick sizes with ``backbone=smp``: an smp UNet with a ResNet-18 encoder, randomly
initialised, about 14.3 M parameters against the small UNet's 0.54 M; docs/backbones.md).

Usage: ``python benchmarks/pretrain_step.py [--configs paper,quick] [--steps 3] [--json out.json]``
(``make bench`` writes ``benchmarks/results.json`` and the table in ``docs/performance.md``).
Precision: fp32 for every configuration, and also bf16 autocast for the configurations in
``BF16_CONFIGS`` (quick), unless ``--precision`` names the precisions of every configuration
(``fp32``, ``bf16`` or ``fp32,bf16``). bf16 rows run the forward pass (the training step, or the
bare networks' forward and their trivial loss) under ``torch.autocast(<device>, bfloat16)``, as
``trainer.precision=bf16-mixed`` does; backward and the Adam step run outside autocast.
On a GPU: ``--device cuda --precision fp32,bf16`` times CUDA-synchronised steps in fp32 and in
bf16 autocast and reports the peak GPU memory (``torch.cuda.max_memory_allocated``).
``PSCL_BENCH_PROFILE=1 ... --one quick moco pscl fp32`` prints where one more step's time goes, by
part (matching, losses, heads, backward), on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    # the paper: 376 x 376, 8 unlabelled + 1 annotated image, UNet 32-256, fp32, the shipped
    # backbone default (the 1/1 and 1/2 blocks recomputed in backward)
    "paper": {"size": 376, "unlabeled": 8, "widths": (32, 64, 128, 256),
              "backbone": {"checkpoint_blocks": "high_resolution"}},
    # the paper's configuration keeping every activation (the GPU recipes' setting)
    "paper_keep": {"size": 376, "unlabeled": 8, "widths": (32, 64, 128, 256), "backbone": {"checkpoint_blocks": "none"}},
    # experiment=quick: 128 px crops, small UNet
    "quick": {"size": 128, "unlabeled": 8, "widths": (16, 32, 64, 128)},
    # the paper's configuration with every UNet block recomputed in backward (backbone.checkpoint_blocks=all)
    "paper_lowmem": {"size": 376, "unlabeled": 8, "widths": (32, 64, 128, 256), "backbone": {"checkpoint_blocks": "all"}},
    # experiment=quick backbone=smp backbone.encoder_name=resnet18: the quick sizes, an smp UNet with a
    # ResNet-18 encoder (smp's default decoder, random initialisation) instead of the small UNet
    "quick_resnet18": {"size": 128, "unlabeled": 8, "smp": {"encoder_name": "resnet18"}},
}
# the configurations make bench times (--configs without a value)
DEFAULT_CONFIGS = ("paper", "paper_lowmem", "quick", "quick_resnet18")
TOP_K = {"simclr": 4, "moco": 30}
# configurations that make bench (no --precision) also times in bf16 autocast, besides fp32
BF16_CONFIGS = ("quick",)


def precisions_of(config: str, requested: str | None) -> list[str]:
    """The precisions to time ``config`` in: ``requested`` (comma-separated) for every
    configuration, or by default fp32 and, for ``BF16_CONFIGS``, bf16."""
    if requested:
        return requested.split(",")
    return ["fp32", "bf16"] if config in BF16_CONFIGS else ["fp32"]


def _batch(module, size: int, unlabeled: int, seed: int = 0) -> dict:
    import numpy as np
    from torch.utils.data import default_collate

    rng = np.random.default_rng(seed)
    views = module.views((0.5,), (0.2,), size)
    views.reseed(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = ((np.sin(xx / 9.0) + np.cos(yy / 7.0)) * 1.5 + 2).astype(np.uint8).clip(0, 3)
    image = (0.3 + 0.12 * mask + 0.05 * rng.standard_normal((size, size))).astype(np.float32)[..., None]
    labeled = views(image, mask)
    labeled["group"] = 0
    items = []
    for b in range(unlabeled):
        item = views(np.roll(image, (11 * b, 17 * b), axis=(0, 1)))
        item["group"] = b % 3
        items.append(item)
    return {"labeled": default_collate([labeled]), "unlabeled": default_collate(items)}


def _to(value, device):
    """``value`` (tensors in nested dicts and lists) on ``device``."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    return value


def build_backbone(config: str):
    """The backbone of a benchmark configuration: pscl's UNet, or an smp UNet (``"smp"`` in its spec)."""
    spec = CONFIGS[config]
    # the shipped backbone defaults (conf/backbone/*.yaml); PSCL_BENCH_BACKBONE='{"channels_last": false}' overrides
    overrides = json.loads(os.environ.get("PSCL_BENCH_BACKBONE", "{}"))
    if "smp" in spec:  # conf/backbone/smp.yaml's defaults: smp's decoder widths, no encoder weights
        from pscl.models.smp_backbone import SmpBackbone

        return SmpBackbone(1, 4, **{**spec["smp"], **overrides})
    from pscl.models.unet import UNet

    return UNet(1, 4, spec["widths"], **{"channels_last": True, **spec.get("backbone", {}), **overrides})


def build_module(config: str, variant: str):
    """The PSCL module of a benchmark configuration (seeded), with its step's logging switched off."""
    import torch

    from pscl.modules.pscl import PSCLModule

    torch.manual_seed(0)
    module_options = json.loads(os.environ.get("PSCL_BENCH_MODULE", "{}"))  # e.g. '{"recompute_views": true}'
    module = PSCLModule(build_backbone(config), num_classes=4, variant=variant,
                        top_k=TOP_K[variant], gather_distributed=False, **module_options)
    module.log_losses = lambda values, batch_size: None
    return module


def run_one(config: str, variant: str, mode: str, steps: int, device: str = "cpu", precision: str = "fp32") -> dict:
    """Time ``steps`` steps after one warm-up step in this process; report seconds and peak memory."""
    import torch

    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    bf16 = precision == "bf16" or bool(os.environ.get("PSCL_BENCH_BF16"))
    spec = CONFIGS[config]
    module = build_module(config, variant)
    compile_seconds = None
    if os.environ.get("PSCL_BENCH_COMPILE"):  # torch.compile the backbone(s) (inductor); time the first call apart
        for network in (module.backbone, getattr(module, "backbone_momentum", None)):
            if network is not None:  # PSCL calls forward_features: compile the blocks it runs
                network.encoder.compile()
                # smp's UNet: forward_features calls the decoder's blocks one by one, not its forward
                for block in getattr(network.decoder, "blocks", [network.decoder]):
                    block.compile()
    batch = _to(_batch(module, spec["size"], spec["unlabeled"]), device)
    module.to(device)
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def forward_precision():
        """The forward pass's context: bf16 autocast on the device (as Lightning's bf16-mixed), or none."""
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)

    def pscl_step() -> None:
        with forward_precision():
            loss = module.training_step(batch, 0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    x0 = torch.cat([batch["labeled"]["x0"], batch["unlabeled"]["x0"]])
    x1 = torch.cat([batch["labeled"]["x1"], batch["unlabeled"]["x1"]])

    def bare_step() -> None:
        with forward_precision():
            out0 = module.backbone.forward_features(x0)
            if variant == "moco":
                with torch.no_grad():
                    out1 = module.backbone_momentum.forward_features(x1)
                loss = sum(f.mean() for f in out0["decoder"]) + out0["bottleneck"].mean() + 0 * out1["bottleneck"].mean()
            else:
                out1 = module.backbone.forward_features(x1)
                loss = sum(f.mean() for f in out0["decoder"] + out1["decoder"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step = pscl_step if mode == "pscl" else bare_step
    cuda = torch.device(device).type == "cuda"

    def synchronise() -> None:
        if cuda:
            torch.cuda.synchronize()

    started = time.perf_counter()
    step()  # warm-up: allocator, first-touch pages, CUDA kernels chosen (and compilation)
    synchronise()
    if os.environ.get("PSCL_BENCH_COMPILE"):
        compile_seconds = time.perf_counter() - started
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        synchronise()
        times.append(time.perf_counter() - start)
    if os.environ.get("PSCL_BENCH_PROFILE"):  # where one more step's time goes, by part, on stderr
        print(profile_parts(step, synchronise), file=sys.stderr)
    gpu = {"peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30, "gpu": torch.cuda.get_device_name()} if cuda else {}
    return {
        "config": config, "variant": variant, "mode": mode, "steps": steps, "device": device,
        "precision": "bf16" if bf16 else precision, **gpu, "compile_seconds": compile_seconds,
        "seconds_per_step": sum(times) / len(times), "min_seconds": min(times),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "minor_page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
        "threads": torch.get_num_threads(),
        "allocator": os.environ.get("PSCL_ALLOCATOR_IN_EFFECT", "unchanged"),
    }


# the parts of a PSCL step that PSCL_BENCH_PROFILE=1 times: (module, function) pairs
PROFILED_PARTS = (
    ("pscl.contrastive.patches", "batch_correspondence"),
    ("pscl.contrastive.patches", "cell_label_scores"),
    ("pscl.contrastive.patches", "label_guided_sample"),
    ("pscl.contrastive.patches", "similarity_guided_sample_batch"),
    ("pscl.modules.pscl", "prototype_queue_targets"),
    ("pscl.modules.pscl", "soft_contrastive_loss"),
    ("pscl.modules.pscl", "class_masked_nt_xent"),
    ("pscl.modules.pscl", "nt_xent"),
)


def profile_parts(step, synchronise) -> str:
    """One profiled step: milliseconds per named part (forward only; backward is one part)."""
    import functools
    import importlib

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from pscl.models.heads import DenseProjectionHead

    originals = []

    def wrap(owner, name: str, label: str) -> None:
        function = getattr(owner, name)
        originals.append((owner, name, function))

        @functools.wraps(function)
        def timed(*args, **kwargs):
            with record_function(label):
                return function(*args, **kwargs)

        setattr(owner, name, timed)

    for module_name, name in PROFILED_PARTS:
        wrap(importlib.import_module(module_name), name, f"part: {name}")
    wrap(DenseProjectionHead, "forward", "part: dense heads on whole maps")
    wrap(torch.Tensor, "backward", "part: backward")
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
            synchronise()
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)
    parts = sorted((e for e in prof.key_averages() if e.key.startswith("part: ")), key=lambda e: -e.cpu_time_total)
    return "\n".join(f"{e.key[6:]:40s} {e.cpu_time_total / 1e3:8.1f} ms" for e in parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"comma-separated, of {', '.join(CONFIGS)} (default: {','.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--variants", default="simclr,moco")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--allocator", choices=("mimalloc", "glibc-tuned", "glibc"),
                        default=os.environ.get("PSCL_ALLOCATOR", "mimalloc"),
                        help="memory allocator of the timed processes (pscl.perf; default: as pscl-train)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--precision", default=None,
                        help="fp32, bf16 (autocast) or both: fp32,bf16, for every configuration (default: fp32, "
                             f"and also bf16 for {','.join(BF16_CONFIGS)})")
    parser.add_argument("--one", nargs=4, metavar=("CONFIG", "VARIANT", "MODE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ["PSCL_ALLOCATOR"] = args.allocator
    if args.one:
        from pscl.perf import configure_allocator

        os.environ["PSCL_ALLOCATOR_IN_EFFECT"] = configure_allocator()  # may re-execute with mimalloc
        config, variant, mode, precision = args.one
        print(json.dumps(run_one(config, variant, mode, steps=args.steps, device=args.device, precision=precision)))
        return 0
    rows = []
    for config in args.configs.split(","):
        for variant in args.variants.split(","):
            for precision in precisions_of(config, args.precision):
                for mode in ("bare", "pscl"):
                    proc = subprocess.run([sys.executable, __file__, "--one", config, variant, mode, precision,
                                           "--steps", str(args.steps), "--allocator", args.allocator,
                                           "--device", args.device], capture_output=True, text=True, check=True)
                    row = json.loads(proc.stdout.strip().splitlines()[-1])
                    rows.append(row)
                    gpu = f"  peak GPU {row['peak_gpu_gib']:.2f} GiB" if "peak_gpu_gib" in row else ""
                    print(f"{config:14s} {variant:7s} {precision:4s} {mode:5s} {row['seconds_per_step']:8.3f} s/step "
                          f"(min {row['min_seconds']:.3f})  peak RSS {row['peak_rss_gib']:.2f} GiB{gpu}", flush=True)
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()}, "allocator": args.allocator,
              "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(markdown_table(rows))
    return 0


def markdown_table(rows: list[dict]) -> str:
    """One line per configuration and variant: PSCL step, bare step, overhead, peak RSS."""
    lines = ["| config | variant | precision | PSCL step (s) | bare networks (s) | machinery overhead | PSCL peak RSS (GiB) |",
             "|---|---|---|---:|---:|---:|---:|"]
    keyed = {(r["config"], r["variant"], r.get("precision", "fp32"), r["mode"]): r for r in rows}
    for (config, variant, precision, mode), row in keyed.items():
        if mode != "pscl":
            continue
        bare = keyed.get((config, variant, precision, "bare"))
        overhead = f"{100 * (row['seconds_per_step'] / bare['seconds_per_step'] - 1):+.0f} %" if bare else "-"
        lines.append(f"| {config} | {variant} | {precision} | {row['seconds_per_step']:.3f} | "
                     f"{bare['seconds_per_step'] if bare else float('nan'):.3f} | {overhead} | {row['peak_rss_gib']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
