"""Two augmented views of a micrograph for PSCL pretraining (method notes §4.2, §6).

View 1 only gets photometric jitter. View 2 gets its own jitter and then a known geometry:
vertical flip, rot90, a relative crop and a resize back to full size. The geometry travels with
the batch so :mod:`pscl.contrastive.correspondence` can pair the cells of both views that see the
same place; no feature matching between views is ever needed.

Conventions (shared with :mod:`pscl.contrastive.correspondence`):

* flip = rows reversed (``x[::-1]``), applied first;
* rotation = ``np.rot90(x, k)`` on the first two axes, i.e. counter-clockwise, identical to
  ``torch.rot90(t, k, dims=(-2, -1))`` on a (C, H, W) tensor;
* crop = (top, left, height, width) as fractions of the flipped and rotated square image, turned
  into integer boxes by :func:`crop_box` only, on the pixel grid and on every feature grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

Crop = tuple[float, float, float, float]

# Relative crops are snapped to the pixel grid (k / n) and may pass through float32 tensors; a
# small slack keeps floor/round from landing one cell short of the intended integer.
_EPS = 1e-3


@dataclass(frozen=True)
class ViewGeometry:
    """View-2 geometry of one image: vertical flip, then rot90 by ``rot_k``, then ``crop``."""

    flip: bool
    rot_k: int
    crop: Crop  # (top, left, height, width), fractions of the flipped + rotated image


def sample_geometry(rng: np.random.Generator, crop_min: float = 0.8, crop_max: float = 1.0,
                    flip_p: float = 0.5, size: int | None = None) -> ViewGeometry:
    """Draw a view-2 geometry: flip with prob ``flip_p``, k uniform in {0..3}, crop sides in [min, max].

    Height and width fractions are independent (the aspect may change, as in the paper); the offset
    is uniform over the positions that keep the crop inside the image. With ``size`` the crop is
    drawn on the ``size`` x ``size`` pixel grid (fractions are multiples of 1/size), so the pixel
    box and the relative numbers agree exactly - this is what makes the cell correspondence tight.
    """
    if not 0.0 < crop_min <= crop_max <= 1.0:
        raise ValueError(f"need 0 < crop_min <= crop_max <= 1, got {crop_min}, {crop_max}")
    flip = bool(rng.random() < flip_p)
    rot_k = int(rng.integers(0, 4))
    if size is None:
        height, width = (float(v) for v in rng.uniform(crop_min, crop_max, size=2))
        top = float(rng.uniform(0.0, 1.0 - height))
        left = float(rng.uniform(0.0, 1.0 - width))
        return ViewGeometry(flip, rot_k, (top, left, height, width))
    lo = max(1, math.ceil(crop_min * size - _EPS))
    hi = max(lo, math.floor(crop_max * size + _EPS))
    h_px, w_px = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    top_px = int(rng.integers(0, size - h_px + 1))
    left_px = int(rng.integers(0, size - w_px + 1))
    return ViewGeometry(flip, rot_k, (top_px / size, left_px / size, h_px / size, w_px / size))


def crop_box(crop: Sequence[float], n: int) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1) of a relative crop on an n x n grid; the one rounding rule for all grids.

    r0 = floor(top * n), r1 = min(n, r0 + max(1, round(height * n))) with halves rounded up;
    columns alike. A tiny slack absorbs float error of crops snapped to a pixel grid.
    """
    top, left, height, width = (float(v) for v in crop)
    r0 = min(n - 1, max(0, math.floor(top * n + _EPS)))
    c0 = min(n - 1, max(0, math.floor(left * n + _EPS)))
    r1 = min(n, r0 + max(1, math.floor(height * n + 0.5 + _EPS)))
    c1 = min(n, c0 + max(1, math.floor(width * n + 0.5 + _EPS)))
    return r0, r1, c0, c1


def nearest_exact_index(out_size: int, in_size: int) -> np.ndarray:
    """Source index of each of ``out_size`` outputs when resizing ``in_size`` samples, centre-aligned.

    floor((i + 0.5) * in / out) in exact integer arithmetic: the rule of torch 'nearest-exact' and
    cv2.INTER_NEAREST_EXACT (both in floating/fixed point, so they may differ at exact ties), which
    lines up with the half-pixel convention of bilinear resizing.
    """
    idx = ((2 * np.arange(out_size, dtype=np.int64) + 1) * in_size) // (2 * out_size)
    return np.minimum(idx, in_size - 1)


def apply_geometry(array: np.ndarray, g: ViewGeometry, interpolation: str = "bilinear") -> np.ndarray:
    """(H, W) or (H, W, C) square array -> same shape: flip, rot90, crop, resize back to H x W.

    'bilinear' uses cv2.INTER_LINEAR (images); 'nearest' picks centre-aligned source pixels by
    :func:`nearest_exact_index` (masks, any dtype; the rule of cv2.INTER_NEAREST_EXACT, but exact
    at ties where cv2's fixed-point arithmetic is not). Plain cv2.INTER_NEAREST is corner-aligned and
    would shift a mask by up to half a pixel against its bilinear image.
    """
    if array.ndim not in (2, 3) or array.shape[0] != array.shape[1]:
        raise ValueError(f"apply_geometry needs a square (H, W) or (H, W, C) array, got shape {array.shape}")
    if interpolation not in ("bilinear", "nearest"):
        raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
    n = array.shape[0]
    out = array[::-1] if g.flip else array
    out = np.rot90(out, int(g.rot_k) % 4, axes=(0, 1))
    r0, r1, c0, c1 = crop_box(g.crop, n)
    out = out[r0:r1, c0:c1]
    if interpolation == "nearest":
        rows = nearest_exact_index(n, r1 - r0)
        cols = nearest_exact_index(n, c1 - c0)
        return np.ascontiguousarray(out[rows][:, cols])
    resized = cv2.resize(np.ascontiguousarray(out), (n, n), interpolation=cv2.INTER_LINEAR)
    # cv2 drops a trailing channel axis of length 1
    return resized.reshape(array.shape)


class TwoViews:
    """Turns one micrograph (and optionally its mask) into the two PSCL views plus view-2 geometry.

    Own random state (a ``np.random.Generator``); :meth:`reseed` replaces it, so every DataLoader
    worker can get its own stream. Outputs collate with the default collate function.
    """

    def __init__(self, crop_size: int | None, mean: Sequence[float], std: Sequence[float],
                 jitter: float = 0.2, jitter_p: float = 0.8, crop_min: float = 0.8, crop_max: float = 1.0,
                 flip_p: float = 0.5, seed: int | None = None) -> None:
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"crop_size must be positive or None, got {crop_size}")
        if not 0.0 < crop_min <= crop_max <= 1.0:
            raise ValueError(f"need 0 < crop_min <= crop_max <= 1, got {crop_min}, {crop_max}")
        self.crop_size = crop_size
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        if self.mean.shape != self.std.shape or self.mean.ndim != 1:
            raise ValueError("mean and std must be 1-D sequences of equal length")
        # the paper's ColorJitter(0.8 d) on grey images reduces to brightness and contrast
        self.brightness = 0.8 * jitter
        self.contrast = 0.8 * jitter
        self.jitter_p = jitter_p
        self.crop_min, self.crop_max, self.flip_p = crop_min, crop_max, flip_p
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Replace the random state (called per DataLoader worker through the dataset)."""
        self.rng = np.random.default_rng(int(seed))

    def _square_crop(self, image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Random crop_size x crop_size window (the whole image when crop_size is None)."""
        h, w = image.shape[:2]
        if self.crop_size is None:
            if h != w:
                raise ValueError(f"image is {h}x{w}, not square: give TwoViews a crop_size <= {min(h, w)}")
            return image, mask
        s = self.crop_size
        if s > h or s > w:
            raise ValueError(f"crop_size {s} is larger than the image ({h}x{w})")
        top = int(self.rng.integers(0, h - s + 1))
        left = int(self.rng.integers(0, w - s + 1))
        window = (slice(top, top + s), slice(left, left + s))
        return image[window], (mask[window] if mask is not None else None)

    def _jitter(self, image: np.ndarray) -> np.ndarray:
        """Brightness (additive) and contrast (around the image mean) jitter with prob jitter_p."""
        if self.rng.random() >= self.jitter_p or (self.brightness <= 0 and self.contrast <= 0):
            return image
        shift = self.rng.uniform(-self.brightness, self.brightness)
        factor = self.rng.uniform(1.0 - self.contrast, 1.0 + self.contrast)
        out = image + np.float32(shift)
        out = (out - out.mean()) * np.float32(factor) + out.mean()
        return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        """(S, S, C) in [0, 1] -> normalised (C, S, S) float32 tensor."""
        normed = (image - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(normed.transpose(2, 0, 1), dtype=np.float32))

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """image (H, W, C) float in [0, 1], mask (H, W) uint8 or None -> dict of view tensors.

        'x0', 'x1' (C, S, S) float; 'flip' () bool; 'rot_k' () long; 'crop' (4,) float; with a mask
        also 'mask' (S, S) long (view 1) and 'mask_view2' (S, S) long (view-2 geometry, nearest).
        """
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise ValueError(f"TwoViews expects an (H, W, C) image, got shape {image.shape}")
        if self.mean.shape[0] not in (1, image.shape[2]):
            raise ValueError(f"mean/std have {self.mean.shape[0]} values but the image has {image.shape[2]} channels")
        if mask is not None and mask.shape[:2] != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
        image, mask = self._square_crop(image, mask)
        size = image.shape[0]
        view1 = self._jitter(image)
        view2 = self._jitter(image)
        geom = sample_geometry(self.rng, self.crop_min, self.crop_max, self.flip_p, size=size)
        view2 = apply_geometry(view2, geom, "bilinear")
        out = {
            "x0": self._to_tensor(view1),
            "x1": self._to_tensor(view2),
            "flip": torch.tensor(geom.flip, dtype=torch.bool),
            "rot_k": torch.tensor(geom.rot_k, dtype=torch.long),
            "crop": torch.tensor(geom.crop, dtype=torch.float32),
        }
        if mask is not None:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).long()
            out["mask_view2"] = torch.from_numpy(apply_geometry(np.ascontiguousarray(mask), geom, "nearest")).long()
        return out
