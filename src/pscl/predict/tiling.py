"""Segmenting an image of any size: sliding windows with smooth blending, batched, optional TTA.

The windows come from MONAI's :func:`monai.inferers.sliding_window_inference` (Gaussian
weights, batched tiles, aggregation). pscl adds three things around it:

* **the tile plan** (:func:`tile_plan`): per axis, the fewest tiles of at most ``tile`` pixels
  that overlap by at least ``overlap`` pixels, each made as small as that allows (a multiple of
  8). A 2048 px side with ``tile=512, overlap=64`` gets 5 tiles of 464 px rather than 5 of 512,
  which is 18 % less work;
* **one tile is the whole image**: an image that fits in one tile goes through the network in
  one piece, exactly as the run's test did, so its classes are those the run reported;
* **test-time augmentation** (``tta``): the eight flips and rotations of the square, their
  probabilities averaged after mapping each back.

Memory: the network sees at most ``batch_size`` tiles at once, whatever the image size; the
blended probabilities, their weights and the input are kept for the whole image (about
``4 (num_classes + 2)`` bytes per pixel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pscl.errors import ConfigError

BLENDS = ("gaussian", "constant")
_MULTIPLE = 8  # tile sides are rounded up to a multiple of the UNet's total down-sampling


@dataclass(frozen=True)
class TileSettings:
    """How an image is cut into windows; see the module docstring."""

    tile: int = 1024
    overlap: int = 64
    batch_size: int = 2
    blend: str = "gaussian"
    tta: bool = False

    def __post_init__(self) -> None:
        if self.tile < 16:
            raise ConfigError("tile", f"must be >= 16 pixels, got {self.tile}")
        if not 0 <= self.overlap < self.tile // 2:
            raise ConfigError("overlap", f"must be in [0, tile/2) = [0, {self.tile // 2}), got {self.overlap}")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.blend not in BLENDS:
            raise ConfigError("blend", f"must be one of {BLENDS}, got {self.blend!r}")


def tile_plan(length: int, tile: int, overlap: int) -> tuple[int, int, int]:
    """``(size, stride, count)`` of the windows along one axis of ``length`` pixels.

    One window of the whole length if it fits in ``tile``; otherwise the fewest windows of at
    most ``tile`` pixels whose neighbours overlap by at least ``overlap``, each as small as that
    allows (rounded up to a multiple of 8, never above ``tile``). The last window ends at the edge.
    """
    if length <= tile:
        return length, length, 1
    count = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (count - 1) * overlap) / count)
    size = min(tile, math.ceil(size / _MULTIPLE) * _MULTIPLE)
    stride = math.ceil((length - size) / (count - 1))
    return size, stride, count


def window_count(height: int, width: int, settings: TileSettings) -> int:
    """How many windows one pass over an image of this size runs."""
    return tile_plan(height, settings.tile, settings.overlap)[2] * tile_plan(width, settings.tile, settings.overlap)[2]


def _windowed_probabilities(model: torch.nn.Module, image: torch.Tensor, settings: TileSettings,
                            device: torch.device) -> torch.Tensor:
    """Blended softmax probabilities (1, C, H, W) on the CPU for a (1, C_in, H, W) image."""
    from monai.inferers import sliding_window_inference

    height, width = image.shape[-2:]
    (size_h, stride_h, _), (size_w, stride_w, _) = (tile_plan(height, settings.tile, settings.overlap),
                                                    tile_plan(width, settings.tile, settings.overlap))
    # MONAI steps by int(size * (1 - overlap)); half a pixel of margin makes that exactly the stride
    overlaps = [0.0 if size == length else 1.0 - (stride + 0.5) / size
                for size, stride, length in ((size_h, stride_h, height), (size_w, stride_w, width))]

    def probabilities(tiles: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(tiles).float(), dim=1)

    return sliding_window_inference(image, (size_h, size_w), settings.batch_size, probabilities,
                                    overlap=overlaps, mode=settings.blend, sw_device=device,
                                    device=torch.device("cpu"))


def _one_view(model: torch.nn.Module, image: torch.Tensor, settings: TileSettings,
              device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(logits, probabilities)`` of one view: logits when it fits in one tile, else probabilities."""
    height, width = image.shape[-2:]
    if height <= settings.tile and width <= settings.tile:
        return model(image.to(device)).float().cpu(), None
    return None, _windowed_probabilities(model, image, settings, device)


def segment(model: torch.nn.Module, image: torch.Tensor, settings: TileSettings,
            device: torch.device | str = "cpu", keep_probabilities: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Classes (H, W) uint8 and, if asked, probabilities (C, H, W) of a normalised (C_in, H, W) image.

    ``model`` maps (B, C_in, h, w) to logits (B, C, h, w) and must be in eval mode.
    """
    device = torch.device(device)
    batch = image.unsqueeze(0)
    with torch.inference_mode():
        if not settings.tta:
            logits, probs = _one_view(model, batch, settings, device)
            if logits is not None:  # the whole image at once: classes straight from the logits
                classes = logits.argmax(dim=1)[0]
                probs = torch.softmax(logits, dim=1) if keep_probabilities else None
            else:
                classes = probs.argmax(dim=1)[0]
            return classes.to(torch.uint8), (probs[0] if keep_probabilities and probs is not None else None)
        total: torch.Tensor | None = None
        for flip in (False, True):
            for turns in range(4):
                view = torch.rot90(batch.flip(-1) if flip else batch, turns, dims=(-2, -1))
                logits, probs = _one_view(model, view, settings, device)
                probs = torch.softmax(logits, dim=1) if probs is None else probs
                probs = torch.rot90(probs, -turns, dims=(-2, -1))
                probs = probs.flip(-1) if flip else probs
                total = probs if total is None else total.add_(probs)
        assert total is not None
        mean = total / 8
        return mean.argmax(dim=1)[0].to(torch.uint8), (mean[0] if keep_probabilities else None)
