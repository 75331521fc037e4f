"""Score NASA runs on the five ``different_test`` micrographs, which pscl's data layer does not read.

NASA's ``splits.json`` lists, beside ``train`` and ``test``, five micrographs of other alloys and
imaging conditions (``different_test``). This script segments them with each run of a multirun
(``pscl-predict``) and prints the Dice against their masks: per class pooled over the five images,
then the mean over the foreground classes (pscl-report's definition), per run and per (setting,
method) over the rounds. The setting is the run's ``data.normalisation`` override.

    PSCL_NASA_ROOT=<nasa_folder> pscl-train -m experiment=normalisation_grid data=nasa_superalloy \\
        data.val_fraction=0.0 eval.split=test
    python benchmarks/nasa_different_test.py logs/train/multiruns/<time> <nasa_folder> --out different_test/

Predictions go to ``--out/<job>/`` (kept: a second call reuses them) and the scores to
``--out/different_test.json``. Exit status 2 for unusable input.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from pscl.data.io import read_mask
from pscl.reporting.grid import read_overrides
from pscl.reporting.intensity_baseline import pooled_foreground_dice

NUM_CLASSES = 3  # matrix, secondary and tertiary gamma-prime


def normalisation_of(job: Path) -> str:
    """The run's ``data.normalisation`` override (``default`` when it set none)."""
    named = [o.split("=", 1)[1] for o in read_overrides(job / ".hydra" / "overrides.yaml")
             if o.lstrip("+~").startswith("data.normalisation=")]
    return named[0] if named else "default"


def pooled_dice(truths: list[np.ndarray], predictions: list[np.ndarray]) -> float:
    """pscl's Dice (:mod:`pscl.dice`): counts per class pooled over the images, then the mean over
    the foreground classes present (:func:`~pscl.reporting.intensity_baseline.pooled_foreground_dice`)."""
    return pooled_foreground_dice(predictions, truths, NUM_CLASSES)[0]


def score_run(job: Path, images: list[Path], masks: Path, out: Path) -> dict:
    """Segment ``images`` with the run in ``job`` (unless done already) and score the masks."""
    target = out / job.name
    if not (target / "predict.json").is_file():
        subprocess.run([sys.executable, "-m", "pscl.predict.cli", str(job), *map(str, images), "--out", str(target)],
                       check=True, capture_output=True)
    truths = [read_mask(masks / image.name, NUM_CLASSES) for image in images]
    predictions = [read_mask(target / "masks" / image.name, NUM_CLASSES) for image in images]
    metrics = json.loads((job / "metrics.json").read_text())
    return {"job": job.name, "setting": normalisation_of(job), "method": metrics["method"],
            "label_seed": metrics["label_seed"], "dice": pooled_dice(truths, predictions),
            "per_image": {image.stem: pooled_dice([t], [p]) for image, t, p in zip(images, truths, predictions)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("multirun", type=Path, help="a multirun folder of NASA runs")
    parser.add_argument("nasa", type=Path, help="the nasa_superalloy data folder (images/, masks/, splits.json)")
    parser.add_argument("--out", type=Path, required=True, help="where predictions and scores go")
    args = parser.parse_args(argv)
    splits = args.nasa / "splits.json"
    if not splits.is_file():
        print(f"{splits}: not found; pass the nasa_superalloy folder", file=sys.stderr)
        return 2
    ids = json.loads(splits.read_text()).get("different_test") or []
    images = [args.nasa / "images" / f"{i}.png" for i in ids]
    if not ids or not all(p.is_file() and (args.nasa / "masks" / p.name).is_file() for p in images):
        print(f"{splits}: no different_test list, or an image or mask of it is missing", file=sys.stderr)
        return 2
    jobs = sorted((j for j in args.multirun.iterdir() if (j / "model.pt").is_file()), key=lambda j: j.name.zfill(6))
    if not jobs:
        print(f"{args.multirun}: no finished runs (model.pt) below it", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for job in jobs:
        row = score_run(job, images, args.nasa / "masks", args.out)
        rows.append(row)
        print(f"job {row['job']}: {row['setting']} {row['method']} round {row['label_seed']}: {row['dice']:.3f}",
              flush=True)
    (args.out / "different_test.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n| setting | method | Dice, rounds | mean ± std |\n|---|---|---|---|")
    for key in sorted({(r["setting"], r["method"]) for r in rows}):
        values = [r["dice"] for r in sorted(rows, key=lambda r: r["label_seed"]) if (r["setting"], r["method"]) == key]
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        print(f"| {key[0]} | {key[1]} | {' / '.join(f'{v:.3f}' for v in values)} | {statistics.fmean(values):.3f}{spread} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
