"""Segmenting an image of any size: sliding windows with smooth blending, batched, optional TTA.

Windows overlap and are blended with Gaussian weights (more weight to a window's centre, where
the network sees the most context), batched through the network. MONAI's
``sliding_window_inference`` does the same and was tried first; it was not kept because
importing it costs about 300 MB of resident memory and 4 s (it loads the whole package), its
windows are placed by an overlap fraction, and a one-window image is not bit-identical to a
plain forward pass. The pieces:

* **the tile plan** (:func:`tile_plan`): per axis, the fewest tiles of at most ``tile`` pixels
  that overlap by at least ``overlap`` pixels, each made as small as that allows (a multiple of
  8). A 2048 px side with ``tile=512, overlap=64`` gets 5 tiles of 464 px rather than 5 of 512,
  which is 18 % less work;
* **windows the network takes whole** (:func:`window_multiple`): a backbone with a ``stride``
  attribute (an smp network: 32 at encoder depth 5) gets windows whose sides are multiples of
  it (the largest multiple that is at most ``tile``). Any side would give a correct result, since
  such a backbone pads its input to its stride by reflection and crops back, but a window it had
  to pad costs up to ``stride - 1`` extra rows and columns of work, and the network would see
  mirrored pixels beyond the window's bottom and right edges, where its neighbour holds the
  real ones: predictions there would depend on the window grid. pscl's UNet (stride 8) is
  unchanged;
* **one tile is the whole image**: an image that fits in one tile goes through the network in
  one piece, exactly as the run's test did, so its classes are those the run reported;
* **test-time augmentation** (``tta``): the eight flips and rotations of the square, their
  probabilities averaged after mapping each back.

Memory: the network sees at most ``batch_size`` tiles at once, whatever the image size; the
blended probabilities and their weights are kept for the whole image (``4 (num_classes + 1)``
bytes per pixel), besides the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pscl.constants import BOTTLENECK_STRIDE
from pscl.errors import ConfigError

BLENDS = ("gaussian", "constant")
_MULTIPLE = BOTTLENECK_STRIDE  # tile sides are rounded up to a multiple of the UNet's total down-sampling
MIN_TILE = 16  # the smallest window side TileSettings takes


@dataclass(frozen=True)
class TileSettings:
    """How an image is cut into windows; see the module docstring."""

    tile: int = 512
    overlap: int = 64
    batch_size: int = 2
    blend: str = "gaussian"
    tta: bool = False

    def __post_init__(self) -> None:
        if self.tile < MIN_TILE:
            raise ConfigError("tile", f"must be >= {MIN_TILE} pixels, got {self.tile}")
        if not 0 <= self.overlap < self.tile // 2:
            raise ConfigError("overlap", f"must be in [0, tile/2) = [0, {self.tile // 2}), got {self.overlap}")
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.blend not in BLENDS:
            raise ConfigError("blend", f"must be one of {BLENDS}, got {self.blend!r}")


def window_multiple(model: torch.nn.Module) -> int:
    """What window sides are rounded to for ``model``: 8 (the UNet's down-sampling), or the least
    common multiple of 8 and the model's ``stride`` attribute when it has one (an smp backbone:
    its encoder's output stride, to which it would otherwise pad each window)."""
    stride = getattr(model, "stride", None)
    if isinstance(stride, int) and not isinstance(stride, bool) and stride > 0:
        return math.lcm(_MULTIPLE, stride)
    return _MULTIPLE


def tile_plan(length: int, tile: int, overlap: int, multiple: int = _MULTIPLE) -> tuple[int, int, int]:
    """``(size, stride, count)`` of the windows along one axis of ``length`` pixels.

    One window of the whole length if it fits in ``tile``; otherwise the fewest windows of at
    most ``tile`` pixels whose neighbours overlap by at least ``overlap``, each as small as that
    allows, rounded up to a multiple of ``multiple`` (8, or the backbone's stride:
    :func:`window_multiple`). Windows are at most the largest multiple of ``multiple`` not above
    ``tile``, unless that leaves no room for the overlap (``tile`` itself then). The last window
    ends at the edge.
    """
    if length <= tile:
        return length, length, 1
    limit = tile // multiple * multiple
    if limit <= 2 * overlap:  # a window of whole multiples would not fit the asked overlap twice
        limit = tile
    count = math.ceil((length - overlap) / (limit - overlap))
    size = math.ceil((length + (count - 1) * overlap) / count)
    size = min(limit, math.ceil(size / multiple) * multiple)
    stride = math.ceil((length - size) / (count - 1))
    return size, stride, count


def window_count(height: int, width: int, settings: TileSettings, multiple: int = _MULTIPLE) -> int:
    """How many windows one pass over an image of this size runs."""
    return (tile_plan(height, settings.tile, settings.overlap, multiple)[2]
            * tile_plan(width, settings.tile, settings.overlap, multiple)[2])


def window_starts(length: int, tile: int, overlap: int, multiple: int = _MULTIPLE) -> tuple[int, list[int]]:
    """The window size along one axis and the first pixel of every window (the last ends at the edge)."""
    size, stride, count = tile_plan(length, tile, overlap, multiple)
    return size, [min(i * stride, length - size) for i in range(count)]


def blend_weights(height: int, width: int, blend: str, sigma_scale: float = 0.125) -> torch.Tensor:
    """(h, w) weights of one window: a Gaussian of sigma ``sigma_scale`` x side centred on it
    (``gaussian``, never below 1e-3 so that corners still count), or ones (``constant``)."""
    if blend == "constant":
        return torch.ones(height, width)

    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        return torch.exp(-0.5 * (x / (sigma_scale * n)) ** 2)

    weights = torch.outer(axis(height), axis(width))
    return (weights / weights.max()).clamp_(min=1e-3).float()


def _windowed_probabilities(model: torch.nn.Module, image: torch.Tensor, settings: TileSettings,
                            device: torch.device) -> torch.Tensor:
    """Blended softmax probabilities (1, C, H, W) on the CPU for a (1, C_in, H, W) image.

    Windows go through the network ``batch_size`` at a time; each window's probabilities are
    added, weighted, into one (C, H, W) sum, divided at the end by the summed weights.
    """
    height, width = image.shape[-2:]
    multiple = window_multiple(model)
    size_h, rows = window_starts(height, settings.tile, settings.overlap, multiple)
    size_w, columns = window_starts(width, settings.tile, settings.overlap, multiple)
    corners = [(y, x) for y in rows for x in columns]
    weights = blend_weights(size_h, size_w, settings.blend)
    total: torch.Tensor | None = None
    weight_sum = torch.zeros(height, width)
    for first in range(0, len(corners), settings.batch_size):
        batch = corners[first:first + settings.batch_size]
        tiles = torch.cat([image[..., y:y + size_h, x:x + size_w] for y, x in batch]).to(device)
        probs = torch.softmax(model(tiles).float(), dim=1).cpu()
        if total is None:
            total = torch.zeros(probs.shape[1], height, width)
        for (y, x), tile_probs in zip(batch, probs):
            total[:, y:y + size_h, x:x + size_w].addcmul_(tile_probs, weights)
            weight_sum[y:y + size_h, x:x + size_w] += weights
    assert total is not None
    return total.div_(weight_sum).unsqueeze(0)


def _one_view(model: torch.nn.Module, image: torch.Tensor, settings: TileSettings,
              device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(logits, probabilities)`` of one view: logits when it fits in one tile, else probabilities."""
    height, width = image.shape[-2:]
    if height <= settings.tile and width <= settings.tile:
        return model(image.to(device)).float().cpu(), None
    return None, _windowed_probabilities(model, image, settings, device)


def _classes(probabilities: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """(H, W) uint8 argmax of (C, H, W) scores, a band of rows at a time (no int64 image)."""
    height, width = probabilities.shape[-2:]
    classes = torch.empty(height, width, dtype=torch.uint8)
    for top in range(0, height, rows):
        classes[top:top + rows] = probabilities[:, top:top + rows].argmax(dim=0)
    return classes


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
                classes = _classes(logits[0])
                probs = torch.softmax(logits, dim=1) if keep_probabilities else None
            else:
                classes = _classes(probs[0])
            return classes, (probs[0] if keep_probabilities and probs is not None else None)
        total: torch.Tensor | None = None
        for flip in (False, True):
            for turns in range(4):
                view = torch.rot90(batch.flip(-1) if flip else batch, turns, dims=(-2, -1))
                logits, probs = _one_view(model, view, settings, device)
                probs = torch.softmax(logits, dim=1) if probs is None else probs
                probs = torch.rot90(probs, -turns, dims=(-2, -1))
                probs = probs.flip(-1) if flip else probs
                total = probs.contiguous() if total is None else total.add_(probs)
        assert total is not None
        mean = total.div_(8)[0]
        return _classes(mean), (mean if keep_probabilities else None)
