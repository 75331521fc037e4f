"""Segmentation losses (pure functions of tensors): weighted cross-entropy and soft Dice.

The fine-tuning loss of the paper (spec §8.2) is ``0.5 * CE + 0.5 * Dice`` with CE class
weights [1, 1, 10, 10] and Dice over the foreground classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pscl.constants import IGNORE_INDEX


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                           class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Class-weighted CE averaged over the valid pixels (not over the weight sum).

    This is the paper's semantics (CE with probability targets: sum of weighted per-pixel losses
    divided by the number of pixels), which keeps rare-class weights from being normalised away.
    ``logits`` (B, C, H, W); ``target`` (B, H, W) long with 255 = ignore.
    """
    total = F.cross_entropy(logits, target, weight=class_weights, ignore_index=IGNORE_INDEX, reduction="sum")
    valid = (target != IGNORE_INDEX).sum().clamp_min(1)
    return total / valid


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, classes: Sequence[int],
                   smooth: float = 1e-4) -> torch.Tensor:
    """1 - soft Dice per image and class on softmax probabilities, averaged over images and ``classes``.

    Per image b and class c: ``1 - 2 * (sum(p * t) + smooth) / (sum(p + t) + smooth)`` over the
    valid pixels (spec §8.2).
    """
    valid = (target != IGNORE_INDEX).unsqueeze(1)  # (B, 1, H, W)
    probs = logits.float().softmax(dim=1) * valid
    onehot = F.one_hot(target.masked_fill(~valid.squeeze(1), 0), logits.shape[1]).permute(0, 3, 1, 2)
    onehot = onehot.to(probs.dtype) * valid
    index = torch.as_tensor(list(classes), device=logits.device, dtype=torch.long)
    p, t = probs.index_select(1, index), onehot.index_select(1, index)
    intersection = (p * t).sum(dim=(2, 3))
    total = (p + t).sum(dim=(2, 3))
    dice = 2 * (intersection + smooth) / (total + smooth)
    return (1 - dice).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None,
                      dice_classes: Sequence[int], ce_weight: float = 0.5,
                      dice_weight: float = 0.5) -> dict[str, torch.Tensor]:
    """``ce_weight * CE + dice_weight * Dice``; returns ``loss``, ``ce`` and ``dice`` terms."""
    ce = weighted_cross_entropy(logits, target, class_weights)
    dice = soft_dice_loss(logits, target, dice_classes) if dice_weight > 0 else ce.new_zeros(())
    return {"loss": ce_weight * ce + dice_weight * dice, "ce": ce, "dice": dice}


def class_weights_from_counts(counts: Sequence[int], power: float = 0.5) -> list[float]:
    """CE class weights from annotated pixel counts: ``(n_max / n_c) ** power`` (inverse square root).

    The most frequent class gets 1; a rarer class more (a class with 1/100 of the pixels gets 10
    at ``power=0.5``). A class without annotated pixels never appears as a CE target, so its
    weight does not matter; it gets the largest weight given to a present class.
    """
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts) or not any(counts):
        raise ValueError(f"pixel counts must be >= 0 and not all 0, got {counts}")
    top = max(counts)
    weights = [(top / c) ** power if c else None for c in counts]
    largest = max(w for w in weights if w is not None)
    return [round(w if w is not None else largest, 4) for w in weights]
