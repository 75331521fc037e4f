"""Patch features of one image: a regular grid of square patches, one vector per patch.

An image is cut into the largest centred grid of ``patch`` x ``patch`` cells that fits (the
margin left over is not read). Each cell gets one vector:

* :func:`intensity_features` - grey-level statistics and the texture energy in three bands of
  scale (label-free, no network; the baseline);
* :func:`network_features` - a backbone's bottleneck and decoder maps (1/s, 1/4, 1/2, 1/1, s the
  backbone's stride: 8 for pscl's UNet, 32 for a depth-5 smp encoder), each averaged over the
  cell and concatenated (the same maps the dense probe reads).

Both are pure functions of an image; rows come in row-major cell order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pscl.models.base import SegmentationBackbone

# a cell is a multiple of 8 px, pscl's UNet's coarsest map (1/8): it holds whole bottleneck pixels
# of that network; a coarser one's pixels that straddle cells are shared by area (cell_weights)
PATCH_MULTIPLE = 8
# Gaussian scales (px) bounding the texture bands of the intensity features: fine (0-1 px),
# medium (1-2 px) and coarse (2-4 px) detail
BAND_SIGMAS = (0.0, 1.0, 2.0, 4.0)
INTENSITY_NAMES = ("mean", "std", "q10", "q50", "q90",
                   *(f"band_{a:g}_{b:g}" for a, b in zip(BAND_SIGMAS, BAND_SIGMAS[1:])))
# largest side (px) of the window a network reads at once: bounds memory on large micrographs
NETWORK_WINDOW = 512


@dataclass(frozen=True)
class Grid:
    """The patch grid of an image: ``rows`` x ``cols`` cells of ``patch`` px from (``top``, ``left``)."""

    rows: int
    cols: int
    top: int
    left: int
    patch: int

    @property
    def cells(self) -> int:
        return self.rows * self.cols

    def crop(self, array: np.ndarray) -> np.ndarray:
        """The part of an (H, W, ...) array the grid covers."""
        return array[self.top:self.top + self.rows * self.patch, self.left:self.left + self.cols * self.patch]


def patch_grid(height: int, width: int, patch: int) -> Grid:
    """The centred grid of whole ``patch`` x ``patch`` cells in an image (0 cells when it is smaller)."""
    rows, cols = height // patch, width // patch
    return Grid(rows, cols, (height - rows * patch) // 2, (width - cols * patch) // 2, patch)


def cell_means(values: np.ndarray, grid: Grid) -> np.ndarray:
    """(cells,) mean of an (H, W) map over each cell of ``grid``."""
    blocks = grid.crop(values).reshape(grid.rows, grid.patch, grid.cols, grid.patch)
    return blocks.mean(axis=(1, 3), dtype=np.float64).ravel()


def intensity_features(image: np.ndarray, patch: int) -> np.ndarray:
    """(cells, 8) float32 statistics of each cell of an (H, W, C) image in [0, 1].

    Per cell of the grey image: mean, std, 10/50/90 % quantiles, and the mean absolute
    difference of Gaussians between consecutive :data:`BAND_SIGMAS` (how much of the texture is
    fine, medium or coarse). All are in grey levels, so no column needs rescaling; the bands are
    filtered on the whole image first, so a cell border is no edge.
    """
    from scipy.ndimage import gaussian_filter

    grey = np.asarray(image, dtype=np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    grid = patch_grid(*grey.shape, patch)
    if grid.cells == 0:
        return np.zeros((0, len(INTENSITY_NAMES)), np.float32)
    cells = grid.crop(grey).reshape(grid.rows, patch, grid.cols, patch).transpose(0, 2, 1, 3)
    cells = cells.reshape(grid.cells, patch * patch)
    columns = [cells.mean(axis=1), cells.std(axis=1), *np.quantile(cells, (0.1, 0.5, 0.9), axis=1)]
    smoothed = [grey if sigma == 0 else gaussian_filter(grey, sigma, mode="reflect") for sigma in BAND_SIGMAS]
    columns += [cell_means(np.abs(finer - coarser), grid) for finer, coarser in zip(smoothed, smoothed[1:])]
    return np.stack(columns, axis=1).astype(np.float32)


def cell_weights(cells: int, patch: int, stride: int, pixels: int) -> torch.Tensor:
    """(cells, pixels) share of each of a map's ``pixels`` (``stride`` px each) in each of ``cells``
    consecutive cells of ``patch`` px along one axis: the overlap in px over ``patch``, so that a
    row sums to 1 and ``weights @ values`` is the cell's mean of the map read at full resolution.
    The map may run past the cells (a backbone that pads); its last pixel covers what is left."""
    starts = torch.arange(pixels, dtype=torch.float64) * stride
    ends = starts + stride
    ends[-1] = max(float(ends[-1]), float(cells * patch))  # a last pixel cropped from a padded input
    low = torch.arange(cells, dtype=torch.float64)[:, None] * patch
    overlap = (torch.minimum(ends[None], low + patch) - torch.maximum(starts[None], low)).clamp(min=0)
    return (overlap / overlap.sum(dim=1, keepdim=True)).float()


def pool_cells(feature_map: torch.Tensor, rows: int, cols: int, patch: int, stride: int) -> torch.Tensor:
    """(C, rows, cols) means of a (C, h, w) map at ``stride`` over a grid of ``patch`` px cells."""
    row_weights = cell_weights(rows, patch, stride, feature_map.shape[-2]).to(feature_map.device)
    col_weights = cell_weights(cols, patch, stride, feature_map.shape[-1]).to(feature_map.device)
    return torch.einsum("rh,chw,sw->crs", row_weights, feature_map.float(), col_weights)


@torch.no_grad()
def network_features(backbone: SegmentationBackbone, image: torch.Tensor, patch: int,
                     window: int = NETWORK_WINDOW) -> np.ndarray:
    """(cells, F) float32 multi-scale features of each cell of a normalised (C, H, W) image.

    The backbone reads windows of whole cells (at most ``window`` px a side, so memory stays
    bounded on large micrographs); each of its maps is averaged over every cell and the maps are
    concatenated: F = bottleneck + decoder channels. A map whose stride divides ``patch`` (every
    map of pscl's UNet, as ``patch`` is a multiple of 8) is averaged over whole pixels; a coarser
    one (an smp encoder's 1/32 bottleneck under 16 px cells) weighs each pixel by its overlap with
    the cell (:func:`cell_weights`). The backbone is used as it is (call ``eval()`` first).
    """
    if patch % PATCH_MULTIPLE:
        raise ValueError(f"patch must be a multiple of {PATCH_MULTIPLE}, got {patch}")
    grid = patch_grid(image.shape[-2], image.shape[-1], patch)
    device = next(backbone.parameters()).device
    strides = (int(backbone.stride), *backbone.decoder_strides)
    step = max(1, window // patch)  # cells per window side
    rows: list[list[np.ndarray]] = []
    for r in range(0, grid.rows, step):
        row_blocks = []
        for c in range(0, grid.cols, step):
            n_r, n_c = min(step, grid.rows - r), min(step, grid.cols - c)
            top, left = grid.top + r * patch, grid.left + c * patch
            window_image = image[:, top:top + n_r * patch, left:left + n_c * patch].unsqueeze(0).to(device)
            features = backbone.forward_features(window_image.float())
            maps = [features["bottleneck"], *features["decoder"]]
            pooled = torch.cat([pool_cells(m[0], n_r, n_c, patch, s) for m, s in zip(maps, strides)], dim=0)
            row_blocks.append(pooled.cpu().numpy())  # (F, n_r, n_c)
        rows.append(row_blocks)
    if not rows:
        return np.zeros((0, 0), np.float32)
    full = np.concatenate([np.concatenate(blocks, axis=2) for blocks in rows], axis=1)  # (F, rows, cols)
    return full.reshape(full.shape[0], -1).T.astype(np.float32)
