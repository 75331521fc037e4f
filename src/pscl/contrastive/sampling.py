"""Patch sampling for PSCL (method notes section 4.3).

A *patch* is one cell of a decoder feature map inside the crop grid. Per scale and per pretraining
batch:

* the annotated image (index 0) is sampled by its labels, :func:`label_guided_sample`: ``k`` cells
  per class, classes in order, no cell twice. The result is laid out in *class slots*
  ``[class 0 block of k, class 1 block of k, ...]``, so entry ``i`` belongs to slot ``i // k``;
* every unlabelled image is matched to those annotated patches (the *templates*),
  :func:`similarity_guided_sample`: each template gets a distinct cell of the image, chosen by
  cosine similarity, and the cell inherits the template's slot;
* :func:`random_sample` is the ablation without label guidance (``sampling.guided=false``).

Matching rule (a deliberate fix of the authors' loop, notes section 11 items 3-4): the *greedy
maximum-weight matching* on cosine similarity -- repeatedly the globally most similar (template,
cell) pair among unresolved templates and free cells, ties to the lower template, then the lower
cell. It is one-to-one, and no class gets first pick; :mod:`pscl.contrastive.matching` computes it
exactly, in vectorised rounds, for one image or several at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pscl.contrastive import matching
from pscl.contrastive.matching import DEFAULT_LIST_SIZE
from pscl.contrastive.precision import autocast_off

__all__ = [
    "label_guided_sample",
    "random_sample",
    "similarity_guided_sample",
    "similarity_guided_sample_batch",
]

# Upper bound on the similarities of images matched in one batched pass (B x T x L floats):
# 2^25 is 128 MiB in fp32.
_BATCH_ELEMENTS = 1 << 25
# On the CPU, images are matched in one batched pass only up to this many similarities per image.
_CPU_BATCHED_MAX = 1 << 20


def _check_enough_cells(num_cells: int, num_classes: int, k: int) -> None:
    """Raise ValueError when ``num_classes * k`` distinct cells cannot be drawn from ``num_cells``."""
    if k < 0:
        raise ValueError(f"patches per class must be >= 0, got k={k}")
    if num_classes < 1:
        raise ValueError(f"need at least one class, got {num_classes}")
    if num_cells < num_classes * k:
        raise ValueError(
            f"crop grid too small: it has {num_cells} cells, but {num_classes} classes x {k} patches per "
            f"class = {num_classes * k} distinct cells are needed at this scale; lower sampling top_k / "
            "sample_ratio or enlarge the crop (coarsest scale is the usual culprit)"
        )


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) noise of ``shape`` drawn with ``generator`` (on its own device), returned on ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def label_guided_sample(
    scores: Tensor, k: int, generator: torch.Generator | None = None, tie_noise: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """Sample ``k`` cells per class from the annotated image by its label scores.

    Args:
        scores: (L, C) fraction of each class in each crop-grid cell, in [0, 1].
        k: patches per class.
        generator: source of the tie-breaking noise (seeded -> deterministic).
        tie_noise: width of the U[0, tie_noise) noise added to the scores; it only reorders cells
            whose scores differ by less than that, i.e. it picks randomly among full cells.

    Returns:
        sel: (C * k,) long cell indices in class-slot order (slot of entry ``i`` is ``i // k``),
            within a slot ordered by decreasing (noisy) score.
        values: (C, k) the selected cells' own-class scores (no noise); values below 1 mark
            boundary cells or fillers for a class with fewer than ``k`` cells.

    Classes are served in order 0..C-1, each taking its ``k`` best cells among those not taken by
    earlier classes, so no cell is used twice.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (L, C), got shape {tuple(scores.shape)}")
    num_cells, num_classes = scores.shape
    _check_enough_cells(num_cells, num_classes, k)
    if not scores.is_floating_point():
        scores = scores.float()
    device = scores.device
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=device), scores.new_empty((num_classes, 0))

    noisy = scores + tie_noise * _uniform((num_cells, num_classes), generator, device).to(scores.dtype)
    taken = torch.zeros(num_cells, dtype=torch.bool, device=device)
    blocks: list[Tensor] = []
    for c in range(num_classes):  # classes in order: earlier classes have first pick (as in the paper)
        column = noisy[:, c].masked_fill(taken, float("-inf"))
        chosen = torch.topk(column, k, sorted=True).indices
        taken[chosen] = True
        blocks.append(chosen)
    sel = torch.cat(blocks)
    class_of_slot = torch.arange(num_classes, device=device).repeat_interleave(k)
    values = scores[sel, class_of_slot].view(num_classes, k)
    return sel, values


def random_sample(
    num_cells: int, num_classes: int, k: int, generator: torch.Generator | None = None
) -> Tensor:
    """Ablation without label guidance: ``num_classes * k`` distinct random cells.

    Returns (C * k,) long indices into 0..num_cells-1; slots (``i // k``) carry no meaning.
    Unlike the authors' zero-score variant, cells never repeat across slots.
    """
    _check_enough_cells(num_cells, num_classes, k)
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(num_cells, generator=generator, device=device)[: num_classes * k]


def _unit_rows(x: Tensor) -> Tensor:
    """L2-normalise the rows of a (N, D) tensor in float32 (cosine similarity needs unit rows)."""
    return F.normalize(x.float(), dim=1)


def _check_pair(templates: Tensor, candidates: Tensor) -> None:
    """Validate (T, D) templates against one image's (L, D) candidates."""
    if templates.ndim != 2 or candidates.ndim != 2:
        raise ValueError(
            f"templates and candidates must be (T, D) and (L, D), got {tuple(templates.shape)} and "
            f"{tuple(candidates.shape)}"
        )
    if templates.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"feature dims differ: templates have {templates.shape[1]}, candidates {candidates.shape[1]}"
        )
    if candidates.shape[0] < templates.shape[0]:
        raise ValueError(
            f"an unlabelled image has only {candidates.shape[0]} crop-grid cells but {templates.shape[0]} "
            "templates need distinct cells; lower sampling top_k / sample_ratio or enlarge the crop"
        )


def _cells_major_similarity(unit_templates: Tensor, candidates: Tensor) -> Tensor:
    """Cosine similarities of (T, D) unit templates and one image's (L, D) candidates -> (T, L).

    Computed as the (L, T) product and returned as its transposed view: on the CPU this layout of
    the product is twice as fast (measured, docs/performance.md), and its values are the same dot
    products.

    Always float32: the features are lifted to float32 and autocast is off for the product, so a
    bf16 run (``trainer.precision=bf16-mixed``) matches on float32 similarities of its (bf16)
    features instead of on bf16-rounded products. In an fp32 run both steps change nothing.
    """
    with autocast_off(unit_templates.device):
        unit_candidates = _unit_rows(candidates).to(unit_templates.device)
        return (unit_candidates @ unit_templates.float().T).T


def _match_unit(unit_templates: Tensor, candidates: Tensor, list_size: int) -> Tensor:
    """Match already-normalised (T, D) templates to one image's (L, D) candidates -> (T,) long."""
    if unit_templates.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=candidates.device)
    sim = _cells_major_similarity(unit_templates, candidates)  # the only T x L matrix alive at a time
    return matching.greedy_match(sim, list_size).to(candidates.device)


def similarity_guided_sample(templates: Tensor, candidates: Tensor, *, list_size: int = DEFAULT_LIST_SIZE) -> Tensor:
    """Give every template a distinct, most similar cell of one unlabelled image.

    Args:
        templates: (T, D) annotated patch features (slot order), detached or not.
        candidates: (L, D) features of all crop-grid cells of one unlabelled image, L >= T.
        list_size: candidate-list length per template (speed knob; the result does not depend on it).

    Returns:
        (T,) long cell indices into 0..L-1, all distinct; entry ``i`` inherits template ``i``'s slot.

    Cosine similarity; greedy maximum-weight matching (the exact rule: :mod:`pscl.contrastive.matching`).
    """
    _check_pair(templates, candidates)
    with torch.no_grad(), autocast_off(templates.device):  # float32 matching under autocast
        return _match_unit(_unit_rows(templates), candidates, list_size)


def batched_matching(num_templates: int, num_cells: int, device: torch.device) -> bool:
    """Whether several images are matched in one batched pass or one after another (same cells).

    On a GPU always (its cost is kernel launches, one set per round instead of one per image and
    round). On the CPU only for small problems: measured on 2 cores (docs/performance.md), the
    batched pass is 10-30 % faster up to about a million similarities per image and slower at the
    quick recipe's finest scale (480 templates x 16k cells), where memory traffic dominates.
    """
    return device.type != "cpu" or num_templates * num_cells <= _CPU_BATCHED_MAX


def similarity_guided_sample_batch(
    templates: Tensor, candidates: list[Tensor], *, list_size: int = DEFAULT_LIST_SIZE
) -> list[Tensor]:
    """:func:`similarity_guided_sample` for several images with different L, matched together.

    Args:
        templates: (T, D).
        candidates: one (L_b, D) tensor per unlabelled image.

    Returns:
        one (T,) long tensor per image, each exactly what :func:`similarity_guided_sample` gives
        for that image. Where :func:`batched_matching` says so, the images are matched in one
        batched pass (:func:`~pscl.contrastive.matching.greedy_match_batched`), in groups of at
        most ``_BATCH_ELEMENTS`` similarities; otherwise one after another.
    """
    for cand in candidates:
        _check_pair(templates, cand)
    if not candidates:
        return []
    with torch.no_grad(), autocast_off(templates.device):  # float32 matching under autocast
        unit_templates = _unit_rows(templates)
        num_templates = unit_templates.shape[0]
        if num_templates == 0:
            return [torch.empty(0, dtype=torch.long, device=c.device) for c in candidates]
        longest = max(c.shape[0] for c in candidates)
        if not batched_matching(num_templates, longest, unit_templates.device):
            return [_match_unit(unit_templates, cand, list_size) for cand in candidates]
        results: list[Tensor] = []
        group = max(1, _BATCH_ELEMENTS // (num_templates * longest))
        for start in range(0, len(candidates), group):
            part = candidates[start : start + group]
            lengths = [c.shape[0] for c in part]
            device = unit_templates.device
            sim = torch.full((len(part), num_templates, max(lengths)), float("-inf"), device=device)
            for b, cand in enumerate(part):  # the same product per image as similarity_guided_sample
                sim[b, :, : lengths[b]] = _cells_major_similarity(unit_templates, cand)
            valid = torch.arange(sim.shape[2], device=device) < torch.tensor(lengths, device=device).unsqueeze(1)
            matched = matching.greedy_match_batched(sim, valid, list_size)
            results += [row.to(c.device) for row, c in zip(matched, part)]
        return results
