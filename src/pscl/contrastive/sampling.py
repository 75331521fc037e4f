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

Matching rule (a deliberate fix of the authors' loop, notes section 11 items 3-4): the result is
the *greedy maximum-weight matching* -- repeatedly take the globally most similar (template, cell)
pair among unresolved templates and free cells, ties broken by the lower template index, then the
lower cell index. It is one-to-one, and no class gets first pick. It is computed in vectorised
rounds: a pair is committed as soon as the cell is its template's best free cell *and* the template
is the cell's best unresolved template (a "locally dominant" pair). Every such pair is one the
sequential greedy rule would also take, so the rounds reproduce it exactly; the global best pair is
always locally dominant, so each round makes progress.

A simpler round rule -- "each template proposes its best cell, the most similar proposer wins" --
is *not* the same: a stronger template whose own first choice is lost may later claim the cell, so
the cell must go to the strongest of *all* unresolved templates, not only of this round's proposers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pscl.contrastive.precision import autocast_off

__all__ = [
    "label_guided_sample",
    "random_sample",
    "similarity_guided_sample",
    "similarity_guided_sample_batch",
]

# Candidate-list length per template. Most templates settle within their first few choices; a
# longer list makes the one-off top-m pass dearer, a shorter one makes refills more frequent.
# Measured on the quick and paper MoCo matchings, at initialisation and after 150 steps
# (benchmarks/matching.py, docs/performance.md): 8 is as fast as 4 and faster than 16 or 64.
DEFAULT_LIST_SIZE = 8

# Upper bound on the elements of one temporary (rows x L) block built during list refills, so
# that refilling many templates at once never needs a second full T x L matrix.
_REFILL_BLOCK_ELEMENTS = 1 << 22

# Upper bound on the similarities of images matched in one batched pass (B x T x L floats):
# 2^25 is 128 MiB in fp32.
_BATCH_ELEMENTS = 1 << 25
# On the CPU, images are matched in one batched pass only up to this many similarities per image.
_CPU_BATCHED_MAX = 1 << 20

# Cells per block of the block-maximum preselection of the candidate lists (:func:`_top_lists`).
_LIST_BLOCK = 16


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


def _ordered_lists(values: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    """Sort top-m lists by (value desc, cell index asc), the tie order of the matching rule.

    values, indices: (R, m) as returned by ``topk`` (whose order among equal values is unspecified).
    """
    by_index = indices.argsort(dim=1)
    indices = indices.gather(1, by_index)
    values = values.gather(1, by_index)
    # a stable descending sort keeps equal values in ascending cell order
    by_value = values.sort(dim=1, descending=True, stable=True).indices
    return values.gather(1, by_value), indices.gather(1, by_value)


def _pad_lists(values: Tensor, indices: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Widen (R, m) lists to (R, width) by repeating each row's last entry.

    A repeated last entry never changes which entry is the first free one, and its value equals
    the row's bound, so the padding can never be mistaken for an exact proposal.
    """
    extra = width - values.shape[1]
    if extra <= 0:
        return values, indices
    return (
        torch.cat([values, values[:, -1:].expand(-1, extra)], dim=1),
        torch.cat([indices, indices[:, -1:].expand(-1, extra)], dim=1),
    )


def _top_lists(sim: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Each row's ``width`` largest similarities and their cells, in no order (as ``topk(sorted=False)``).

    ``sim`` (T, L). When it is a transposed view of a cells-major (L, T) matrix (the layout
    :func:`_cells_major_similarity` computes, twice as fast on the CPU as (T, L)), a row-wise
    ``topk`` would read it across the grain. The lists are then found through block maxima: the
    maxima of blocks of ``_LIST_BLOCK`` consecutive cells, one contiguous reduction; per row the
    ``width`` blocks with the largest maxima; the row's ``width`` largest entries among those
    blocks' cells. That is exact: the chosen blocks' maxima are ``width`` entries >= the smallest
    chosen maximum ``beta``, so the row's ``width``-th largest value is >= ``beta``, and every entry
    above it lies in a block whose maximum exceeds ``beta``, which is a chosen block. As with
    ``topk``, which of several entries equal to the last value is listed is unspecified.
    """
    num_templates, num_cells = sim.shape
    num_blocks = -(-num_cells // _LIST_BLOCK)
    if sim.stride(0) != 1 or num_blocks <= width:
        return torch.topk(sim, width, dim=1, sorted=False)
    cells_major = sim.T  # (L, T), contiguous rows of T
    full = num_cells // _LIST_BLOCK
    block_max = cells_major[: full * _LIST_BLOCK].view(full, _LIST_BLOCK, num_templates).amax(dim=1)
    if full < num_blocks:  # the last, shorter block
        block_max = torch.cat([block_max, cells_major[full * _LIST_BLOCK :].amax(dim=0, keepdim=True)])
    blocks = torch.topk(block_max.T, width, dim=1, sorted=False).indices  # (T, width)
    offsets = torch.arange(_LIST_BLOCK, device=sim.device)
    cells = (blocks.unsqueeze(2) * _LIST_BLOCK + offsets).view(num_templates, -1)  # (T, width * block)
    beyond = cells >= num_cells
    cells = cells.clamp_(max=num_cells - 1)
    values = sim[torch.arange(num_templates, device=sim.device).unsqueeze(1), cells]
    values = values.masked_fill_(beyond, float("-inf"))
    top_val, position = torch.topk(values, width, dim=1, sorted=False)
    return top_val, cells.gather(1, position)


def _check_progress(won_rows: Tensor) -> None:
    """Every round commits at least the globally best open pair; a round without one would loop forever."""
    if won_rows.numel() == 0:
        raise RuntimeError("patch matching made no progress: its candidate lists are inconsistent (a bug in pscl)")


def _greedy_match(sim: Tensor, list_size: int) -> Tensor:
    """Greedy one-to-one matching on a similarity matrix.

    Args:
        sim: (T, L) similarities, T <= L, finite; any strides (the transposed view of a
            cells-major matrix is read without a copy).
        list_size: length of the initial per-template candidate lists.

    Returns:
        (T,) long: the cell of each template (all distinct).
    """
    num_templates, num_cells = sim.shape
    device = sim.device
    neg_inf = float("-inf")

    # Per-template candidate lists, ordered by (value desc, cell asc). Every free cell more similar
    # than a list's last value (`bound`) is in that list, so the first free entry above `bound` is
    # the template's exact best free cell; when there is none the list is refilled from `sim`.
    width = min(max(1, list_size), num_cells)
    top_val, top_idx = _top_lists(sim, width)
    list_val, list_idx = _ordered_lists(top_val, top_idx)
    bound = list_val[:, -1].clone()
    complete = torch.full((num_templates,), width == num_cells, dtype=torch.bool, device=device)

    free = torch.ones(num_cells, dtype=torch.bool, device=device)
    unresolved = torch.ones(num_templates, dtype=torch.bool, device=device)
    assignment = torch.full((num_templates,), -1, dtype=torch.long, device=device)

    while True:
        rows = unresolved.nonzero().squeeze(1)  # ascending template order, needed for tie-breaks
        n_open = rows.numel()
        if n_open == 0:
            break

        # 1) each unresolved template's best free cell, read from its list where that is exact
        free_in_list = free[list_idx[rows]]  # (U, width)
        has_free = free_in_list.any(dim=1)
        first = free_in_list.to(torch.uint8).argmax(dim=1)  # argmax returns the first maximum
        proposal = list_idx[rows, first]
        proposal_val = list_val[rows, first]
        exact = has_free & ((proposal_val > bound[rows]) | complete[rows])

        stale = (~exact).nonzero().squeeze(1)
        if stale.numel() > 0:
            # Refill from the full rows with taken cells masked out. At most n_open - 1 further
            # cells can be taken by other templates, so n_open + 1 entries make this the row's
            # last refill (barring exact ties at the bound).
            taken = ~free
            n_free = num_cells - int(taken.sum())
            refill_width = min(max(width, n_open + 1), n_free)
            if refill_width > width:
                list_val, list_idx = _pad_lists(list_val, list_idx, refill_width)
                width = refill_width
            block = max(1, _REFILL_BLOCK_ELEMENTS // num_cells)
            for start in range(0, stale.numel(), block):
                part = stale[start : start + block]
                part_rows = rows[part]
                masked = sim[part_rows].masked_fill_(taken, neg_inf)  # (b, L) copy
                v, i = torch.topk(masked, refill_width, dim=1, sorted=False)
                v, i = _ordered_lists(v, i)
                part_complete = n_free <= refill_width
                tied = (v[:, 0] == v[:, -1]) & (not part_complete)
                # first entry = best free cell; if it ties with the bound, cells of equal value
                # may lie outside the list, so take the masked row's first maximum instead
                best_idx = torch.where(tied, masked.argmax(dim=1), i[:, 0]) if bool(tied.any()) else i[:, 0]
                proposal[part] = best_idx
                proposal_val[part] = v[:, 0]
                v, i = _pad_lists(v, i, width)
                list_val[part_rows] = v
                list_idx[part_rows] = i
                bound[part_rows] = v[:, -1]
                complete[part_rows] = part_complete

        # 2) a proposal stands only if no unresolved template likes that cell more (ties: lower
        #    template); the strongest may be a template that currently prefers another cell
        cells, slot_of_row = torch.unique(proposal, return_inverse=True)
        column_block = sim[rows.unsqueeze(1), cells.unsqueeze(0)]  # (U, P), P <= U
        strongest = rows[column_block.argmax(dim=0)]  # per proposed cell; first max = lowest row
        accepted = strongest[slot_of_row] == rows

        won_rows = rows[accepted]
        won_cells = proposal[accepted]
        _check_progress(won_rows)
        assignment[won_rows] = won_cells
        unresolved[won_rows] = False
        free[won_cells] = False

    return assignment


def _greedy_match_batched(sim: Tensor, valid: Tensor, list_size: int) -> Tensor:
    """:func:`_greedy_match` of B independent images at once.

    Args:
        sim: (B, T, L) similarities, -inf at padding (cells beyond an image's own count).
        valid: (B, L) bool, False at padding; every image has at least T valid cells.
        list_size: length of the initial per-template candidate lists.

    Returns:
        (B, T) long: per image, the cell of each template (all distinct), exactly as
        :func:`_greedy_match` gives on that image alone. The rounds run for all images together:
        a template competes only with templates of its own image, for cells of its own image.
    """
    batch, num_templates, num_cells = sim.shape
    device = sim.device
    neg_inf = float("-inf")
    flat = sim.view(batch * num_templates, num_cells)  # the caller filled padding with -inf
    image_of_row = torch.arange(batch, device=device).repeat_interleave(num_templates)
    cells_of_image = valid.sum(dim=1)

    width = min(max(1, list_size), num_cells)
    top_val, top_idx = torch.topk(flat, width, dim=1, sorted=False)
    list_val, list_idx = _ordered_lists(top_val, top_idx)
    bound = list_val[:, -1].clone()
    complete = cells_of_image[image_of_row] <= width  # every valid cell of the image is in the list

    free = valid.clone()  # padding is never free
    unresolved = torch.ones(batch * num_templates, dtype=torch.bool, device=device)
    assignment = torch.full((batch * num_templates,), -1, dtype=torch.long, device=device)

    while True:
        rows = unresolved.nonzero().squeeze(1)  # image-major, ascending template order within an image
        if rows.numel() == 0:
            break
        image = image_of_row[rows]

        # 1) each unresolved template's best free cell, read from its list where that is exact
        free_in_list = free[image.unsqueeze(1), list_idx[rows]]  # (U, width)
        has_free = free_in_list.any(dim=1)
        first = free_in_list.to(torch.uint8).argmax(dim=1)
        proposal = list_idx[rows, first]
        proposal_val = list_val[rows, first]
        exact = has_free & ((proposal_val > bound[rows]) | complete[rows])

        stale = (~exact).nonzero().squeeze(1)
        if stale.numel() > 0:
            # refill from the full rows with taken cells masked out, as _greedy_match does, with
            # one width for all stale rows: the largest any of their images needs
            open_per_image = torch.bincount(image, minlength=batch)
            free_per_image = free.sum(dim=1)
            stale_image = image[stale]
            needed = torch.minimum(torch.clamp(open_per_image[stale_image] + 1, min=width), free_per_image[stale_image])
            refill_width = min(max(width, int(needed.max())), num_cells)
            if refill_width > width:
                list_val, list_idx = _pad_lists(list_val, list_idx, refill_width)
                width = refill_width
            block = max(1, _REFILL_BLOCK_ELEMENTS // num_cells)
            for start in range(0, stale.numel(), block):
                part = stale[start : start + block]
                part_rows = rows[part]
                part_image = image[part]
                masked = flat[part_rows].masked_fill_(~free[part_image], neg_inf)  # (b, L) copy
                v, i = torch.topk(masked, refill_width, dim=1, sorted=False)
                v, i = _ordered_lists(v, i)
                part_complete = free_per_image[part_image] <= refill_width
                tied = (v[:, 0] == v[:, -1]) & ~part_complete
                best_idx = torch.where(tied, masked.argmax(dim=1), i[:, 0]) if bool(tied.any()) else i[:, 0]
                proposal[part] = best_idx
                proposal_val[part] = v[:, 0]
                v, i = _pad_lists(v, i, width)
                list_val[part_rows] = v
                list_idx[part_rows] = i
                bound[part_rows] = v[:, -1]
                complete[part_rows] = part_complete

        # 2) a proposal stands only if no unresolved template of its image likes that cell more
        #    (ties: the lower template)
        keys, slot_of_row = torch.unique(image * num_cells + proposal, return_inverse=True)
        key_image, key_cell = keys // num_cells, keys % num_cells
        column = sim[key_image, :, key_cell]  # (P, T): every template of the image, for that cell
        column = column.masked_fill(~unresolved.view(batch, num_templates)[key_image], neg_inf)
        strongest = key_image * num_templates + column.argmax(dim=1)  # first max = lowest template
        accepted = strongest[slot_of_row] == rows

        won_rows = rows[accepted]
        won_cells = proposal[accepted]
        _check_progress(won_rows)
        assignment[won_rows] = won_cells
        unresolved[won_rows] = False
        free[image_of_row[won_rows], won_cells] = False

    return assignment.view(batch, num_templates)


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
    return _greedy_match(sim, list_size).to(candidates.device)


def similarity_guided_sample(templates: Tensor, candidates: Tensor, *, list_size: int = DEFAULT_LIST_SIZE) -> Tensor:
    """Give every template a distinct, most similar cell of one unlabelled image.

    Args:
        templates: (T, D) annotated patch features (slot order), detached or not.
        candidates: (L, D) features of all crop-grid cells of one unlabelled image, L >= T.
        list_size: candidate-list length per template (speed knob; the result does not depend on it).

    Returns:
        (T,) long cell indices into 0..L-1, all distinct; entry ``i`` inherits template ``i``'s slot.

    Cosine similarity; greedy maximum-weight matching (see module docstring for the exact rule).
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
        batched pass (:func:`_greedy_match_batched`), in groups of at most ``_BATCH_ELEMENTS``
        similarities; otherwise one after another.
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
            matched = _greedy_match_batched(sim, valid, list_size)
            results += [row.to(c.device) for row, c in zip(matched, part)]
        return results
