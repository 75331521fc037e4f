"""bf16 parity: does ``trainer.precision=bf16-mixed`` pretraining give the results of fp32?

Reads one multirun that swept ``trainer.precision`` over ``32-true`` and ``bf16-mixed`` (and
``data.label_seed`` over rounds) with snapshots, pairs the two precisions by round and snapshot,
and prints a markdown table: fine-tuned Dice and probe Dice of each precision (mean ± sample std
over rounds), the paired difference bf16 - fp32 (mean, min, max) and the round-to-round spread.

    pscl-train -m experiment=pretrain_scaling method=pscl_simclr \\
        trainer.precision=32-true,bf16-mixed data.label_seed=0,1,2
    python benchmarks/bf16_parity.py <the multirun folder> [--json parity.json]

``--crossed RUNS`` adds the crossed check: each pretraining of the sweep fine-tuned (and probed)
in the other precision, one run per job (``stage=finetune pretrained_ckpt=<job>/pretrain/pretrained.pt
trainer.precision=<the other>``, the loop in docs/results.md); it prints Dice and probe per
(pretraining precision, fine-tuning precision) over the rounds, which separates what bf16 does in
pretraining from what it does in fine-tuning.

The rule, fixed before the study ran (issue 20): parity holds when, at the final snapshot, the
absolute mean paired difference of the fine-tuned Dice and of the probe Dice are each no larger
than the round-to-round spread (the sample std over rounds of the fp32 runs). The exit status is
0 when parity holds, 3 when it does not, 2 for unusable input.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

FP32, BF16 = "32-true", "bf16-mixed"
#: Lightning's other spellings of the two precisions, mapped to the ones above.
ALIASES = {"32": FP32, "32-true": FP32, "bf16": BF16, "bf16-mixed": BF16}


def job_precision(job: Path) -> str | None:
    """The job's ``trainer.precision`` from its ``.hydra/config.yaml`` (None if not recorded)."""
    config = job / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    trainer = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("trainer") or {}
    return ALIASES.get(str(trainer.get("precision")), str(trainer.get("precision")))


def load_points(multirun: Path) -> dict[tuple[str, int, int], dict[str, float]]:
    """``{(precision, label_seed, steps): {"dice": ..., "probe": ...}}`` over the finished jobs."""
    points: dict[tuple[str, int, int], dict[str, float]] = {}
    for metrics_file in sorted(multirun.glob("*/metrics.json")):
        precision = job_precision(metrics_file.parent)
        record = json.loads(metrics_file.read_text(encoding="utf-8"))
        for snap in record.get("snapshots") or []:
            point = {"dice": float(snap["test"]["dice"])}
            if "probe" in snap:
                point["probe"] = float(snap["probe"]["dice"])
            points[(str(precision), int(record["label_seed"]), int(snap["steps"]))] = point
    return points


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def parity_rows(points: dict[tuple[str, int, int], dict[str, float]]) -> list[dict[str, Any]]:
    """One row per (snapshot steps, metric) over the rounds that both precisions finished."""
    rows = []
    steps = sorted({key[2] for key in points})
    for step in steps:
        seeds = sorted({s for (p, s, st) in points if st == step and p == FP32}
                       & {s for (p, s, st) in points if st == step and p == BF16})
        for metric in ("dice", "probe"):
            pairs = [(points[(FP32, s, step)].get(metric), points[(BF16, s, step)].get(metric)) for s in seeds]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if not pairs:
                continue
            fp32, bf16 = [a for a, _ in pairs], [b for _, b in pairs]
            diffs = [b - a for a, b in pairs]
            rows.append({"steps": step, "metric": metric, "rounds": len(pairs),
                         "fp32_mean": statistics.fmean(fp32), "fp32_std": _spread(fp32),
                         "bf16_mean": statistics.fmean(bf16), "bf16_std": _spread(bf16),
                         "diff_mean": statistics.fmean(diffs), "diff_min": min(diffs), "diff_max": max(diffs),
                         "spread": _spread(fp32)})
    return rows


def parity_holds(rows: list[dict[str, Any]]) -> bool:
    """The pre-registered rule: at the final snapshot, |mean difference| <= fp32 round spread, both metrics."""
    final = max(row["steps"] for row in rows)
    last = [row for row in rows if row["steps"] == final]
    return len(last) == 2 and all(abs(row["diff_mean"]) <= row["spread"] for row in last)


def crossed_points(sweep: Path, runs: Path) -> dict[tuple[str, str, int], tuple[float, float | None]]:
    """``{(pretraining precision, fine-tuning precision, label_seed): (Dice, probe Dice)}``: the sweep's
    own jobs (same precision in both stages, final snapshot) and the crossed runs below ``runs``."""
    points: dict[tuple[str, str, int], tuple[float, float | None]] = {}
    swept = load_points(sweep)
    for (precision, seed, steps), point in swept.items():
        if steps == max(st for (p, s, st) in swept if p == precision and s == seed):
            points[(precision, precision, seed)] = (point["dice"], point.get("probe"))
    for metrics_file in sorted(runs.glob("**/metrics.json")):
        config = yaml.safe_load((metrics_file.parent / ".hydra" / "config.yaml").read_text(encoding="utf-8")) or {}
        source = config.get("pretrained_ckpt")
        if not source:
            continue
        pretrained = job_precision(Path(source).parent.parent)  # <job>/pretrain/pretrained.pt
        finetuned = ALIASES.get(str((config.get("trainer") or {}).get("precision")))
        record = json.loads(metrics_file.read_text(encoding="utf-8"))
        probe = (record.get("probe") or {}).get("dice")
        points[(str(pretrained), str(finetuned), int(record["label_seed"]))] = (
            float(record["test"]["dice"]), None if probe is None else float(probe))
    return points


def crossed_markdown(points: dict[tuple[str, str, int], tuple[float, float | None]]) -> str:
    """One row per (pretraining, fine-tuning) precision: Dice per round, mean ± std; probe likewise."""
    lines = ["| pretraining | fine-tuning | fine-tuned Dice by round | mean ± std | probe Dice by round |",
             "|---|---|---|---:|---|"]
    for pretrained in (FP32, BF16):
        for finetuned in (FP32, BF16):
            seeds = sorted(s for (p, f, s) in points if (p, f) == (pretrained, finetuned))
            if not seeds:
                continue
            dice = [points[(pretrained, finetuned, s)][0] for s in seeds]
            probe = [points[(pretrained, finetuned, s)][1] for s in seeds]
            lines.append(f"| {pretrained} | {finetuned} | {' / '.join(f'{d:.3f}' for d in dice)} "
                         f"| {statistics.fmean(dice):.3f} ± {_spread(dice):.3f} "
                         f"| {' / '.join('-' if p is None else f'{p:.3f}' for p in probe)} |")
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| steps | metric | rounds | fp32 | bf16 | bf16 - fp32 (mean, min..max) | round spread (fp32 std) |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['steps']} | {'fine-tuned Dice' if r['metric'] == 'dice' else 'probe Dice'} | {r['rounds']} "
                     f"| {r['fp32_mean']:.3f} ± {r['fp32_std']:.3f} | {r['bf16_mean']:.3f} ± {r['bf16_std']:.3f} "
                     f"| {r['diff_mean']:+.3f} ({r['diff_min']:+.3f}..{r['diff_max']:+.3f}) | {r['spread']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("multirun", type=Path, help="the multirun folder of the parity sweep")
    parser.add_argument("--json", type=Path, help="also write the rows and the verdict here")
    parser.add_argument("--crossed", type=Path, help="folder of the crossed fine-tunings (see the docstring)")
    args = parser.parse_args(argv)
    if not args.multirun.is_dir():
        print(f"error: {args.multirun} is not a folder; give the multirun folder pscl-train -m printed", file=sys.stderr)
        return 2
    rows = parity_rows(load_points(args.multirun))
    if not rows:
        print(f"error: {args.multirun} has no finished job of each precision with snapshots; run the sweep in "
              f"this file's docstring first", file=sys.stderr)
        return 2
    holds = parity_holds(rows)
    print(markdown(rows))
    print(f"\nparity {'holds' if holds else 'does not hold'} at {max(r['steps'] for r in rows)} steps "
          f"(|mean difference| <= fp32 round spread, fine-tuned and probe Dice)")
    if args.crossed:
        print("\ncrossed: each pretraining fine-tuned in both precisions (rounds in label_seed order)\n")
        print(crossed_markdown(crossed_points(args.multirun, args.crossed)))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "parity": holds}, indent=1), encoding="utf-8")
    return 0 if holds else 3


if __name__ == "__main__":
    sys.exit(main())
