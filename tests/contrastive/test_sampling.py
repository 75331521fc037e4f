"""Patch sampling (pscl.contrastive.sampling) and its greedy matching (pscl.contrastive.matching)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pscl.contrastive.matching import greedy_match, top_lists
from pscl.contrastive.sampling import (
    label_guided_sample,
    random_sample,
    similarity_guided_sample,
    similarity_guided_sample_batch,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mask_scores(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(H, W) class mask -> (H*W, C) one-hot scores, as a hard label gives them."""
    return F.one_hot(mask.flatten().long(), num_classes).float()


def random_mask(seed: int, size: int = 24, num_classes: int = 4) -> torch.Tensor:
    return torch.randint(0, num_classes, (size, size), generator=seeded(seed))


# --------------------------------------------------------------------------- label-guided


def test_label_guided_slots_lie_on_their_class() -> None:
    k, num_classes = 10, 4
    scores = mask_scores(random_mask(0), num_classes)
    assert (scores.sum(0) >= k).all()
    sel, values = label_guided_sample(scores, k, seeded(1))
    assert sel.shape == (num_classes * k,) and sel.dtype == torch.long
    assert values.shape == (num_classes, k)
    assert sel.unique().numel() == sel.numel()
    slot = torch.arange(num_classes * k) // k
    assert (scores[sel, slot] == 1).all()
    assert (values == 1).all()


def test_label_guided_is_deterministic_per_seed_and_random_across_seeds() -> None:
    scores = mask_scores(random_mask(2), 4)
    first, _ = label_guided_sample(scores, 6, seeded(7))
    again, _ = label_guided_sample(scores, 6, seeded(7))
    other, _ = label_guided_sample(scores, 6, seeded(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    # every class has ~144 equal cells; the choice among them must be random, not e.g. lowest index
    for c in range(4):
        block = first[c * 6 : (c + 1) * 6]
        lowest = (scores[:, c] == 1).nonzero().squeeze(1)[:6]
        assert set(block.tolist()) != set(lowest.tolist())


def test_label_guided_small_class_gets_its_cells_first_then_fillers() -> None:
    num_cells, k = 200, 8
    scores = torch.zeros(num_cells, 3)
    scores[:, 0] = 1.0
    full = torch.tensor([5, 50, 150])  # class 2 has only 3 full cells
    scores[full] = torch.tensor([0.0, 0.0, 1.0])
    scores[77] = torch.tensor([0.5, 0.0, 0.5])  # two partial (boundary) cells of class 2
    scores[99] = torch.tensor([0.75, 0.0, 0.25])
    scores[10:40] = torch.tensor([0.0, 1.0, 0.0])  # class 1: 30 cells

    sel, values = label_guided_sample(scores, k, seeded(3))
    block = sel[2 * k :]
    assert set(block[:3].tolist()) == set(full.tolist())
    assert block[3:5].tolist() == [77, 99]
    assert values[2].tolist()[:5] == [1.0, 1.0, 1.0, 0.5, 0.25]
    assert (values[2, 5:] == 0).all()  # fillers are marked as not genuine
    assert sel.unique().numel() == sel.numel()  # fillers never reuse another class's cell
    # class 0 went first and could have taken the partial cells (0.75 / 0.5), but it has
    # 165 full cells, so its k best are full ones
    assert (values[0] == 1).all() and (values[1] == 1).all()


def test_label_guided_absent_class_still_gets_k_distinct_fillers() -> None:
    scores = mask_scores(torch.zeros(10, 10, dtype=torch.long), 4)  # only class 0 present
    sel, values = label_guided_sample(scores, 5, seeded(0))
    assert sel.unique().numel() == 20
    assert (values[0] == 1).all() and (values[1:] == 0).all()


def test_label_guided_rejects_too_small_grid() -> None:
    scores = torch.rand(15, 4)
    with pytest.raises(ValueError, match="15 cells.*16"):
        label_guided_sample(scores, 4)
    sel, _ = label_guided_sample(torch.rand(16, 4), 4)  # exactly enough cells is fine
    assert sorted(sel.tolist()) == list(range(16))


# --------------------------------------------------------------------------- random


def test_random_sample_is_distinct_and_in_range() -> None:
    sel = random_sample(100, 4, 8, seeded(0))
    assert sel.shape == (32,) and sel.dtype == torch.long
    assert sel.unique().numel() == 32
    assert int(sel.min()) >= 0 and int(sel.max()) < 100
    assert torch.equal(sel, random_sample(100, 4, 8, seeded(0)))
    with pytest.raises(ValueError):
        random_sample(31, 4, 8)


# --------------------------------------------------------------------------- similarity-guided


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)


def reference_match(templates: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Obvious slow rule: repeatedly take the globally most similar (template, cell) pair among
    unresolved templates and free cells; ties go to the lower template, then the lower cell."""
    sim = unit(templates.float()) @ unit(candidates.float()).T
    return reference_on_sim(sim)


def reference_on_sim(sim: torch.Tensor) -> torch.Tensor:
    table = sim.tolist()
    num_templates, num_cells = sim.shape
    open_rows, free_cells = set(range(num_templates)), set(range(num_cells))
    out = [-1] * num_templates
    while open_rows:
        best = None
        for t in sorted(open_rows):
            for c in sorted(free_cells):
                if best is None or table[t][c] > best[0]:  # strict: earlier (lower) pair wins ties
                    best = (table[t][c], t, c)
        _, t, c = best
        out[t] = c
        open_rows.remove(t)
        free_cells.remove(c)
    return torch.tensor(out)


def planted(seed: int, num_templates: int, num_cells: int, dim: int, noise: float):
    g = seeded(seed)
    candidates = unit(torch.randn(num_cells, dim, generator=g))
    templates = torch.randn(num_templates, dim, generator=g)
    where = torch.randperm(num_cells, generator=g)[:num_templates]
    candidates[where] = unit(templates + noise * torch.randn(num_templates, dim, generator=g))
    return templates, candidates, where


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_planted_copies_are_found(noise: float) -> None:
    templates, candidates, where = planted(0, 64, 3000, 32, noise)
    got = similarity_guided_sample(templates, candidates)
    assert got.dtype == torch.long and got.shape == (64,)
    assert torch.equal(got, where)


def test_scale_of_features_does_not_matter() -> None:
    # cosine: a planted copy wins even when a random candidate has a far larger norm
    templates, candidates, where = planted(1, 8, 400, 16, 0.0)
    candidates = candidates * torch.rand(400, 1, generator=seeded(2)) * 100
    assert torch.equal(similarity_guided_sample(templates, candidates), where)


def test_duplicate_templates_get_distinct_cells() -> None:
    templates, candidates, where = planted(3, 10, 500, 16, 0.0)
    templates[1] = templates[0]  # two identical templates compete for one planted cell
    got = similarity_guided_sample(templates, candidates)
    assert got.unique().numel() == 10
    assert got[0] == where[0]  # the exact copy goes to one of them (the lower index on a tie)
    assert got[1] != where[0]
    assert torch.equal(got[2:], where[2:])
    # the loser takes the best remaining cell for its features
    sim = unit(templates[1:2]) @ unit(candidates).T
    sim[0, got[torch.arange(10) != 1]] = -2
    assert got[1] == sim.argmax()


def test_conflict_goes_to_the_more_similar_template_not_the_first() -> None:
    candidates = unit(torch.randn(50, 8, generator=seeded(4)))
    templates = torch.stack([candidates[7] + 0.3 * candidates[8], candidates[7]])  # template 1 is the closer
    got = similarity_guided_sample(templates, candidates)
    assert got[1] == 7 and got[0] != 7


def test_stronger_template_that_lost_its_first_choice_beats_a_weaker_proposer() -> None:
    # t0 takes cell 0; t1 (who first wanted cell 0) must then get cell 1, although only t2 proposed
    # cell 1 in the first round - a "best proposer wins" round rule would give cell 1 to t2
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.7, 0.0], [0.0, 0.6, 0.5]])
    assert greedy_match(sim, 3).tolist() == [0, 1, 2]
    assert reference_on_sim(sim).tolist() == [0, 1, 2]


@pytest.mark.parametrize("seed", range(6))
def test_matches_slow_reference_on_random_inputs(seed: int) -> None:
    g = seeded(100 + seed)
    num_templates = int(torch.randint(2, 30, (1,), generator=g))
    num_cells = num_templates + int(torch.randint(0, 40, (1,), generator=g))
    dim = 8
    if seed % 2:  # class-like clusters: many templates want the same cells (many conflicts)
        centers = torch.randn(3, dim, generator=g)
        templates = centers[torch.randint(0, 3, (num_templates,), generator=g)] + 0.2 * torch.randn(
            num_templates, dim, generator=g
        )
        candidates = centers[torch.randint(0, 3, (num_cells,), generator=g)] + 0.5 * torch.randn(
            num_cells, dim, generator=g
        )
    else:
        templates = torch.randn(num_templates, dim, generator=g)
        candidates = torch.randn(num_cells, dim, generator=g)
    expected = reference_match(templates, candidates)
    for list_size in (1, 2, 32):  # short lists force the refill path
        got = similarity_guided_sample(templates, candidates, list_size=list_size)
        assert torch.equal(got, expected), list_size


def cells_major(sim: torch.Tensor) -> torch.Tensor:
    """The same (T, L) values as the transposed view of an (L, T) matrix (what the sampler builds)."""
    return sim.T.contiguous().T


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_cells", [20, 203])
def test_ties_follow_the_documented_order(seed: int, num_cells: int) -> None:
    # few distinct values -> ties everywhere, also at the edge of the candidate lists and of the
    # block maxima (203 cells: 13 blocks of 16, the last one short)
    g = seeded(200 + seed)
    sim = torch.randint(0, 3, (12, num_cells), generator=g).float()
    expected = reference_on_sim(sim)
    for list_size in (1, 3, 8, 20):
        assert torch.equal(greedy_match(sim, list_size), expected), list_size
        assert torch.equal(greedy_match(cells_major(sim), list_size), expected), list_size


@pytest.mark.parametrize("kind", ["random", "ties"])
@pytest.mark.parametrize(("num_templates", "num_cells", "width"), [(7, 300, 4), (5, 257, 16), (3, 100, 7), (6, 40, 2)])
def test_block_maximum_lists_hold_the_largest_values(kind: str, num_templates: int, num_cells: int, width: int) -> None:
    g = seeded(num_cells + width)
    if kind == "ties":
        sim = torch.randint(0, 4, (num_templates, num_cells), generator=g).float()
    else:
        sim = torch.randn(num_templates, num_cells, generator=g)
    values, cells = top_lists(cells_major(sim), width)
    assert values.shape == cells.shape == (num_templates, width)
    # the listed cells are distinct, carry their own values, and are the row's `width` largest
    assert all(row.unique().numel() == width for row in cells)
    torch.testing.assert_close(values, sim.gather(1, cells), atol=0, rtol=0)
    expected = torch.topk(sim, width, dim=1).values
    torch.testing.assert_close(values.sort(dim=1, descending=True).values, expected, atol=0, rtol=0)
    # every cell above the list's last value is listed (the matching's exactness contract)
    bound = values.min(dim=1, keepdim=True).values
    for row in range(num_templates):
        above = (sim[row] > bound[row]).nonzero().squeeze(1)
        assert set(above.tolist()) <= set(cells[row].tolist())


def test_heavy_contention_is_exact_and_one_to_one() -> None:
    # nearly identical templates per class: every template walks deep into its list
    g = seeded(5)
    centers = torch.randn(4, 16, generator=g)
    templates = centers.repeat_interleave(30, 0) + 0.02 * torch.randn(120, 16, generator=g)
    candidates = centers[torch.randint(0, 4, (3000,), generator=g)] + 0.7 * torch.randn(3000, 16, generator=g)
    results = [similarity_guided_sample(templates, candidates, list_size=s) for s in (1, 4, 64)]
    assert results[0].unique().numel() == 120
    assert all(torch.equal(r, results[0]) for r in results[1:])
    # greedy property: the pair it took first (the global best) is in the matching
    sim = unit(templates) @ unit(candidates).T
    t, c = divmod(int(sim.argmax()), 3000)
    assert results[0][t] == c


def test_no_gradient_and_input_checks() -> None:
    templates = torch.randn(4, 8, requires_grad=True)
    candidates = torch.randn(10, 8, requires_grad=True)
    got = similarity_guided_sample(templates, candidates)
    assert not got.requires_grad
    assert got.unique().numel() == 4
    assert similarity_guided_sample(templates, candidates[:4]).unique().numel() == 4
    with pytest.raises(ValueError, match="3 crop-grid cells"):
        similarity_guided_sample(templates, candidates[:3])
    with pytest.raises(ValueError, match="feature dims"):
        similarity_guided_sample(templates, torch.randn(10, 7))


def test_batch_equals_per_image_calls() -> None:
    g = seeded(6)
    templates = torch.randn(16, 12, generator=g)
    images = [torch.randn(n, 12, generator=g) for n in (16, 90, 400)]
    batch = similarity_guided_sample_batch(templates, images)
    assert len(batch) == 3
    for got, cand in zip(batch, images):
        assert torch.equal(got, similarity_guided_sample(templates, cand))
    with pytest.raises(ValueError):
        similarity_guided_sample_batch(templates, [images[0], torch.randn(5, 12)])


@pytest.mark.parametrize("kind", ["random", "ties", "planted"])
def test_batched_matching_equals_matching_each_image_alone(kind: str, monkeypatch) -> None:
    """similarity_guided_sample_batch (one batched pass) against the one-image reference."""
    from pscl.contrastive import sampling

    monkeypatch.setattr(sampling, "batched_matching", lambda *args: True)
    for trial in range(40):
        generator = torch.Generator().manual_seed(trial)
        num_templates = int(torch.randint(1, 30, (1,), generator=generator))
        dim = int(torch.randint(2, 12, (1,), generator=generator))
        if kind == "ties":  # few distinct values: many exactly equal similarities
            templates = torch.randint(-2, 3, (num_templates, dim), generator=generator).float()
        else:
            templates = torch.randn(num_templates, dim, generator=generator)
        images = []
        for _ in range(int(torch.randint(1, 6, (1,), generator=generator))):
            cells = num_templates + int(torch.randint(0, 50, (1,), generator=generator))
            if kind == "ties":
                image = torch.randint(-2, 3, (cells, dim), generator=generator).float()
            else:
                image = torch.randn(cells, dim, generator=generator)
            if kind == "planted":
                image[torch.randperm(cells, generator=generator)[:num_templates]] += 3 * templates
            images.append(image)
        list_size = (1, 4, 64)[trial % 3]
        reference = [similarity_guided_sample(templates, image, list_size=list_size) for image in images]
        batched = similarity_guided_sample_batch(templates, images, list_size=list_size)
        for expected, got in zip(reference, batched):
            assert torch.equal(expected, got), (kind, trial)


def test_inconsistent_candidate_lists_raise_instead_of_looping(monkeypatch) -> None:
    # lists that leave out a row's best cell break the exactness contract: here template 0 proposes
    # cell 0, which template 1 likes more, and template 1 proposes cell 1, which template 0 likes
    # more, so no pair can be committed; the matching must stop with an error instead of spinning
    from pscl.contrastive import matching

    def lists_without_the_best(sim: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        cells = torch.tensor([[0, 2], [1, 3]])
        return sim.gather(1, cells), cells

    monkeypatch.setattr(matching, "top_lists", lists_without_the_best)
    sim = torch.tensor([[0.5, 0.9, 0.1, 0.0], [0.8, 0.4, 0.0, 0.1]])
    with pytest.raises(RuntimeError, match="no progress"):
        greedy_match(sim, 2)
