"""benchmarks/bf16_parity.py: pairing fp32 and bf16 jobs by round and snapshot, and the parity rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import benchmark_modules


@pytest.fixture(scope="module")
def parity():
    with benchmark_modules("bf16_parity") as modules:
        yield modules[0]


def _job(root: Path, number: int, precision: str, seed: int, points: dict[int, tuple[float, float]]) -> None:
    job = root / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"trainer": {"precision": precision}}))
    snapshots = [{"epoch": i, "steps": steps, "test": {"dice": dice}, "probe": {"dice": probe}}
                 for i, (steps, (dice, probe)) in enumerate(sorted(points.items()))]
    (job / "metrics.json").write_text(json.dumps({"method": "pscl_simclr", "label_seed": seed, "snapshots": snapshots}))


def _sweep(root: Path, bf16_shift: float) -> Path:
    """Three rounds of fp32 (Dice 0.50/0.60/0.70, probe 0.40/0.45/0.50) and bf16 shifted by ``bf16_shift``."""
    for seed, (dice, probe) in enumerate([(0.50, 0.40), (0.60, 0.45), (0.70, 0.50)]):
        _job(root, seed, "32-true", seed, {57: (dice - 0.1, probe - 0.1), 570: (dice, probe)})
        _job(root, 3 + seed, "bf16-mixed", seed, {57: (dice - 0.1, probe - 0.1), 570: (dice + bf16_shift, probe + bf16_shift)})
    return root


def test_pairs_by_round_and_snapshot(parity, tmp_path: Path) -> None:
    rows = parity.parity_rows(parity.load_points(_sweep(tmp_path, 0.02)))
    assert [(r["steps"], r["metric"]) for r in rows] == [(57, "dice"), (57, "probe"), (570, "dice"), (570, "probe")]
    final_dice = rows[2]
    assert final_dice["rounds"] == 3
    assert final_dice["fp32_mean"] == pytest.approx(0.60)
    assert final_dice["diff_mean"] == pytest.approx(0.02)
    assert final_dice["diff_min"] == pytest.approx(0.02) and final_dice["diff_max"] == pytest.approx(0.02)
    assert final_dice["spread"] == pytest.approx(0.10)  # sample std of 0.5, 0.6, 0.7
    assert rows[0]["diff_mean"] == pytest.approx(0.0)


def test_small_shift_is_parity_and_large_shift_is_not(parity, tmp_path: Path, capsys) -> None:
    assert parity.main([str(_sweep(tmp_path / "small", 0.02))]) == 0
    assert "parity holds at 570 steps" in capsys.readouterr().out
    # the probe's round spread is 0.05: a 0.08 shift exceeds it
    out = tmp_path / "large.json"
    assert parity.main([str(_sweep(tmp_path / "large", 0.08)), "--json", str(out)]) == 3
    assert json.loads(out.read_text())["parity"] is False


def test_unusable_folder_is_a_user_error(parity, tmp_path: Path, capsys) -> None:
    assert parity.main([str(tmp_path / "absent")]) == 2
    assert parity.main([str(tmp_path)]) == 2
    assert "no finished job" in capsys.readouterr().err


def test_crossed_runs_separate_pretraining_from_fine_tuning(parity, tmp_path: Path, capsys) -> None:
    sweep = _sweep(tmp_path / "sweep", 0.08)
    runs = tmp_path / "crossed"
    for seed in range(3):  # job 3 + seed is the bf16 pretraining of round `seed`; fine-tune it in fp32
        run = runs / str(seed)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
            {"trainer": {"precision": "32-true"}, "pretrained_ckpt": str(sweep / str(3 + seed) / "pretrain" / "pretrained.pt")}))
        (run / "metrics.json").write_text(json.dumps({"label_seed": seed, "test": {"dice": 0.6 + seed / 10},
                                                      "probe": {"dice": 0.3}}))
    points = parity.crossed_points(sweep, runs)
    assert points[("bf16-mixed", "32-true", 1)] == (pytest.approx(0.7), 0.3)
    assert points[("32-true", "32-true", 2)] == (pytest.approx(0.70), pytest.approx(0.50))  # the sweep's final snapshot
    assert points[("bf16-mixed", "bf16-mixed", 0)][0] == pytest.approx(0.58)
    assert parity.main([str(sweep), "--crossed", str(runs)]) == 3
    out = capsys.readouterr().out
    assert "| bf16-mixed | 32-true | 0.600 / 0.700 / 0.800 | 0.700 ± 0.100 | 0.300 / 0.300 / 0.300 |" in out
