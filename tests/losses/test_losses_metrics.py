"""Segmentation losses and metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pscl.losses.ce_dice import segmentation_loss, soft_dice_loss, weighted_cross_entropy
from pscl.metrics import SegmentationMetrics


def test_weighted_ce_divides_by_pixels_not_by_weights() -> None:
    logits = torch.zeros(1, 2, 1, 2)  # uniform: each pixel's CE = log 2
    target = torch.tensor([[[0, 1]]])
    weights = torch.tensor([1.0, 10.0])
    value = weighted_cross_entropy(logits, target, weights)
    assert value.item() == pytest.approx((1 + 10) * math.log(2) / 2)


def test_ce_ignores_255() -> None:
    logits = torch.tensor([[[[5.0, 0.0]], [[0.0, 9.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 255]]])
    expected = -torch.log_softmax(torch.tensor([5.0, 0.0]), 0)[0]
    assert weighted_cross_entropy(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_soft_dice_by_hand() -> None:
    # two pixels, two classes; class 1 probabilities 0.5 and ~1
    logits = torch.tensor([[[[0.0, 20.0]], [[0.0, 40.0]]]])  # softmax class1: 0.5, ~1.0
    target = torch.tensor([[[1, 0]]])
    p1 = torch.softmax(logits, 1)[0, 1, 0]
    inter, total = float(p1[0]), float(p1.sum() + 1)
    expected = 1 - 2 * (inter + 1e-4) / (total + 1e-4)
    assert soft_dice_loss(logits, target, classes=[1]).item() == pytest.approx(expected, rel=1e-5)


def test_perfect_prediction_has_near_zero_dice_loss() -> None:
    target = torch.randint(0, 3, (2, 6, 6))
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(logits, target, classes=[1, 2]).item() < 1e-4
    terms = segmentation_loss(logits, target, None, [1, 2])
    assert terms["loss"].item() < 1e-4


def test_metrics_by_hand() -> None:
    metrics = SegmentationMetrics(["m", "b", "c"])
    # image 1: target [0,1,2,2], pred [0,1,1,2]; image 2: target [0,0,0,255], pred [0,1,0,2]
    metrics.update(torch.tensor([[[0, 1], [1, 2]]]), torch.tensor([[[0, 1], [2, 2]]]))
    metrics.update(torch.tensor([[[0, 1], [0, 2]]]), torch.tensor([[[0, 0], [0, 255]]]))
    out = metrics.compute()
    # pooled: class b TP 1, FP 2, FN 0 -> 2/4; class c TP 1, FP 0, FN 1 -> 2/3
    assert out["dice_b"] == pytest.approx(0.5)
    assert out["dice_c"] == pytest.approx(2 / 3)
    assert out["dice"] == pytest.approx((0.5 + 2 / 3) / 2)  # background excluded
    assert out["dice_m"] == pytest.approx(6 / 7)
    assert out["acc"] == pytest.approx((3 / 4 + 2 / 3) / 2)  # per image, then mean; 255 ignored
    assert out["iou_b"] == pytest.approx(1 / 3)
    assert out["miou"] == pytest.approx((3 / 4 + 1 / 3 + 1 / 2) / 3)
    metrics.reset()
    metrics.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    assert metrics.compute()["acc"] == pytest.approx(1.0)


def test_dice_from_counts_is_torchmetrics_f1_bit_for_bit() -> None:
    """pscl.dice computes every Dice pscl reports; on torch counts it must give torchmetrics' F1
    exactly (the runs' metrics.json held its values), also where float32 rounds counts above 2**24."""
    import numpy as np
    from torchmetrics.classification import MulticlassF1Score

    from pscl.dice import class_dice, dice_counts, foreground_dice

    # (tp, fp, fn) per class; the last two round differently when summed in another order or in float64
    counts = torch.tensor([[0, 0, 0], [3, 1, 2], [120737318, 82447848, 15688436], [130806732, 45226852, 116663476]])
    tp, fp, fn = counts.T
    reference = MulticlassF1Score(4, average="none", multidim_average="global")
    reference.tp, reference.fp, reference.fn, reference.tn = tp, fp, fn, torch.zeros_like(tp)
    reference._update_count = 1
    expected = reference.compute()
    got = class_dice(tp, fp, fn)
    assert got.dtype == torch.float32 and math.isnan(got[0])  # a class in neither: NaN here, 0 in torchmetrics
    assert torch.equal(got[1:], expected[1:]) and expected[0] == 0
    assert foreground_dice(got) == float(got[1:].mean())
    # NumPy counts: float64, the same pixels counted, absent classes left out of the mean
    prediction = np.array([[0, 1, 1, 2], [2, 2, 0, 3]])
    truth = np.array([[0, 1, 2, 2], [255, 2, 0, 0]])
    tp, fp, fn = dice_counts(prediction, truth, 5)
    assert tp.tolist() == [2, 1, 2, 0, 0] and fp.tolist() == [0, 1, 0, 1, 0] and fn.tolist() == [1, 0, 1, 0, 0]
    per_class = class_dice(tp, fp, fn)
    assert per_class.dtype == np.float64 and math.isnan(per_class[4])
    assert foreground_dice(per_class) == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)
    assert math.isnan(foreground_dice(class_dice(*dice_counts(np.zeros((2, 2)), np.zeros((2, 2)), 3))))
