"""Segmentation losses and metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pscl.losses.segmentation import segmentation_loss, soft_dice_loss, weighted_cross_entropy
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
