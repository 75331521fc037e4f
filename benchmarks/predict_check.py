"""Check: pscl-predict reproduces finished runs exactly (same masks, same test Dice).

For each run folder of a multirun (default: every job), predicts the run's test images (the ids
of ``<run>/predictions/*.png``) from the data folder with ``pscl-predict`` and compares the masks
with those the run saved at test time, and the Dice with ``metrics.json``.

Usage: ``python benchmarks/predict_check.py <multirun folder> <data folder> <out folder> [job ...]``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pscl.metrics import SegmentationMetrics
from pscl.predict.cli import run
from pscl.models.model_file import load_trained_model


def check(run_dir: Path, data: Path, out: Path) -> bool:
    """True when every mask and the Dice are identical; prints one line."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    ids = sorted(p.stem for p in (run_dir / "predictions").glob("*.png"))
    code = run([str(run_dir), *[str(data / "images" / f"{i}.png") for i in ids], "--out", str(out)])
    dice_of = SegmentationMetrics(load_trained_model(run_dir).class_names)
    same = 0
    for i in ids:
        predicted = np.array(Image.open(out / "masks" / f"{i}.png"))
        same += np.array_equal(predicted, np.array(Image.open(run_dir / "predictions" / f"{i}.png")))
        truth = np.array(Image.open(data / "masks" / f"{i}.png"))
        dice_of.update(torch.from_numpy(predicted).long()[None], torch.from_numpy(truth).long()[None])
    dice, reported = dice_of.compute()["dice"], metrics["test"]["dice"]
    exact = code == 0 and same == len(ids) and dice == reported
    print(f"{metrics['method']:12s} {run_dir.name}: {same}/{len(ids)} masks identical, Dice {dice:.6f} "
          f"(run: {reported:.6f}) -> {'EXACT' if exact else 'DIFFERENT'}", flush=True)
    return exact


def main(argv: list[str]) -> int:
    sweep, data, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    jobs = argv[3:] or sorted((p.name for p in sweep.iterdir() if (p / "metrics.json").is_file()), key=int)
    results = [check(sweep / job, data, out / job) for job in jobs]
    print(f"{sum(results)}/{len(results)} runs reproduced exactly")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
