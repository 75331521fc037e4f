"""Albumentations pipelines for supervised training and testing.

Images arrive as float32 (H, W, C) in [0, 1]; masks as uint8 (H, W). Normalisation with the
dataset's mean/std is the last step, so photometric jitter acts on the stored intensities.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never contact the network

import albumentations as A  # noqa: E402


def normalize(mean: Sequence[float], std: Sequence[float]) -> A.Normalize:
    """Standardise with the dataset statistics (images are already in [0, 1])."""
    return A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=1.0, p=1.0)


def train_transform(crop_size: int | None, mean: Sequence[float], std: Sequence[float],
                    jitter: float = 0.1, jitter_p: float = 0.8) -> A.Compose:
    """Fine-tuning augmentation (paper §6): random crop, vertical flip, rot90, brightness/contrast.

    Vertical flip (p 0.5) with a uniform rot90 gives all eight symmetries of the square, which
    micrographs have no preferred orientation against.
    """
    steps: list[A.BasicTransform] = []
    if crop_size is not None:
        steps.append(A.RandomCrop(height=crop_size, width=crop_size, p=1.0))
    steps += [
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
    ]
    if jitter > 0:
        steps.append(A.RandomBrightnessContrast(brightness_limit=jitter, contrast_limit=jitter, p=jitter_p))
    steps.append(normalize(mean, std))
    return A.Compose(steps)


def test_transform(mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Normalisation only: the whole image is evaluated."""
    return A.Compose([normalize(mean, std)])
