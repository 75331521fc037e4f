"""The contrastive (InfoNCE-family) losses of PSCL (spec section 5) as pure functions of tensors.

Nothing here holds state: queues live in :mod:`pscl.contrastive.queues`, and the Lightning modules decide
which tensors to pass. Notation: ``t`` is the temperature, ``D`` the feature dimension, ``N``/``M`` rows
(images or sampled patches), ``Q``/``P`` queue entries (images or class prototypes).

Deliberate departures from the authors' code (spec section 11) are marked "fix" in the docstrings:
soft targets can be normalised per row (11.7), prototypes are L2-normalised (11.6), and unwritten queue
entries can be excluded from the softmax (11.6, via ``bank_valid``).

Precision: the losses compute in float32 also under autocast (``trainer.precision=bf16-mixed``):
half-precision inputs are lifted to float32 and autocast is switched off inside them
(:func:`pscl.contrastive.precision.float32_under_autocast`), so their products and log-sum-exps
are not recast to bf16. In an fp32 run neither step does anything.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.utils import dist as lightly_dist
from torch import Tensor

from pscl.contrastive.precision import float32_under_autocast

__all__ = [
    "class_masked_nt_xent",
    "class_prototypes",
    "gather",
    "image_queue_targets",
    "nt_xent",
    "patch_weights",
    "prototype_queue_targets",
    "queue_info_nce",
    "soft_contrastive_loss",
]


def _distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return torch_dist.is_available() and torch_dist.is_initialized() and torch_dist.get_world_size() > 1


def _working_dtype(x: Tensor) -> Tensor:
    """Half-precision inputs (AMP) are lifted to float32: logits / 0.5 and logsumexp over ~2,000 columns
    lose too much in bf16. float32/float64 pass through unchanged. (The functions that use it also
    switch autocast off, which would otherwise recast their products to bf16.)"""
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def gather(x: Tensor) -> Tensor:
    """All-gather ``x`` (n, ...) along dim 0 over the DDP ranks -> (world_size * n, ...), rank-major.

    The local block keeps its autograd graph (lightly's ``GatherLayer``, whose backward all-reduces the
    gradients so that every rank's contribution to the loss reaches the rank that owns the rows).
    Tensors without gradient (e.g. long slot ids) use a plain ``all_gather``. Every rank must pass the same
    shape. Identity when ``torch.distributed`` is not initialised or has a single rank.
    """
    if not _distributed():
        return x
    if x.requires_grad:
        return torch.cat(lightly_dist.gather(x.contiguous()), dim=0)
    parts = [torch.empty_like(x) for _ in range(torch_dist.get_world_size())]
    torch_dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@float32_under_autocast
def nt_xent(z0: Tensor, z1: Tensor, temperature: float = 0.5, gather_distributed: bool = False) -> Tensor:
    """Image-level SimCLR loss (spec 5.1) -> scalar.

    ``z0``, ``z1`` (N, D): the two views of N images (L2-normalised here). Each of the 2N anchors has its
    other view as positive and the remaining 2N - 2 vectors as negatives; the loss is the mean over the 2N
    anchors of -log softmax at the positive with logits = cosine / temperature. With ``gather_distributed``
    the negatives come from every rank while the anchors stay local.

    Wraps ``lightly.loss.NTXentLoss`` (memory bank off), which computes exactly this: its logits are
    [z0 z1^T | z0 z0^T without the diagonal] for view-0 anchors and the mirror image for view-1 anchors,
    cross-entropy averaged over both halves, so it is symmetric in (z0, z1). With N = 1 there are no
    negatives and the loss is 0.
    """
    if z0.shape != z1.shape or z0.dim() != 2:
        raise ValueError(f"nt_xent expects two (N, D) tensors of equal shape, got {tuple(z0.shape)}, {tuple(z1.shape)}")
    # The module is built per call: it is cheap (no bank) and keeps this function free of state.
    criterion = NTXentLoss(temperature=temperature, memory_bank_size=0, gather_distributed=gather_distributed)
    return criterion(_working_dtype(z0), _working_dtype(z1))


@float32_under_autocast
def class_masked_nt_xent(
    p0: Tensor,
    p1: Tensor,
    slots: Tensor,
    temperature: float = 0.5,
    gather_distributed: bool = False,
) -> Tensor:
    """PSCL-SimCLR patch-level loss at one scale (spec 5.2) -> scalar.

    ``p0``, ``p1`` (M, D): view-1 / view-2 features of the same M sampled patches (L2-normalised here);
    ``slots`` (M,) long: class slot of each patch (any integer ids, e.g. 0..3 or 255).

    The 2M anchors are the rows of [p0; p1]. Row r's positive is the same patch in the other view; its
    negatives are all rows (both views, all images) whose slot differs from r's. Rows sharing r's slot,
    r itself included, are neither positive nor negative. Per row:
    ``-log(exp(pos/t) / (exp(pos/t) + sum_neg exp(neg/t)))``; the loss is the mean over the 2M rows.

    A row without any negative (all patches in one slot) contributes exactly 0 (= -log 1) and no gradient;
    it still counts in the mean, so the loss scale does not jump when a slot happens to be alone.

    With ``gather_distributed`` the negative candidates and their slots are gathered from all ranks
    (the local rows are among them but share the anchor's slot where it matters, so no rank offset is
    needed); the anchors and positives stay local. Every rank must pass the same M.

    Memory: one (2M, 2M * world_size) similarity matrix, meant for the SimCLR setting (M ~ 600-2,300).
    """
    if p0.shape != p1.shape or p0.dim() != 2:
        raise ValueError(f"p0/p1 must be (M, D) of equal shape, got {tuple(p0.shape)} and {tuple(p1.shape)}")
    if slots.shape != (p0.shape[0],):
        raise ValueError(f"slots must be ({p0.shape[0]},), got {tuple(slots.shape)}")
    p0 = F.normalize(_working_dtype(p0), dim=1)
    p1 = F.normalize(_working_dtype(p1), dim=1)
    anchors = torch.cat([p0, p1], dim=0)  # (2M, D)
    anchor_slots = torch.cat([slots, slots], dim=0)  # (2M,)

    # Positive of row r is row r +- M: the same patch seen in the other view.
    positive = (p0 * p1).sum(dim=1).repeat(2) / temperature  # (2M,)

    if gather_distributed:
        candidates = torch.cat([gather(p0), gather(p1)], dim=0)  # (2M * W, D), view-major per rank block
        candidate_slots = torch.cat([gather(slots), gather(slots)], dim=0)
    else:
        candidates, candidate_slots = anchors, anchor_slots
    logits = anchors @ candidates.T / temperature  # (2M, 2M * W)
    negative = anchor_slots[:, None] != candidate_slots[None, :]  # self and positive share the slot -> excluded
    logits = logits.masked_fill(~negative, float("-inf"))

    # The positive column is finite, so the logsumexp is finite even when a row has no negative.
    denominator = torch.logsumexp(torch.cat([positive[:, None], logits], dim=1), dim=1)  # (2M,)
    return (denominator - positive).mean()


@float32_under_autocast
def soft_contrastive_loss(
    q: Tensor,
    k: Tensor,
    bank: Tensor,
    bank_targets: Tensor,
    positive_targets: Tensor | None = None,
    temperature: float = 0.5,
    normalize_targets: bool = True,
    bank_valid: Tensor | None = None,
    row_weights: Tensor | None = None,
    target_rows: Tensor | None = None,
) -> Tensor:
    """PSCL-MoCo soft-target contrastive loss (spec 5.3), used at image and patch level -> scalar.

    Args:
        q: (N, D) queries; k: (N, D) their positive keys; bank: (Q, D) queue entries. All three are
            L2-normalised here (normalising twice is harmless).
        bank_targets: (N, Q) >= 0 soft target weight of each queue entry for each query; or, with
            ``target_rows``, (U, Q) distinct target rows of which query n uses row ``target_rows[n]``.
        positive_targets: (N,) >= 0 weight of the positive key; default 1 for every row.
        temperature: logits are cosines divided by it.
        normalize_targets: divide each target row y_n = [positive_targets_n, bank_targets_n] by its sum,
            making it a probability distribution. Fix (spec 11.7): the authors feed unnormalised targets
            to the cross-entropy, so a query with many same-group recent entries gets a larger loss and
            gradient. Note that normalising cancels any factor common to a row (e.g. the patch weight
            w_p of spec 5.3); pass such a factor as ``row_weights`` to keep its effect.
        bank_valid: optional (Q,) bool; entries where False are removed from the softmax, so never-
            written queue slots act neither as positives nor as negatives (fix, spec 11.6). Their
            targets are ignored.
        row_weights: optional (N,) >= 0 multiplier of each row's loss, applied after normalisation.
        target_rows: optional (N,) long, see ``bank_targets``. Patch targets depend on a query only
            through its (class slot, group), so the PSCL-MoCo patch loss passes the few distinct rows
            instead of an (N, Q) matrix.

    Returns:
        ``mean_n( row_weights_n * -sum_j y_nj * log softmax_j(logits_n) )`` with
        ``logits = [q.k, q.bank^T] / t`` of shape (N, 1 + Q). Rows whose target sum is 0 contribute 0 but
        still count in the mean over N.

    Cost: the (N, Q) logits are the only large tensor built (one product, one log-sum-exp); the
    target-weighted logit sum is ``q . (y @ bank)``, an (N, D) product, and invalid entries are dropped
    from the bank rather than masked in the logits.
    """
    if q.dim() != 2 or q.shape != k.shape:
        raise ValueError(f"q and k must be (N, D) of equal shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    n, d = q.shape
    if bank.dim() != 2 or bank.shape[1] != d:
        raise ValueError(f"bank must be (Q, {d}), got {tuple(bank.shape)}")
    if target_rows is None:
        if bank_targets.shape != (n, bank.shape[0]):
            raise ValueError(f"bank_targets must be ({n}, {bank.shape[0]}), got {tuple(bank_targets.shape)}")
    elif target_rows.shape != (n,) or bank_targets.dim() != 2 or bank_targets.shape[1] != bank.shape[0]:
        raise ValueError(
            f"with target_rows ({n},) bank_targets must be (U, {bank.shape[0]}), got target_rows "
            f"{tuple(target_rows.shape)} and bank_targets {tuple(bank_targets.shape)}"
        )

    q = F.normalize(_working_dtype(q), dim=1)
    k = F.normalize(_working_dtype(k), dim=1)
    bank = F.normalize(_working_dtype(bank).to(q), dim=1)
    bank_targets = bank_targets.to(q)
    if bank_valid is not None:  # dropping the columns is the same softmax as -inf logits, without an (N, Q) pass
        keep = bank_valid.to(device=q.device, dtype=torch.bool)
        bank, bank_targets = bank[keep], bank_targets[:, keep]
    if positive_targets is None:
        positive_targets = torch.ones(n, dtype=q.dtype, device=q.device)
    else:
        positive_targets = positive_targets.to(q)

    scaled_q = q / temperature
    positive_logit = (scaled_q * k).sum(dim=1)  # (N,)
    bank_logits = scaled_q @ bank.T  # (N, Q')
    log_partition = torch.logaddexp(positive_logit, torch.logsumexp(bank_logits, dim=1))  # (N,)

    # -sum_j y_j log softmax_j = mass * logZ - sum_j y_j logit_j, and sum_j y_j (q . b_j) = q . (y @ bank).
    bank_mass = bank_targets.sum(dim=1)
    target_sum = bank_targets @ bank  # (N or U, D)
    if target_rows is not None:
        bank_mass, target_sum = bank_mass[target_rows], target_sum[target_rows]
    target_mass = positive_targets + bank_mass  # (N,)
    weighted_bank_logit = (scaled_q * target_sum).sum(dim=1)  # (N,)
    row_loss = target_mass * log_partition - positive_targets * positive_logit - weighted_bank_logit

    if normalize_targets:
        # Zero-mass rows would divide 0 by 0; their loss is 0 by definition.
        safe_mass = torch.where(target_mass > 0, target_mass, torch.ones_like(target_mass))
        row_loss = torch.where(target_mass > 0, row_loss / safe_mass, torch.zeros_like(row_loss))
    if row_weights is not None:
        row_loss = row_loss * row_weights.to(row_loss)
    return row_loss.mean()


@float32_under_autocast
def queue_info_nce(q: Tensor, k: Tensor, bank: Tensor, temperature: float = 0.2,
                   bank_valid: Tensor | None = None) -> Tensor:
    """MoCo's InfoNCE: each query's positive is its own key, the negatives are the queue -> scalar.

    ``q``, ``k`` (N, D), ``bank`` (Q, D), all L2-normalised; ``bank_valid`` (Q,) bool removes
    never-written entries. ``mean_n -log softmax([q_n.k_n, q_n.bank^T] / t)[0]``: the soft-target
    loss with all the target weight on the positive key.
    """
    if bank.dim() != 2:
        raise ValueError(f"bank must be (Q, D), got {tuple(bank.shape)}")
    no_bank_targets = q.new_zeros(q.shape[0], bank.shape[0])
    return soft_contrastive_loss(q, k, bank, no_bank_targets, temperature=temperature, bank_valid=bank_valid)


def image_queue_targets(
    query_groups: Tensor,
    queue_groups: Tensor,
    queue_age: Tensor,
    valid: Tensor,
    decay: float = 0.2,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Image-level soft targets (spec 5.3): (N,) x (Q,) -> (N, Q).

    ``decay ** age`` where the queue entry is valid and belongs to the query's holding-time group, else 0.
    Group -1 means unknown and never matches (not even another -1). Negative ages (clock moved backwards,
    e.g. a mismatched resume) are clamped to 0 so a weight can never exceed 1. ``dtype`` defaults to
    ``torch.get_default_dtype()``.
    """
    dtype = dtype or torch.get_default_dtype()
    same_group = (query_groups[:, None] == queue_groups[None, :]) & (query_groups[:, None] != -1)  # (N, Q)
    weight = _decay_power(decay, queue_age, dtype) * valid.to(dtype)  # (Q,)
    return same_group.to(dtype) * weight[None, :]


def prototype_queue_targets(
    slots: Tensor,
    groups: Tensor,
    proto_slots: Tensor,
    proto_groups: Tensor,
    proto_age: Tensor,
    valid: Tensor,
    group_decay: float = 0.5,
    recency_decay: float = 0.2,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Patch-level soft targets (spec 5.3): (M,) patches x (P,) prototypes -> (M, P).

    ``[slot == proto_slot] * (group_decay**age * [group == proto_group, group != -1] + recency_decay**age)``,
    zero where the prototype is not valid. Slot -1 ("none") never matches, like group -1. The per-patch
    weight w_p of the spec is not included here (see ``soft_contrastive_loss(row_weights=...)``).
    Negative ages are clamped to 0.
    """
    dtype = dtype or torch.get_default_dtype()
    same_slot = (slots[:, None] == proto_slots[None, :]) & (slots[:, None] != -1)  # (M, P)
    same_group = (groups[:, None] == proto_groups[None, :]) & (groups[:, None] != -1)  # (M, P)
    group_term = same_group.to(dtype) * _decay_power(group_decay, proto_age, dtype)[None, :]
    recency_term = _decay_power(recency_decay, proto_age, dtype)[None, :]
    return same_slot.to(dtype) * (group_term + recency_term) * valid.to(dtype)[None, :]


def _decay_power(decay: float, age: Tensor, dtype: torch.dtype) -> Tensor:
    """decay ** max(age, 0) elementwise, computed in float64 so 0.2**a is exact to the last float32 bit."""
    exponent = age.clamp(min=0).to(torch.float64)
    return torch.pow(torch.tensor(decay, dtype=torch.float64, device=age.device), exponent).to(dtype)


@float32_under_autocast
def class_prototypes(key_patches: Tensor, weights: Tensor) -> Tensor:
    """Per-image class prototypes: key_patches (B, C, K, D), weights (C, K) >= 0 -> (B, C, D).

    For every image and class, the mean of its K key features weighted by ``weights / weights.sum(-1)``
    (uniform if a class's weights sum to 0), then L2-normalised. Fix (spec 11.6): the authors enqueue the
    unnormalised weighted sum, whose norm shrinks when the K features disagree. The same (C, K) weights
    (the annotated image's label scores) serve every image of the batch, as in the spec.
    """
    if key_patches.dim() != 4 or weights.shape != key_patches.shape[1:3]:
        raise ValueError(
            "expected key_patches (B, C, K, D) and weights (C, K), "
            f"got {tuple(key_patches.shape)} and {tuple(weights.shape)}"
        )
    key_patches = _working_dtype(key_patches)  # bf16 keys (autocast) give float32 prototypes
    weights = weights.to(key_patches)
    total = weights.sum(dim=1, keepdim=True)  # (C, 1)
    uniform = torch.full_like(weights, 1.0 / weights.shape[1])
    normalised = torch.where(total > 0, weights / torch.where(total > 0, total, torch.ones_like(total)), uniform)
    prototypes = torch.einsum("bckd,ck->bcd", key_patches, normalised)
    return F.normalize(prototypes, dim=-1)


def patch_weights(values: Tensor) -> Tensor:
    """Per-patch genuineness weight (spec 5.3): values (C, K) selected label scores -> (C, K).

    ``w = K * v / sum_k v`` per class row: 1 everywhere when all K selected cells are genuine (equal
    scores), about K/m for each of m < K genuine cells and about 0 for filler cells. A row summing to 0
    (class absent, no score at all) stays 0.
    """
    if values.dim() != 2:
        raise ValueError(f"values must be (C, K), got {tuple(values.shape)}")
    k = values.shape[1]
    total = values.sum(dim=1, keepdim=True)
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, k * values / safe_total, torch.zeros_like(values))
