"""Paired rounds and per-image Dice by group (pscl.reporting.breakdown), checked on hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pscl.reporting.breakdown import (
    ImageScore,
    RoundScore,
    group_markdown,
    group_rows,
    image_dice,
    paired_markdown,
    paired_rows,
    regime_order,
)


def test_paired_rows_compare_round_by_round() -> None:
    scores = [RoundScore("supervised", "1", 0, 0.50), RoundScore("supervised", "1", 1, 0.70),
              RoundScore("supervised", "1", 2, 0.60),
              RoundScore("pscl", "1", 0, 0.60), RoundScore("pscl", "1", 1, 0.65), RoundScore("pscl", "1", 3, 0.90),
              RoundScore("pscl", "5", 0, 0.80)]  # no baseline at 5 labels: not paired
    rows = paired_rows(scores, "supervised")
    assert [(r["method"], r["regime"]) for r in rows] == [("supervised", "1"), ("pscl", "1")]
    pscl = rows[1]
    # rounds 0 and 1 are paired (+0.10, -0.05); round 3 has no supervised run
    assert pscl["mean_difference"] == pytest.approx(0.025)
    assert (pscl["rounds_better"], pscl["rounds_paired"]) == (1, 2)
    assert pscl["dice_by_round"] == {0: 0.60, 1: 0.65, 3: 0.90}
    assert math.isnan(rows[0]["mean_difference"])
    table = paired_markdown(rows, "supervised")
    assert "| pscl | 1 | 0.600 | 0.650 | - | 0.900 | +0.025 | 1 / 2 |" in table
    assert "| supervised | 1 | 0.500 | 0.700 | 0.600 | - | - | - |" in table
    assert paired_markdown(paired_rows(scores, "byol"), "byol") == ""


def test_image_dice_by_hand() -> None:
    truth = np.array([[0, 1, 1, 2],
                      [0, 1, 255, 2]])
    pred = np.array([[0, 1, 0, 2],
                     [1, 1, 2, 0]])
    # class 1: pred {(0,1),(1,0),(1,1)}, truth {(0,1),(0,2),(1,1)} -> 2*2/(3+3); class 2: pred
    # {(0,3)} (the 255 pixel is ignored), truth {(0,3),(1,3)} -> 2*1/(1+2)
    assert image_dice(pred, truth, 3) == pytest.approx((4 / 6 + 2 / 3) / 2)
    # a class absent from both is left out of the mean; none present at all -> NaN
    assert image_dice(np.array([[0, 1]]), np.array([[0, 1]]), 4) == pytest.approx(1.0)
    assert math.isnan(image_dice(np.zeros((2, 2), int), np.zeros((2, 2), int), 3))
    with pytest.raises(ValueError, match="differ in size"):
        image_dice(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)


def _image(method: str, seed: int, image: str, group: str | None, annotated: tuple[str, ...], dice: float) -> ImageScore:
    return ImageScore(method, "1", seed, image, group, annotated, dice)


def test_group_rows_split_same_and_other_groups() -> None:
    scores = [_image("supervised", 0, "a", "0d", ("0d",), 0.9), _image("supervised", 0, "b", "180d", ("0d",), 0.7),
              _image("supervised", 1, "a", "0d", ("180d",), 0.6), _image("supervised", 1, "b", "180d", ("180d",), 0.8),
              _image("moco", 0, "a", "0d", ("0d",), 0.95), _image("moco", 0, "b", "180d", ("0d",), 0.3),
              _image("moco", 0, "c", None, ("0d",), 0.1)]  # no group: left out
    rows = {r["method"]: r for r in group_rows(scores)}
    assert rows["supervised"]["same_group"] == pytest.approx(0.85) and rows["supervised"]["same_count"] == 2
    assert rows["supervised"]["other_group"] == pytest.approx(0.65)
    assert rows["moco"]["same_group"] == pytest.approx(0.95) and rows["moco"]["other_group"] == pytest.approx(0.3)
    assert rows["moco"]["other_count"] == 1
    assert "| moco | 1 | 0.950 (1) | 0.300 (1) |" in group_markdown(list(rows.values()))
    # a single group (or none) gives nothing to split
    assert group_rows([_image("moco", 0, "a", "0d", ("0d",), 0.9)]) == []
    assert group_markdown([]) == ""


def test_regime_order_is_numeric_with_all_last() -> None:
    assert sorted(["all", "10", "5", "1"], key=regime_order) == ["1", "5", "10", "all"]
