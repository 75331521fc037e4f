"""Two independently augmented views of one micrograph, for the image-level baselines.

SimCLR's augmentations adapted to grey micrographs (no colour, no greyscale conversion): random
resized crop, horizontal and vertical flips, rot90, brightness/contrast jitter and Gaussian blur
(Chen et al. 2020; MoCo v2, BYOL and DenseCL use the same family). Unlike PSCL's
:class:`pscl.data.views_with_geometry.TwoViews`, the geometry of the two views is unrelated and not returned:
these methods never pair locations by geometry.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never contact the network

import albumentations as A  # noqa: E402

from pscl.data.transforms import normalize  # noqa: E402


def augmentation(crop_size: int, mean: Sequence[float], std: Sequence[float], scale: tuple[float, float] = (0.2, 1.0),
                 jitter: float = 0.4, jitter_p: float = 0.8, blur_p: float = 0.5) -> A.Compose:
    """One view: random resized crop to ``crop_size``, flips, rot90, brightness/contrast, blur, normalise."""
    return A.Compose([
        A.RandomResizedCrop(size=(crop_size, crop_size), scale=scale, ratio=(3 / 4, 4 / 3), p=1.0),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=1.0),
        A.RandomBrightnessContrast(brightness_limit=jitter, contrast_limit=jitter, p=jitter_p),
        # sigma 0.1-2.0 px as in SimCLR (there 10 % of a 224 px side: kernel up to 23 px)
        A.GaussianBlur(blur_limit=(3, 9), sigma_limit=(0.1, 2.0), p=blur_p),
        normalize(mean, std),
    ])


class TwoAugmentedViews:
    """image (H, W, C) in [0, 1] -> ``{"x0", "x1"}``, two (C, S, S) tensors augmented independently.

    ``crop_size=None`` (whole images, the paper recipe): S is the shorter side of each image.
    """

    def __init__(self, crop_size: int | None, mean: Sequence[float], std: Sequence[float],
                 scale: tuple[float, float] = (0.2, 1.0), jitter: float = 0.4, blur_p: float = 0.5,
                 seed: int | None = None) -> None:
        if crop_size is not None and int(crop_size) < 8:
            raise ValueError(f"image-level views need a crop size >= 8 pixels (data.crop_size), got {crop_size}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"crop scale must satisfy 0 < min <= max <= 1, got {tuple(scale)}")
        self.crop_size = None if crop_size is None else int(crop_size)
        self.options = {"mean": tuple(mean), "std": tuple(std), "scale": tuple(scale), "jitter": jitter,
                        "blur_p": blur_p}
        self.seed = seed
        self._transforms: dict[int, A.Compose] = {}

    def reseed(self, seed: int) -> None:
        """Albumentations keeps its own random state, blind to global seeds: set it explicitly."""
        self.seed = int(seed)
        for size, transform in self._transforms.items():
            transform.set_random_seed((self.seed + size) % 2**32)

    def random_state(self) -> dict[str, Any]:
        """The seed and, per view size, the augmentation's generator states (created lazily)."""
        from pscl.data.generator_states import generator_states

        return {"seed": self.seed, "sizes": {str(size): generator_states(t) for size, t in self._transforms.items()}}

    def set_random_state(self, state: dict[str, Any]) -> None:
        from pscl.data.generator_states import set_generator_states

        self.seed = state["seed"]
        for size, states in state["sizes"].items():
            set_generator_states(self._transform(int(size)), states)

    def _transform(self, size: int) -> A.Compose:
        if size not in self._transforms:
            transform = augmentation(size, **self.options)
            if self.seed is not None:
                transform.set_random_seed((self.seed + size) % 2**32)
            self._transforms[size] = transform
        return self._transforms[size]

    def _view(self, image: np.ndarray, size: int) -> torch.Tensor:
        out = self._transform(size)(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32))

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 2:
            image = image[..., None]
        size = self.crop_size or min(image.shape[:2])
        return {"x0": self._view(image, size), "x1": self._view(image, size)}
