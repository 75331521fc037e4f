"""Albumentations pipelines for supervised training and testing.

Images arrive as float32 (H, W, C) in [0, 1]; masks as uint8 (H, W). Normalisation is the last
step, so photometric jitter acts on the stored intensities. ``data.normalisation`` says which:

* ``dataset`` - the mean and std of the training images, the same for every image (A.Normalize);
* ``per_image`` - each image's own per-channel mean and std (:func:`standardise_image`). The
  statistics are those of the whole micrograph, taken before any crop, so the datasets apply it
  (:class:`pscl.data.datasets.LabeledDataset`, :class:`~pscl.data.datasets.ViewsDataset`) and these
  pipelines leave it out.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never contact the network

import albumentations as A  # noqa: E402

from pscl.errors import ConfigError  # noqa: E402

DATASET, PER_IMAGE = "dataset", "per_image"
NORMALISATIONS = (DATASET, PER_IMAGE)
# a channel whose std is below this is constant: per-image standardisation maps it to zeros (not inf/NaN)
MIN_IMAGE_STD = 1e-6


def check_normalisation(value: Any) -> str:
    """``value`` if it is one of :data:`NORMALISATIONS`, else a ConfigError naming ``data.normalisation``."""
    if not isinstance(value, str) or value not in NORMALISATIONS:
        raise ConfigError("data.normalisation", f"must be dataset or per_image, got {value!r}",
                          "set data.normalisation=dataset (the training images' mean and std) or "
                          "data.normalisation=per_image (each image's own mean and std)")
    return value


def image_statistics(image: np.ndarray, rows: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float64, population std) over every pixel of an (H, W[, C]) image."""
    image = np.asarray(image)
    pixels = image.reshape(-1, image.shape[-1] if image.ndim == 3 else 1)
    mean = pixels.mean(axis=0, dtype=np.float64)
    # squared deviations slice by slice: a float64 copy of a whole large micrograph (pscl-predict)
    # would need 8 bytes a pixel
    squares = sum(np.square(pixels[i:i + rows] - mean).sum(axis=0) for i in range(0, len(pixels), rows))
    return mean, np.sqrt(squares / max(len(pixels), 1))


def standardising_scale(std: np.ndarray) -> np.ndarray:
    """1 / std per channel, 0 where the channel is constant (std below :data:`MIN_IMAGE_STD`).

    A floor alone would not do: the mean of a constant float32 image can be off by an ulp, which a
    floor of 1e-6 would blow up into visible noise; a zero scale gives exact zeros.
    """
    std = np.asarray(std, dtype=np.float64)
    return np.where(std >= MIN_IMAGE_STD, 1.0 / np.maximum(std, MIN_IMAGE_STD), 0.0)


def standardise(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(image - mean) / std per channel of an (H, W, C) image, as float32 (constant channels -> 0)."""
    shift = np.asarray(mean, dtype=np.float32)
    scale = standardising_scale(std).astype(np.float32)
    return ((np.asarray(image, dtype=np.float32) - shift) * scale).astype(np.float32, copy=False)


def standardise_image(image: np.ndarray) -> np.ndarray:
    """An (H, W, C) image standardised by its own per-channel mean and std (``per_image``)."""
    return standardise(image, *image_statistics(image))


def normalize(mean: Sequence[float], std: Sequence[float]) -> A.Normalize:
    """Standardise with the dataset statistics (images are already in [0, 1])."""
    return A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=1.0, p=1.0)


def train_transform(crop_size: int | None, mean: Sequence[float], std: Sequence[float],
                    jitter: float = 0.1, jitter_p: float = 0.8, normalisation: str = DATASET) -> A.Compose:
    """Fine-tuning augmentation (paper §6): random crop, vertical flip, rot90, brightness/contrast.

    Vertical flip (p 0.5) with a uniform rot90 gives all eight symmetries of the square, which
    micrographs have no preferred orientation against. With ``per_image`` the pipeline ends
    before normalising: the dataset standardises the crop with its whole image's statistics.
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
    if check_normalisation(normalisation) == DATASET:
        steps.append(normalize(mean, std))
    return A.Compose(steps)


def test_transform(mean: Sequence[float], std: Sequence[float], normalisation: str = DATASET) -> A.Compose:
    """Normalisation only: the whole image is evaluated (``per_image``: nothing, the dataset standardises)."""
    return A.Compose([normalize(mean, std)] if check_normalisation(normalisation) == DATASET else [])


def normalise_whole_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float],
                          normalisation: str = DATASET) -> np.ndarray:
    """One whole (H, W, C) image as a trained network takes it (pscl-predict).

    ``per_image`` first standardises the image by its own statistics, then ``mean``/``std`` apply
    as usual: a run trained with ``per_image`` records 0 and 1, so that step changes nothing.
    """
    if check_normalisation(normalisation) == PER_IMAGE:
        image = standardise_image(image)
    return test_transform(mean, std)(image=image)["image"]
