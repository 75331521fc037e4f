"""PSCL patch sampling at one decoder scale, for a whole batch (spec §4.2-4.3).

Batch index 0 is the annotated image. For every image the view-2 crop defines which view-1
and view-2 cells see the same place (:mod:`pscl.contrastive.correspondence`). On the annotated
image ``K`` cells per class are drawn from its mask (label-guided); on every other image each of
those templates picks its most similar free cell, whose class slot it inherits
(similarity-guided). The result pairs the view-1 ("query") and view-2 ("key") features of the
same physical locations, in class-slot order. Only cell indices are returned: the dense
projection heads are per-pixel, so the PSCL module applies them with gradient to the sampled
cells alone instead of to whole maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pscl.contrastive.correspondence import batch_correspondence, cell_label_scores
from pscl.contrastive.sampling import label_guided_sample, random_sample, similarity_guided_sample_batch


@dataclass
class PatchSample:
    """Sampled patches of one scale. Rows are image-major, then class slot, then k."""

    image: torch.Tensor  # (N,) batch index of every row, N = B * C * K
    query_cell: torch.Tensor  # (N,) flat view-1 cell (h * w grid) of every row
    key_cell: torch.Tensor  # (N,) flat view-2 cell covering the same place
    slots: torch.Tensor  # (N,) class slot of every row
    values: torch.Tensor  # (C, K) label scores of the annotated image's sampled cells
    num_classes: int
    k: int


def rows(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B, h * w, D); no copy when the map is channels-last (the UNet's default)."""
    batch, dim, height, width = feature_map.shape
    return feature_map.permute(0, 2, 3, 1).reshape(batch, height * width, dim)


def gather_rows(feature_map: torch.Tensor, image: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Features of the given cells: (B, D, h, w), (N,), (N,) -> (N, D), gradient kept."""
    return rows(feature_map)[image, cells]


@torch.no_grad()
def sample_patches(match_map: torch.Tensor, flip: torch.Tensor, rot_k: torch.Tensor, crop: torch.Tensor,
                   annotated_mask: torch.Tensor, num_classes: int, k: int, guided: bool = True,
                   generator: torch.Generator | None = None) -> PatchSample:
    """Sample ``k`` patches per class on every image of the batch at one scale.

    ``match_map`` (B, D, g, g): view-2 embeddings, used only to match unlabelled cells to the
    annotated templates; ``flip`` (B,), ``rot_k`` (B,), ``crop`` (B, 4): view-2 geometry;
    ``annotated_mask`` (S, S): view-1 mask of image 0 (255 = ignore). Returns cell indices; the
    caller gathers whichever features it needs (:func:`gather_rows`).
    """
    batch, _, grid, _ = match_map.shape
    pairs = batch_correspondence(flip, rot_k, crop, grid, image_size=int(annotated_mask.shape[-1]))
    candidates = rows(match_map)
    qidx0, kidx0 = pairs[0]
    if guided:
        scores = cell_label_scores(annotated_mask, grid, num_classes, qidx0)
        sel0, values = label_guided_sample(scores, k, generator)
    else:  # the paper's ablation: random cells, no label information
        sel0 = random_sample(qidx0.numel(), num_classes, k, generator)
        values = torch.ones(num_classes, k, device=match_map.device)
    templates = candidates[0, kidx0[sel0]]
    q_index, k_index = [qidx0[sel0]], [kidx0[sel0]]
    if guided:  # every unlabelled image matched in one batched pass
        chosen_cells = similarity_guided_sample_batch(templates, [candidates[b, pairs[b][1]] for b in range(1, batch)])
    else:
        chosen_cells = [random_sample(pairs[b][0].numel(), num_classes, k, generator) for b in range(1, batch)]
    for (qidx, kidx), chosen in zip(pairs[1:], chosen_cells):
        q_index.append(qidx[chosen])
        k_index.append(kidx[chosen])
    per_image = num_classes * k
    device = match_map.device
    return PatchSample(
        image=torch.arange(batch, device=device).repeat_interleave(per_image),
        query_cell=torch.cat(q_index).to(device),
        key_cell=torch.cat(k_index).to(device),
        slots=torch.arange(per_image, device=device).div(k, rounding_mode="floor").repeat(batch),
        values=values.to(device),
        num_classes=num_classes,
        k=k,
    )
