"""PSCL contrastive losses against slow, obvious loop references (float64) and hand-computed values."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pscl.contrastive.info_nce import (
    class_masked_nt_xent,
    class_prototypes,
    gather,
    image_queue_targets,
    nt_xent,
    patch_weights,
    prototype_queue_targets,
    soft_contrastive_loss,
)

TOL = 1e-6


# ----------------------------------------------------------------------------------------------------------
# Loop references: one anchor at a time, one column at a time, nothing vectorised.
# ----------------------------------------------------------------------------------------------------------


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / math.sqrt(sum(float(x) ** 2 for x in v))


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b))


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _anchor_loss(anchor: torch.Tensor, positive: torch.Tensor, negatives: list[torch.Tensor], t: float) -> float:
    """-log(exp(pos/t) / (exp(pos/t) + sum_neg exp(neg/t))) for unit vectors."""
    pos = _dot(anchor, positive) / t
    return _logsumexp([pos] + [_dot(anchor, n) / t for n in negatives]) - pos


def ref_nt_xent(
    z0: torch.Tensor,
    z1: torch.Tensor,
    t: float,
    z0_all: torch.Tensor | None = None,
    z1_all: torch.Tensor | None = None,
    offset: int = 0,
) -> float:
    """Anchors are the local rows; negatives every other vector of the (possibly larger, gathered) batch."""
    z0_all = z0 if z0_all is None else z0_all
    z1_all = z1 if z1_all is None else z1_all
    everything = [("a", i, _unit(v)) for i, v in enumerate(z0_all)] + [("b", i, _unit(v)) for i, v in enumerate(z1_all)]
    losses = []
    for view, local in (("a", z0), ("b", z1)):
        for i in range(local.shape[0]):
            g = i + offset
            anchor = _unit(local[i])
            other = "b" if view == "a" else "a"
            positive = next(v for w, j, v in everything if w == other and j == g)
            negatives = [v for w, j, v in everything if j != g]
            losses.append(_anchor_loss(anchor, positive, negatives, t))
    return sum(losses) / len(losses)


def ref_class_masked(
    p0: torch.Tensor,
    p1: torch.Tensor,
    slots: torch.Tensor,
    t: float,
    p0_all: torch.Tensor | None = None,
    p1_all: torch.Tensor | None = None,
    slots_all: torch.Tensor | None = None,
) -> float:
    """Rows = [p0; p1]; positive = same patch other view; negatives = candidate rows with another slot."""
    p0_all = p0 if p0_all is None else p0_all
    p1_all = p1 if p1_all is None else p1_all
    slots_all = slots if slots_all is None else slots_all
    candidates = [(_unit(v), int(s)) for v, s in zip(p0_all, slots_all)] + [
        (_unit(v), int(s)) for v, s in zip(p1_all, slots_all)
    ]
    m = p0.shape[0]
    losses = []
    for r in range(2 * m):
        i = r % m
        anchor = _unit(p0[i] if r < m else p1[i])
        positive = _unit(p1[i] if r < m else p0[i])
        negatives = [v for v, s in candidates if s != int(slots[i])]
        losses.append(_anchor_loss(anchor, positive, negatives, t))
    return sum(losses) / len(losses)


def ref_soft(
    q: torch.Tensor,
    k: torch.Tensor,
    bank: torch.Tensor,
    bank_targets: torch.Tensor,
    positive_targets: torch.Tensor | None,
    t: float,
    normalize: bool,
    bank_valid: torch.Tensor | None = None,
    row_weights: torch.Tensor | None = None,
) -> float:
    n, nq = bank_targets.shape
    total = 0.0
    for i in range(n):
        qi = _unit(q[i])
        columns = [_dot(qi, _unit(k[i])) / t]
        targets = [1.0 if positive_targets is None else float(positive_targets[i])]
        for j in range(nq):
            if bank_valid is not None and not bool(bank_valid[j]):
                continue
            columns.append(_dot(qi, _unit(bank[j])) / t)
            targets.append(float(bank_targets[i, j]))
        mass = sum(targets)
        if normalize:
            if mass == 0:
                continue
            targets = [y / mass for y in targets]
        lse = _logsumexp(columns)
        row = -sum(y * (c - lse) for y, c in zip(targets, columns))
        total += row * (1.0 if row_weights is None else float(row_weights[i]))
    return total / n


def _rand(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------
# nt_xent
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d", "t"), [(1, 4, 0.5), (2, 3, 0.5), (5, 8, 0.1), (9, 16, 0.5)])
def test_nt_xent_matches_loop_reference(n: int, d: int, t: float) -> None:
    z0, z1 = _rand(n, d, seed=n) * 3.0, _rand(n, d, seed=100 + n)  # unnormalised on purpose
    assert nt_xent(z0, z1, temperature=t).item() == pytest.approx(ref_nt_xent(z0, z1, t), abs=TOL)


def test_nt_xent_single_image_has_no_negatives_and_zero_loss() -> None:
    z0, z1 = _rand(1, 4, seed=1), _rand(1, 4, seed=2)
    assert nt_xent(z0, z1).item() == pytest.approx(0.0, abs=1e-12)


def test_nt_xent_is_symmetric_in_views() -> None:
    z0, z1 = _rand(7, 8, seed=3), _rand(7, 8, seed=4)
    assert nt_xent(z0, z1).item() == pytest.approx(nt_xent(z1, z0).item(), abs=1e-12)


def test_nt_xent_gradient_reaches_both_views() -> None:
    z0 = _rand(4, 8, seed=5).requires_grad_()
    z1 = _rand(4, 8, seed=6).requires_grad_()
    nt_xent(z0, z1).backward()
    assert z0.grad is not None and z0.grad.abs().sum() > 0
    assert z1.grad is not None and z1.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------------
# class_masked_nt_xent
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slots", "t"),
    [
        ([0, 0, 1, 1, 2, 2, 3, 3] * 3, 0.5),  # 3 images x 4 slots x K=2
        ([0, 255, 7, 7, 255, 0, 3], 0.5),  # arbitrary, odd ids including 255
        ([5, 9], 0.2),
        ([1, 1, 1, 2], 0.5),  # a slot with a single patch still has negatives
    ],
)
def test_class_masked_matches_loop_reference(slots: list[int], t: float) -> None:
    m = len(slots)
    p0, p1 = _rand(m, 6, seed=m) * 2.0, _rand(m, 6, seed=50 + m)
    s = torch.tensor(slots)
    expected = ref_class_masked(p0, p1, s, t)
    assert class_masked_nt_xent(p0, p1, s, temperature=t).item() == pytest.approx(expected, abs=TOL)


def test_class_masked_single_class_has_no_negatives_and_zero_loss() -> None:
    # Chosen behaviour: a row without negatives contributes -log(1) = 0 and no gradient.
    p0 = _rand(6, 4, seed=7).requires_grad_()
    p1 = _rand(6, 4, seed=8).requires_grad_()
    slots = torch.full((6,), 255)
    loss = class_masked_nt_xent(p0, p1, slots)
    assert loss.item() == pytest.approx(ref_class_masked(p0.detach(), p1.detach(), slots, 0.5), abs=TOL)
    assert loss.item() == 0.0
    loss.backward()
    assert p0.grad is not None and torch.all(p0.grad == 0)


def test_class_masked_same_slot_rows_are_not_negatives() -> None:
    # Two patches of the same slot that are identical to each other but far from the other slot:
    # if same-slot rows leaked in as negatives the loss would be about log 3, not about 0.
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    slots = torch.tensor([0, 0, 1])
    loss = class_masked_nt_xent(a, a.clone(), slots, temperature=0.05)
    assert loss.item() < 1e-6


def test_class_masked_aligned_views_beat_shuffled_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    classes, per_class, d = 4, 8, 16
    directions = torch.eye(d, dtype=torch.float64)[:classes]  # orthogonal class directions
    slots = torch.arange(classes).repeat_interleave(per_class)
    p0 = directions[slots] + 0.05 * torch.randn(len(slots), d, generator=g, dtype=torch.float64)
    shuffled_p1 = p0[torch.randperm(len(slots), generator=g)]
    # At t = 0.5 the 48 orthogonal negatives (cos 0) bound the aligned loss below by log(1 + 48 / e^2) ~ 2.0.
    aligned = class_masked_nt_xent(p0, p0.clone(), slots, temperature=0.5)
    shuffled = class_masked_nt_xent(p0, shuffled_p1, slots, temperature=0.5)
    assert aligned.item() < shuffled.item() - 1.5
    aligned = class_masked_nt_xent(p0, p0.clone(), slots, temperature=0.1)
    shuffled = class_masked_nt_xent(p0, shuffled_p1, slots, temperature=0.1)
    assert aligned.item() < 0.05 and shuffled.item() > 5.0


def test_class_masked_gradient_reaches_both_views() -> None:
    p0 = _rand(12, 8, seed=9).requires_grad_()
    p1 = _rand(12, 8, seed=10).requires_grad_()
    class_masked_nt_xent(p0, p1, torch.arange(12) % 3).backward()
    assert p0.grad is not None and p0.grad.abs().sum() > 0
    assert p1.grad is not None and p1.grad.abs().sum() > 0


def test_class_masked_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        class_masked_nt_xent(torch.randn(4, 3), torch.randn(5, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        class_masked_nt_xent(torch.randn(4, 3), torch.randn(4, 3), torch.zeros(3, dtype=torch.long))


# ----------------------------------------------------------------------------------------------------------
# soft_contrastive_loss
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(("n", "nq", "d"), [(1, 3, 4), (5, 7, 8), (9, 12, 16)])
def test_soft_loss_matches_loop_reference(n: int, nq: int, d: int, normalize: bool) -> None:
    q, k, bank = _rand(n, d, seed=n) * 2, _rand(n, d, seed=n + 1), _rand(nq, d, seed=n + 2) * 0.5
    targets = torch.rand(n, nq, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    targets[targets < 0.5] = 0.0  # sparse, like same-group / same-slot masks
    positive = torch.rand(n, generator=torch.Generator().manual_seed(n + 3), dtype=torch.float64) + 0.1
    for pos in (None, positive):
        got = soft_contrastive_loss(q, k, bank, targets, pos, temperature=0.5, normalize_targets=normalize)
        assert got.item() == pytest.approx(ref_soft(q, k, bank, targets, pos, 0.5, normalize), abs=TOL)


@pytest.mark.parametrize("normalize", [True, False])
def test_soft_loss_zero_target_rows_contribute_zero(normalize: bool) -> None:
    n, nq, d = 4, 5, 6
    q, k, bank = _rand(n, d, seed=20), _rand(n, d, seed=21), _rand(nq, d, seed=22)
    targets = torch.rand(n, nq, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    positive = torch.ones(n, dtype=torch.float64)
    targets[1] = 0.0
    positive[1] = 0.0  # row 1 has no target mass at all
    got = soft_contrastive_loss(q, k, bank, targets, positive, normalize_targets=normalize)
    assert got.item() == pytest.approx(ref_soft(q, k, bank, targets, positive, 0.5, normalize), abs=TOL)
    # Row 1 adds nothing but still counts in the mean over N.
    keep = torch.tensor([0, 2, 3])
    rest = soft_contrastive_loss(q[keep], k[keep], bank, targets[keep], positive[keep], normalize_targets=normalize)
    assert got.item() == pytest.approx(rest.item() * 3 / 4, abs=TOL)
    assert torch.isfinite(got)


def test_soft_loss_all_zero_targets_is_zero_not_nan() -> None:
    q, k, bank = _rand(3, 4, seed=1), _rand(3, 4, seed=2), _rand(2, 4, seed=3)
    got = soft_contrastive_loss(q, k, bank, torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    assert got.item() == 0.0


def test_soft_loss_with_one_hot_targets_is_plain_infonce() -> None:
    # y = [1, 0, ..., 0] is MoCo's InfoNCE: -log softmax at the positive column.
    q, k, bank = _rand(6, 8, seed=30), _rand(6, 8, seed=31), _rand(10, 8, seed=32)
    got = soft_contrastive_loss(q, k, bank, torch.zeros(6, 10, dtype=torch.float64), temperature=0.2)
    qn, kn, bn = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(bank, dim=1)
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ bn.T], 1) / 0.2
    assert got.item() == pytest.approx(F.cross_entropy(logits, torch.zeros(6, dtype=torch.long)).item(), abs=TOL)


def test_soft_loss_normalisation_is_scale_invariant_and_unnormalised_is_not() -> None:
    q, k, bank = _rand(4, 5, seed=40), _rand(4, 5, seed=41), _rand(6, 5, seed=42)
    targets = torch.rand(4, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    a = soft_contrastive_loss(q, k, bank, targets)
    b = soft_contrastive_loss(q, k, bank, 3 * targets, torch.full((4,), 3.0, dtype=torch.float64))
    assert a.item() == pytest.approx(b.item(), abs=TOL)
    c = soft_contrastive_loss(q, k, bank, targets, normalize_targets=False)
    three = torch.full((4,), 3.0, dtype=torch.float64)
    d = soft_contrastive_loss(q, k, bank, 3 * targets, three, normalize_targets=False)
    assert d.item() == pytest.approx(3 * c.item(), abs=TOL)


def test_soft_loss_bank_valid_and_row_weights() -> None:
    n, nq, d = 5, 8, 6
    q, k = _rand(n, d, seed=50), _rand(n, d, seed=51)
    bank = _rand(nq, d, seed=52)
    bank[5:] = 0.0  # never-written queue entries
    targets = torch.rand(n, nq, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    valid = torch.arange(nq) < 5
    weights = torch.tensor([1.0, 0.0, 2.5, 0.3, 1.0], dtype=torch.float64)
    got = soft_contrastive_loss(q, k, bank, targets, bank_valid=valid, row_weights=weights)
    assert got.item() == pytest.approx(ref_soft(q, k, bank, targets, None, 0.5, True, valid, weights), abs=TOL)
    # Masking equals dropping the invalid columns.
    dropped = soft_contrastive_loss(q, k, bank[:5], targets[:, :5], row_weights=weights)
    assert got.item() == pytest.approx(dropped.item(), abs=TOL)


@pytest.mark.parametrize("with_valid", [False, True])
def test_soft_loss_factored_targets_equal_the_full_matrix(with_valid: bool) -> None:
    # target_rows: N queries share U distinct target rows; loss and gradient equal the (N, Q) form
    n, nq, d, u = 12, 9, 6, 4
    q = _rand(n, d, seed=80).requires_grad_()
    k, bank = _rand(n, d, seed=81), _rand(nq, d, seed=82)
    rows = torch.rand(u, nq, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    rows[rows < 0.4] = 0.0
    rows[2] = 0.0  # a kind of query with no bank target at all
    kind = torch.randint(0, u, (n,), generator=torch.Generator().manual_seed(9))
    valid = (torch.arange(nq) % 3 != 1) if with_valid else None
    weights = torch.rand(n, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    full = soft_contrastive_loss(q, k, bank, rows[kind], bank_valid=valid, row_weights=weights)
    (grad_full,) = torch.autograd.grad(full, q)
    factored = soft_contrastive_loss(q, k, bank, rows, bank_valid=valid, row_weights=weights, target_rows=kind)
    (grad_factored,) = torch.autograd.grad(factored, q)
    assert factored.item() == pytest.approx(full.item(), abs=TOL)
    assert factored.item() == pytest.approx(ref_soft(q.detach(), k, bank, rows[kind], None, 0.5, True, valid, weights), abs=TOL)
    torch.testing.assert_close(grad_factored, grad_full, atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="target_rows"):
        soft_contrastive_loss(q, k, bank, rows, target_rows=kind[:5])


def test_soft_loss_empty_bank_and_gradients() -> None:
    q = _rand(3, 4, seed=60).requires_grad_()
    k = _rand(3, 4, seed=61)
    bank = _rand(5, 4, seed=62)
    assert soft_contrastive_loss(q, k, bank[:0], torch.zeros(3, 0, dtype=torch.float64)).item() == pytest.approx(0.0)
    targets = torch.rand(3, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    soft_contrastive_loss(q, k, bank, targets).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_soft_loss_scales_to_moco_patch_level_size() -> None:
    # 7,560 patch rows x 2,016 prototypes per step at top_k = 30 (spec 5.3); must run without Python loops.
    g = torch.Generator().manual_seed(0)
    n, nq, d = 7_560, 2_016, 16
    q, k, bank = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), torch.randn(nq, d, generator=g)
    targets = (torch.rand(n, nq, generator=g) < 0.1).float() * 0.2
    loss = soft_contrastive_loss(q.requires_grad_(), k, bank, targets)
    loss.backward()
    assert torch.isfinite(loss) and q.grad is not None and torch.isfinite(q.grad).all()


# ----------------------------------------------------------------------------------------------------------
# Soft targets
# ----------------------------------------------------------------------------------------------------------


def test_image_queue_targets_by_hand() -> None:
    query_groups = torch.tensor([0, 1, -1])
    queue_groups = torch.tensor([0, 0, 0, 1, -1, 0])
    age = torch.tensor([0, 1, 2, 1, 0, 0])
    valid = torch.tensor([True, True, True, True, True, False])
    got = image_queue_targets(query_groups, queue_groups, age, valid, decay=0.2, dtype=torch.float64)
    expected = torch.tensor(
        [
            [1.0, 0.2, 0.04, 0.0, 0.0, 0.0],  # group 0: ages 0, 1, 2; entry 5 invalid
            [0.0, 0.0, 0.0, 0.2, 0.0, 0.0],  # group 1: only entry 3
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # unknown group matches nothing, not even another -1
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert image_queue_targets(query_groups, queue_groups, age, valid).dtype == torch.get_default_dtype()


def test_image_queue_targets_clamp_negative_age() -> None:
    got = image_queue_targets(torch.tensor([2]), torch.tensor([2]), torch.tensor([-3]), torch.tensor([True]))
    assert got.item() == pytest.approx(1.0)


def test_prototype_queue_targets_by_hand() -> None:
    slots = torch.tensor([0, 2, 255, -1])
    groups = torch.tensor([1, -1, 1, 1])
    proto_slots = torch.tensor([0, 0, 0, 2, 255, 0, -1])
    proto_groups = torch.tensor([1, 3, 1, -1, 1, 1, 1])
    age = torch.tensor([0, 1, 2, 1, 0, 0, 0])
    valid = torch.tensor([True, True, True, True, True, False, True])
    got = prototype_queue_targets(
        slots, groups, proto_slots, proto_groups, age, valid, group_decay=0.5, recency_decay=0.2, dtype=torch.float64
    )
    expected = torch.zeros(4, 7, dtype=torch.float64)
    expected[0, 0] = 1.0 + 1.0  # same slot, same group, age 0
    expected[0, 1] = 0.2  # same slot, other group: recency only
    expected[0, 2] = 0.25 + 0.04  # same slot, same group, age 2
    expected[1, 3] = 0.2  # unknown group gets no group term even against proto group -1
    expected[2, 4] = 1.0 + 1.0  # slot 255 is just another id
    # column 5 invalid, column 6 has slot -1 (none): zero everywhere, even for a patch with slot -1 (row 3)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# Prototypes and patch weights
# ----------------------------------------------------------------------------------------------------------


def test_class_prototypes_by_hand() -> None:
    # B=1, C=2, K=2, D=2
    keys = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 4.0]]]], dtype=torch.float64)
    weights = torch.tensor([[3.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    got = class_prototypes(keys, weights)
    # class 0: 0.75*(1,0) + 0.25*(0,1) = (0.75, 0.25) -> normalised; class 1: uniform mean (1, 2) -> normalised
    expected = torch.tensor([[[0.75, 0.25], [1.0, 2.0]]], dtype=torch.float64)
    expected = expected / expected.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_class_prototypes_share_weights_across_images_and_keep_gradient() -> None:
    keys = _rand(3, 4, 5, 8, seed=70).requires_grad_()
    weights = torch.rand(4, 5, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got = class_prototypes(keys, weights)
    assert got.shape == (3, 4, 8)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(3, 4, dtype=torch.float64))
    for b in range(3):
        for c in range(4):
            mean = sum(weights[c, j] * keys[b, c, j] for j in range(5)) / weights[c].sum()
            torch.testing.assert_close(got[b, c], mean / mean.norm(), atol=1e-12, rtol=0)
    got.sum().backward()
    assert keys.grad is not None


def test_patch_weights_by_hand() -> None:
    values = torch.tensor(
        [
            [255.0, 255.0, 255.0, 255.0],  # >= K genuine cells: all ones
            [255.0, 255.0, 0.0, 0.0],  # 2 genuine of K=4: 2, 2, 0, 0
            [0.0, 0.0, 0.0, 0.0],  # class absent: stays 0
            [127.5, 255.0, 0.0, 127.5],  # fractional boundary cells
        ],
        dtype=torch.float64,
    )
    expected = torch.tensor(
        [[1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 0.0, 1.0]], dtype=torch.float64
    )
    torch.testing.assert_close(patch_weights(values), expected, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# DDP: gather and the distributed variants, on a real 2-rank gloo group
# ----------------------------------------------------------------------------------------------------------


def test_gather_is_identity_without_process_group() -> None:
    x = torch.randn(3, 2)
    assert gather(x) is x


def _ddp_worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    # Forked from a parent that may have used intra-op threads: stay single-threaded (as DataLoader workers do).
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m, d, t = 6, 5, 0.5
        # Every rank builds the whole batch from one seed and keeps its own block.
        p0_all, p1_all = _rand(world, m, d, seed=1), _rand(world, m, d, seed=2)
        slots_all = torch.randint(0, 3, (world, m), generator=torch.Generator().manual_seed(3))
        p0 = p0_all[rank].clone().requires_grad_()
        p1 = p1_all[rank].clone().requires_grad_()

        loss = class_masked_nt_xent(p0, p1, slots_all[rank], temperature=t, gather_distributed=True)
        all0, all1, all_slots = p0_all.flatten(0, 1), p1_all.flatten(0, 1), slots_all.flatten()
        expected = ref_class_masked(p0.detach(), p1.detach(), slots_all[rank], t, all0, all1, all_slots)
        assert abs(loss.item() - expected) < TOL, (loss.item(), expected)
        # The gradient a rank receives is that of the sum of all ranks' losses (GatherLayer all-reduce).
        loss.backward()
        full0, full1 = p0_all.clone().requires_grad_(), p1_all.clone().requires_grad_()
        total = torch.stack([_ref_class_masked_autograd(full0, full1, slots_all, r, t) for r in range(world)]).sum()
        total.backward()
        torch.testing.assert_close(p0.grad, full0.grad[rank], atol=1e-9, rtol=0)
        torch.testing.assert_close(p1.grad, full1.grad[rank], atol=1e-9, rtol=0)

        z0, z1 = p0_all[rank, :3], p1_all[rank, :3]
        img = nt_xent(z0, z1, temperature=t, gather_distributed=True)
        img_expected = ref_nt_xent(z0, z1, t, p0_all[:, :3].flatten(0, 1), p1_all[:, :3].flatten(0, 1), offset=3 * rank)
        assert abs(img.item() - img_expected) < TOL, (img.item(), img_expected)
        assert gather(torch.tensor([rank])).tolist() == list(range(world))
        if rank == 0:
            with open(result_file, "w") as fh:
                fh.write("ok")
    finally:
        dist.destroy_process_group()


def _ref_class_masked_autograd(
    p0_all: torch.Tensor, p1_all: torch.Tensor, slots_all: torch.Tensor, rank: int, t: float
) -> torch.Tensor:
    """Rank `rank`'s distributed loss rebuilt in one process, differentiable w.r.t. every rank's rows."""
    p0_all_n, p1_all_n = F.normalize(p0_all, dim=-1), F.normalize(p1_all, dim=-1)
    anchors = torch.cat([p0_all_n[rank], p1_all_n[rank]])
    positives = torch.cat([p1_all_n[rank], p0_all_n[rank]])
    cands = torch.cat([p0_all_n.flatten(0, 1), p1_all_n.flatten(0, 1)])
    cand_slots = torch.cat([slots_all.flatten(), slots_all.flatten()])
    anchor_slots = torch.cat([slots_all[rank], slots_all[rank]])
    losses = []
    for r in range(anchors.shape[0]):
        pos = (anchors[r] * positives[r]).sum() / t
        neg = cands[cand_slots != anchor_slots[r]] @ anchors[r] / t
        losses.append(torch.logsumexp(torch.cat([pos[None], neg]), 0) - pos)
    return torch.stack(losses).mean()


def test_distributed_variants_on_two_gloo_ranks(tmp_path: Path) -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    result = tmp_path / "result.txt"
    # fork, not spawn, on Linux: a spawned child re-imports torch and lightly (~4 s each on a small box).
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    mp.start_processes(
        _ddp_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True, start_method=method
    )
    assert result.read_text() == "ok"
