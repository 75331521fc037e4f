"""benchmarks/nasa_different_test.py: the pooled Dice, the setting read from the overrides, and
the refusal of a folder without a different_test list."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import benchmark_modules


@pytest.fixture(scope="module")
def different():
    with benchmark_modules("nasa_different_test") as modules:
        yield modules[0]


def test_pooled_dice_pools_pixels_over_images_then_averages_classes(different) -> None:
    truth_a, truth_b = np.array([[1, 1, 2, 0]]), np.array([[1, 0, 0, 0]])
    pred_a, pred_b = np.array([[1, 0, 2, 2]]), np.array([[1, 1, 0, 0]])
    # class 1: overlap 2 (a: 1, b: 1), sizes 3 + 3 -> 4/6; class 2: overlap 1, sizes 1 + 2 -> 2/3
    assert different.pooled_dice([truth_a, truth_b], [pred_a, pred_b]) == pytest.approx((4 / 6 + 2 / 3) / 2)
    assert different.pooled_dice([truth_a], [truth_a]) == pytest.approx(1.0)
    # a class absent from truth and prediction is left out of the mean, not counted as 0 or 1
    assert different.pooled_dice([np.array([[1, 0]])], [np.array([[1, 0]])]) == pytest.approx(1.0)


def test_the_setting_is_the_runs_normalisation_override(different, tmp_path: Path) -> None:
    job = tmp_path / "3"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- data.normalisation=per_image\n- method=simclr\n")
    assert different.normalisation_of(job) == "per_image"
    (job / ".hydra" / "overrides.yaml").write_text("- method=simclr\n")
    assert different.normalisation_of(job) == "default"


def test_a_folder_without_different_test_is_refused(different, tmp_path: Path, capsys) -> None:
    nasa = tmp_path / "nasa"
    nasa.mkdir()
    (nasa / "splits.json").write_text(json.dumps({"train": ["a"], "test": ["b"]}))
    assert different.main([str(tmp_path), str(nasa), "--out", str(tmp_path / "out")]) == 2
    assert "no different_test list" in capsys.readouterr().err
    assert different.main([str(tmp_path), str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    assert "not found" in capsys.readouterr().err
