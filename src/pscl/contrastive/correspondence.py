"""Cell correspondence between the two PSCL views under known geometry (method notes §4.2).

For a grid x grid feature map of each view, the *crop grid* is the view-1 grid flipped, rotated
and cropped exactly like the image (:func:`pscl.data.views_with_geometry.crop_box` on n = grid). Position j of
the flattened crop grid sees the same physical place in view 1 at cell ``qidx[j]`` and in view 2 at
cell ``kidx[j]``; positive pairs are (view-1 feature at qidx[j], view-2 feature at kidx[j]).

Departure from the authors' code (notes §11.14): they take ``kidx`` by nearest-resizing the view-2
index grid to the crop-grid size, which assumes the crop box on the feature grid equals the pixel
crop divided by the stride. Both boxes are rounded independently, so at stride 4 that pairs cells
up to ~1.6 cells apart. Here ``kidx`` is the view-2 cell that contains the centre of each crop-grid
cell, mapped through the crop the image really got: pass ``image_size`` (S, the views' pixel size)
and the crop is first rounded to the pixel grid by ``crop_box`` exactly as ``apply_geometry`` does.
Then the pairing is off by at most 0.75 cell at stride 4, 0.5 cell at stride 2 and half a pixel at
stride 1 (checked in tests/data/test_views_correspondence.py). Without ``image_size`` the relative crop
is used as is, which is equally exact for crops drawn on the pixel grid (``TwoViews`` draws them so)
and up to ~1 pixel further off otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pscl.constants import IGNORE_INDEX
from pscl.data.views_with_geometry import crop_box


def _check_crop(crop: Sequence[float]) -> tuple[float, float, float, float]:
    """Crop as four Python floats, with sizes in (0, 1]."""
    values = [float(v) for v in crop]
    if len(values) != 4:
        raise ValueError(f"crop must be (top, left, height, width), got {values}")
    if not (0.0 < values[2] <= 1.0 + 1e-6 and 0.0 < values[3] <= 1.0 + 1e-6):
        raise ValueError(f"crop height and width must lie in (0, 1], got {values}")
    top, left, height, width = values
    return top, left, height, width


def _view2_cells(start: int, count: int, offset: float, extent: float, grid: int,
                 device: torch.device | str | None) -> torch.Tensor:
    """(count,) view-2 row (or column) index of the crop-grid positions start .. start+count-1.

    Centre of crop-grid cell i in relative coordinates of the rotated image: (i + 0.5) / grid;
    view 2 shows [offset, offset + extent] stretched to [0, 1], so that centre lies in view-2 cell
    floor(((i + 0.5) / grid - offset) / extent * grid). Clamped: edge cells of the crop grid may
    stick out of the pixel crop by less than one cell.
    """
    centres = (torch.arange(start, start + count, device=device, dtype=torch.float64) + 0.5) / grid
    cells = torch.floor((centres - offset) / extent * grid)
    return cells.clamp_(0, grid - 1).long()


def _pixel_crop(crop: tuple[float, float, float, float], image_size: int,
                grid: int) -> tuple[float, float, float, float]:
    """The relative crop rounded to the image's pixel grid, i.e. the crop apply_geometry applied."""
    if image_size % grid:
        raise ValueError(f"image size {image_size} is not divisible by the feature grid {grid}: "
                         f"choose a crop/image size that is a multiple of every decoder stride")
    r0, r1, c0, c1 = crop_box(crop, image_size)
    return r0 / image_size, c0 / image_size, (r1 - r0) / image_size, (c1 - c0) / image_size


def correspondence(flip: bool, rot_k: int, crop: Sequence[float], grid: int, image_size: int | None = None,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Paired cells of a grid x grid feature map of both views: (qidx, kidx, (h', w')).

    qidx (L,) long: flattened view-1 cell at each crop-grid position (index grid flipped, rot90-ed
    as ``torch.rot90(t, k, dims=(0, 1))`` and cropped by ``crop_box(crop, grid)``).
    kidx (L,) long: flattened view-2 cell covering the same place. L = h' * w', row-major.
    image_size: pixel size S of the views (S / grid = stride); recommended, see the module notes.
    """
    if grid < 1:
        raise ValueError(f"grid must be a positive integer, got {grid}")
    top, left, height, width = _check_crop(crop)
    index = torch.arange(grid * grid, device=device).view(grid, grid)
    if flip:
        index = index.flip(0)
    index = torch.rot90(index, int(rot_k) % 4, dims=(0, 1))
    r0, r1, c0, c1 = crop_box((top, left, height, width), grid)
    qidx = index[r0:r1, c0:c1].reshape(-1)
    if image_size is not None:
        top, left, height, width = _pixel_crop((top, left, height, width), image_size, grid)
    rows = _view2_cells(r0, r1 - r0, top, height, grid, device)
    cols = _view2_cells(c0, c1 - c0, left, width, grid, device)
    kidx = (rows[:, None] * grid + cols[None, :]).reshape(-1)
    return qidx, kidx, (r1 - r0, c1 - c0)


def batch_correspondence(flip: torch.Tensor, rot_k: torch.Tensor, crop: torch.Tensor, grid: int,
                         image_size: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """flip (B,) bool, rot_k (B,) long, crop (B, 4) -> per image (qidx (L_b,), kidx (L_b,)).

    Indices live on ``crop``'s device, ready to index that image's flattened (C, grid*grid) features.
    """
    if crop.ndim != 2 or crop.shape[1] != 4 or flip.shape[0] != crop.shape[0] or rot_k.shape[0] != crop.shape[0]:
        raise ValueError(f"need flip (B,), rot_k (B,), crop (B, 4); got {tuple(flip.shape)}, "
                         f"{tuple(rot_k.shape)}, {tuple(crop.shape)}")
    # one host transfer for the whole batch instead of one per scalar
    flips = flip.tolist()
    ks = rot_k.tolist()
    crops = crop.double().tolist()
    pairs = []
    for f, k, c in zip(flips, ks, crops):
        qidx, kidx, _ = correspondence(bool(f), int(k), c, grid, image_size, device=crop.device)
        pairs.append((qidx, kidx))
    return pairs


def cell_label_scores(mask: torch.Tensor, grid: int, num_classes: int, qidx: torch.Tensor,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """mask (S, S) long view-1 labels -> (L, num_classes) class fractions of the cells at qidx.

    Each view-1 cell's score for class c is the fraction of its (S/grid)^2 pixels labelled c;
    ``ignore_index`` pixels count for no class, so rows sum to <= 1. Gathered at qidx this expresses
    the annotated image's labels in crop-grid coordinates (by area, not the paper's bilinear resize).
    """
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"mask must be square (S, S), got shape {tuple(mask.shape)}")
    size = mask.shape[0]
    if grid < 1 or size % grid:
        raise ValueError(f"image size {size} is not divisible by the feature grid {grid}: "
                         f"choose a crop/image size that is a multiple of every decoder stride")
    mask = mask.long()
    ignored = mask == ignore_index
    if bool((((mask < 0) | (mask >= num_classes)) & ~ignored).any()):
        raise ValueError(f"mask values must lie in [0, {num_classes}) or equal {ignore_index}")
    labels = mask.masked_fill(ignored, num_classes)
    stride = size // grid
    # the extra one-hot channel collects ignored pixels and is dropped after pooling
    onehot = F.one_hot(labels, num_classes + 1)[..., :num_classes].to(torch.float32)
    pooled = onehot.reshape(grid, stride, grid, stride, num_classes).mean(dim=(1, 3))
    return pooled.reshape(grid * grid, num_classes)[qidx]
