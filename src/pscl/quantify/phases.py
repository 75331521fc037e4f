"""Phase (area) fractions of one segmented micrograph: one row per class.

Fractions are taken over the pixels that are not ``ignore_index``, so they sum to 1 (or are all 0
when every pixel is ignored). Areas are in pixels, and in µm² when the pixel size is known.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pscl.constants import IGNORE_INDEX


def check_mask(image: str, mask: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
    """Raise ValueError (naming ``image``) unless ``mask`` is a 2-D integer class-index array."""
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{image}: mask must be a 2-D integer array, got shape {mask.shape} of {mask.dtype}")
    if mask.size == 0 or (mask.min() >= 0 and mask.max() < num_classes):
        return
    values = np.unique(mask)
    bad = values[((values < 0) | (values >= num_classes)) & (values != ignore_index)]
    if bad.size:
        raise ValueError(f"{image}: mask values {bad.tolist()[:10]} are not classes 0..{num_classes - 1} "
                         f"nor the ignore index {ignore_index}")


def check_pixel_size(image: str, pixel_size_um: float | None) -> None:
    """Raise ValueError unless the pixel size is unknown (None) or a positive finite number."""
    if pixel_size_um is not None and not (np.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise ValueError(f"{image}: pixel size must be a positive number of µm, got {pixel_size_um}")


def phase_rows(image: str, mask: np.ndarray, class_names: Sequence[str], pixel_size_um: float | None,
               ignore_index: int = IGNORE_INDEX) -> list[dict]:
    """One row per class: ``image, class, area_fraction, area_px, area_um2`` (µm² None if size unknown)."""
    mask = np.asarray(mask)
    check_mask(image, mask, len(class_names), ignore_index)
    check_pixel_size(image, pixel_size_um)
    kept = mask[mask != ignore_index].astype(np.int64, copy=False)
    counts = np.bincount(kept, minlength=len(class_names))[: len(class_names)]
    total = int(counts.sum())
    return [{
        "image": image,
        "class": name,
        "area_fraction": int(count) / total if total else 0.0,
        "area_px": int(count),
        "area_um2": None if pixel_size_um is None else int(count) * pixel_size_um ** 2,
    } for name, count in zip(class_names, counts)]
