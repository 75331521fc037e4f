"""Per-pixel grey-level classifier: the floor any context-aware segmenter must beat.

For every grey level the classifier predicts the class most often seen at that level in
the training masks, which is the Bayes-optimal rule for a model that sees one pixel value
and nothing else. If it scores close to a trained UNet, the dataset can be solved by
thresholding and says little about learned features.

Usage: ``python -m pscl.reporting.intensity_baseline DATASET_ROOT``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pscl.constants import IGNORE_INDEX
from pscl.dice import class_dice, dice_counts, foreground_dice
from pscl.data.io import open_checked
from pscl.data.text import read_text
from pscl.errors import DataError, run_command


def fit_intensity_classifier(
    images: Iterable[np.ndarray], masks: Iterable[np.ndarray], num_classes: int
) -> np.ndarray:
    """256-entry lookup table: grey level -> most frequent class among training pixels.

    Pixels labelled 255 are ignored. Ties go to the lower class index; grey levels never
    seen in training get the overall most frequent class (the prior).
    """
    counts = np.zeros((256, num_classes), np.int64)
    for image, mask in zip(images, masks, strict=True):
        image = np.asarray(image)
        mask = np.asarray(mask)
        if image.shape != mask.shape:
            raise ValueError(f"image {image.shape} and mask {mask.shape} differ in shape")
        if image.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {image.dtype}")
        keep = mask != IGNORE_INDEX
        labels = mask[keep].astype(np.int64)
        if labels.size and labels.max() >= num_classes:
            raise ValueError(f"mask value {labels.max()} >= num_classes={num_classes}")
        np.add.at(counts, (image[keep].astype(np.int64), labels), 1)
    lut = counts.argmax(axis=1).astype(np.uint8)
    unseen = counts.sum(axis=1) == 0
    lut[unseen] = counts.sum(axis=0).argmax()
    return lut


def predict_intensity(lut: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Apply the lookup table to a uint8 image."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {image.dtype}")
    return np.asarray(lut, np.uint8)[image]


def pooled_foreground_dice(
    preds: Iterable[np.ndarray], masks: Iterable[np.ndarray], num_classes: int
) -> tuple[float, list[float]]:
    """Dice per foreground class (1..num_classes-1) pooled over all images, and their mean.

    Pixels with mask 255 are ignored. A class absent from both predictions and masks gets
    NaN and is left out of the mean.
    """
    totals = [np.zeros(num_classes, np.int64) for _ in range(3)]  # tp, fp, fn
    for pred, mask in zip(preds, masks, strict=True):
        for total, count in zip(totals, dice_counts(pred, mask, num_classes)):
            total += count
    per_class = class_dice(*totals)
    return foreground_dice(per_class), [float(d) for d in per_class[1:]]


def _load(root: Path, ids: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [np.asarray(open_checked(root / "images" / f"{i}.png").convert("L")) for i in ids]
    masks = [np.asarray(open_checked(root / "masks" / f"{i}.png")) for i in ids]
    return images, masks


def _read_splits(path: Path) -> dict:
    """``splits.json`` in any common encoding; a file that is not JSON is a :class:`DataError`."""
    try:
        return json.loads(read_text(path, "splits.json"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc}", path, "fix the syntax") from None


def evaluate_folder(root: Path) -> dict:
    """Fit on the ``train`` split of a dataset folder and score its ``test`` split."""
    root = Path(root)
    class_names = [line.strip() for line in read_text(root / "classes.txt", "classes.txt").splitlines()]
    class_names = [c for c in class_names if c]
    num_classes = len(class_names)
    splits = _read_splits(root / "splits.json")
    train_images, train_masks = _load(root, splits["train"])
    lut = fit_intensity_classifier(train_images, train_masks, num_classes)
    test_images, test_masks = _load(root, splits["test"])
    preds = [predict_intensity(lut, im) for im in test_images]
    mean, per_class = pooled_foreground_dice(preds, test_masks, num_classes)
    return {
        "foreground_dice": mean,
        "dice_per_class": dict(zip(class_names[1:], per_class, strict=True)),
        "num_classes": num_classes,
        "n_train": len(splits["train"]),
        "n_test": len(splits["test"]),
        "lut": lut.tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    """Print the intensity baseline's pooled test Dice for a dataset folder."""
    parser = argparse.ArgumentParser(
        prog="python -m pscl.reporting.intensity_baseline",
        description="Per-pixel grey-level baseline: fit on train, pooled Dice on test.",
    )
    parser.add_argument("root", type=Path, help="dataset folder (images/, masks/, splits.json)")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    args = parser.parse_args(argv)
    if not (args.root / "splits.json").is_file():
        parser.error(f"{args.root} has no splits.json; not a pscl dataset folder")
    result: dict = {}

    def body() -> None:
        result.update(evaluate_folder(args.root))

    code = run_command(parser.prog, body)  # a bad file is one line on stderr and exit 2
    if code:
        return code
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"intensity baseline on {args.root} (train {result['n_train']}, test {result['n_test']})")
    for name, dice in result["dice_per_class"].items():
        print(f"  dice {name:<22s} {dice:.4f}")
    print(f"  foreground mean dice     {result['foreground_dice']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
