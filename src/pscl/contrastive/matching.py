"""Greedy one-to-one matching of templates to cells on a similarity matrix (method notes section 4.3).

:func:`pscl.contrastive.sampling.similarity_guided_sample_batch` computes the similarities of the
annotated patches (*templates*) to the cells of each unlabelled image and matches them here.

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

One implementation serves one image and several: :func:`greedy_match` is :func:`greedy_match_batched`
with a batch of one, and the batched rounds give every image exactly the matching it gets alone.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["DEFAULT_LIST_SIZE", "greedy_match", "greedy_match_batched"]

# Candidate-list length per template. Most templates settle within their first few choices; a
# longer list makes the one-off top-m pass dearer, a shorter one makes refills more frequent.
# Measured on the quick and paper MoCo matchings, at initialisation and after 150 steps
# (benchmarks/matching.py, docs/performance.md): 8 is as fast as 4 and faster than 16 or 64.
DEFAULT_LIST_SIZE = 8

# Upper bound on the elements of one temporary (rows x L) block built during list refills, so
# that refilling many templates at once never needs a second full T x L matrix.
_REFILL_BLOCK_ELEMENTS = 1 << 22

# Cells per block of the block-maximum preselection of the candidate lists (:func:`top_lists`).
_LIST_BLOCK = 16


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


def top_lists(sim: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Each row's ``width`` largest similarities and their cells, in no order (as ``topk(sorted=False)``).

    ``sim`` (T, L). When it is a transposed view of a cells-major (L, T) matrix (the layout
    :mod:`pscl.contrastive.sampling` computes, twice as fast on the CPU as (T, L)), a row-wise
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


def greedy_match(sim: Tensor, list_size: int) -> Tensor:
    """Greedy one-to-one matching of one image: :func:`greedy_match_batched` with a batch of one.

    Args:
        sim: (T, L) similarities, T <= L, finite; any strides (the transposed view of a
            cells-major matrix is read without a copy).
        list_size: length of the initial per-template candidate lists.

    Returns:
        (T,) long: the cell of each template (all distinct).
    """
    valid = torch.ones((1, sim.shape[1]), dtype=torch.bool, device=sim.device)
    return greedy_match_batched(sim.unsqueeze(0), valid, list_size)[0]


def greedy_match_batched(sim: Tensor, valid: Tensor, list_size: int) -> Tensor:
    """Greedy one-to-one matching of B independent images at once (the module docstring's rule).

    Args:
        sim: (B, T, L) similarities, finite except -inf at padding (cells beyond an image's own
            count); any strides for B = 1 (a one-image view keeps the layout it was computed in).
        valid: (B, L) bool, False at padding; every image has at least T valid cells.
        list_size: length of the initial per-template candidate lists.

    Returns:
        (B, T) long: per image, the cell of each template (all distinct), exactly as the image
        gets alone. The rounds run for all images together: a template competes only with
        templates of its own image, for cells of its own image.
    """
    batch, num_templates, num_cells = sim.shape
    device = sim.device
    neg_inf = float("-inf")
    flat = sim.flatten(0, 1)  # (B*T, L); a view, so one image's strides are kept
    image_of_row = torch.arange(batch, device=device).repeat_interleave(num_templates)

    # Per-template candidate lists, ordered by (value desc, cell asc). Every free cell more similar
    # than a list's last value (`bound`) is in that list, so the first free entry above `bound` is
    # the template's exact best free cell; when there is none the list is refilled from `sim`.
    width = min(max(1, list_size), num_cells)
    top_val, top_idx = top_lists(flat, width)
    list_val, list_idx = _ordered_lists(top_val, top_idx)
    bound = list_val[:, -1].clone()
    complete = valid.sum(dim=1)[image_of_row] <= width  # every valid cell of the image is in the list

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
        first = free_in_list.to(torch.uint8).argmax(dim=1)  # argmax returns the first maximum
        proposal = list_idx[rows, first]
        proposal_val = list_val[rows, first]
        exact = has_free & ((proposal_val > bound[rows]) | complete[rows])

        stale = (~exact).nonzero().squeeze(1)
        if stale.numel() > 0:
            # Refill from the full rows with taken cells masked out. At most (open templates of
            # the image) - 1 further cells can be taken by other templates, so that many + 1
            # entries make this the row's last refill (barring exact ties at the bound); one width
            # for all stale rows, the largest any of their images needs.
            open_per_image = torch.bincount(image, minlength=batch)
            free_per_image = free.sum(dim=1)
            stale_image = image[stale]
            needed = torch.minimum(torch.clamp(open_per_image[stale_image] + 1, min=width), free_per_image[stale_image])
            refill_width = min(max(width, int(needed.max())), num_cells)
            if refill_width > width:
                list_val, list_idx = _pad_lists(list_val, list_idx, refill_width)
                width = refill_width
            taken = ~free
            block = max(1, _REFILL_BLOCK_ELEMENTS // num_cells)
            for start in range(0, stale.numel(), block):
                part = stale[start : start + block]
                part_rows = rows[part]
                part_image = image[part]
                # one image's (1, L) mask broadcasts; several images need a row of it per template
                mask = taken if batch == 1 else taken[part_image]
                masked = flat[part_rows].masked_fill_(mask, neg_inf)  # (b, L) copy
                v, i = torch.topk(masked, refill_width, dim=1, sorted=False)
                v, i = _ordered_lists(v, i)
                part_complete = free_per_image[part_image] <= refill_width
                tied = (v[:, 0] == v[:, -1]) & ~part_complete
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

        # 2) a proposal stands only if no unresolved template of its image likes that cell more
        #    (ties: the lower template); the strongest may be a template that currently prefers
        #    another cell
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

