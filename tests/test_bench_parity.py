"""benchmarks/bf16_parity.py: pairing fp32 and bf16 jobs by round and snapshot, and the parity rule."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def parity():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bf16_parity

        yield bf16_parity
    finally:
        sys.path.remove(str(BENCHMARKS))


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
