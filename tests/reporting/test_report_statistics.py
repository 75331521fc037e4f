"""pscl-report's statistics: the paired bootstrap interval and the gap recovered, as pure functions
on planted numbers and in results.md / results.csv of hand-written run folders."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from pscl.reporting.breakdown import format_interval
from pscl.reporting.report import main
from pscl.reporting.stats import gap_recovered, paired_bootstrap_ci


# ------------------------------------------------------------------ paired_bootstrap_ci
def test_bootstrap_finds_a_planted_shift() -> None:
    noise = np.random.default_rng(7).normal(0, 0.01, 10)
    differences = 0.05 + noise - noise.mean()  # mean exactly 0.05, spread 0.01
    low, high = paired_bootstrap_ci(differences)
    assert 0 < low < 0.05 < high
    assert high - low < 0.03  # about 4 standard errors (0.01 / sqrt(10)), not the spread of a round


def test_bootstrap_of_a_zero_shift_covers_zero() -> None:
    differences = [-0.10, -0.06, -0.02, 0.02, 0.06, 0.10]  # symmetric about 0
    low, high = paired_bootstrap_ci(differences)
    assert low < 0 < high
    assert low == pytest.approx(-high, abs=0.01)


def test_bootstrap_is_reproducible_with_its_seed() -> None:
    differences = [0.03, -0.01, 0.07, 0.02, 0.00]
    assert paired_bootstrap_ci(differences, seed=3) == paired_bootstrap_ci(differences, seed=3)
    assert paired_bootstrap_ci(differences) == paired_bootstrap_ci(list(differences), seed=0)


def test_bootstrap_needs_two_pairs() -> None:
    assert paired_bootstrap_ci([0.1]) is None
    assert paired_bootstrap_ci([]) is None
    assert paired_bootstrap_ci([0.1, 0.1]) == (pytest.approx(0.1), pytest.approx(0.1))
    assert format_interval(None) == "–"
    assert format_interval((-0.0123, 0.0456)) == "[-0.012, +0.046]"


@pytest.mark.parametrize("kwargs", [{"resamples": 0}, {"level": 1.0}, {"level": 0.0}])
def test_bootstrap_refuses_meaningless_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        paired_bootstrap_ci([0.1, 0.2], **kwargs)


def test_bootstrap_refuses_non_finite_differences() -> None:
    with pytest.raises(ValueError, match="finite"):
        paired_bootstrap_ci([0.1, float("nan")])


# ------------------------------------------------------------------ gap_recovered
def test_gap_recovered_on_known_values() -> None:
    assert gap_recovered(0.6, 0.5, 0.7) == pytest.approx(0.5)
    assert gap_recovered(0.5, 0.5, 0.7) == pytest.approx(0.0)
    assert gap_recovered(0.7, 0.5, 0.7) == pytest.approx(1.0)
    assert gap_recovered(0.8, 0.5, 0.7) == pytest.approx(1.5)  # beyond supervised with all labels


def test_gap_recovered_below_the_baseline_is_negative() -> None:
    assert gap_recovered(0.4, 0.5, 0.7) == pytest.approx(-0.5)


@pytest.mark.parametrize("low, high", [(0.7, 0.7), (0.7, 0.6)])
def test_gap_recovered_without_a_gap_is_undefined(low: float, high: float) -> None:
    assert gap_recovered(0.65, low, high) is None


def test_gap_recovered_of_a_missing_dice_is_undefined() -> None:
    assert gap_recovered(float("nan"), 0.5, 0.7) is None


# ------------------------------------------------------------------ pscl-report on run folders
def _write_run(folder: Path, method: str, num_labeled: str, seed: int, dice: float, images: int) -> None:
    """A finished run as pscl-train leaves it: metrics.json and .hydra/config.yaml."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(
        f"method:\n  name: {method}\ndata:\n  num_labeled: {num_labeled}\n  label_seed: {seed}\n")
    record = {"method": method, "num_labeled": int(num_labeled) if num_labeled.isdigit() else num_labeled,
              "label_seed": seed, "labeled_ids": _ids(num_labeled, seed, images), "split": "test",
              "test": {"dice": dice, "acc": 0.9}, "protocol": "final", "test_history": []}
    (folder / "metrics.json").write_text(json.dumps(record))


def _ids(num_labeled: str, seed: int, images: int) -> list[str]:
    """The annotated images of a round: another draw per seed, every image at ``all``."""
    first = 0 if num_labeled == "all" else seed * images
    return [f"img{i:02d}" for i in range(first, first + images)]


def _multirun(root: Path, dice: dict[tuple[str, str], Sequence[float]]) -> Path:
    """One run folder per (method, regime, round); ``all`` annotates 8 images."""
    job = 0
    for (method, regime), values in dice.items():
        for seed, value in enumerate(values):
            _write_run(root / str(job), method, regime, seed, value, 8 if regime == "all" else int(regime))
            job += 1
    return root


def _line(table: str, start: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(start))


def _results_csv(out: Path) -> list[dict[str, str]]:
    with open(out / "results.csv", newline="") as handle:
        return list(csv.DictReader(handle))


REGIMES = {  # mean Dice: supervised 0.5 / 0.6 / 0.7, pscl_simclr 0.6 / 0.65 / 0.72
    ("supervised", "1"): [0.50, 0.52, 0.48], ("supervised", "5"): [0.60, 0.61, 0.59],
    ("supervised", "all"): [0.70, 0.70, 0.70],
    ("pscl_simclr", "1"): [0.61, 0.60, 0.59], ("pscl_simclr", "5"): [0.65, 0.66, 0.64],
    ("pscl_simclr", "all"): [0.72, 0.73, 0.71],
}


def test_report_writes_the_interval_beside_the_paired_columns(tmp_path: Path, capsys) -> None:
    runs = _multirun(tmp_path / "multirun", {**REGIMES, ("simclr", "1"): [0.55]})  # one round: no interval
    assert main([str(runs), "--out", str(tmp_path / "seed0")]) == 0
    assert main([str(runs), "--out", str(tmp_path / "seed5"), "--bootstrap-seed", "5"]) == 0
    capsys.readouterr()
    differences = [0.61 - 0.50, 0.60 - 0.52, 0.59 - 0.48]
    for seed in (0, 5):
        table = (tmp_path / f"seed{seed}" / "results.md").read_text()
        assert "rounds better | 95 % CI of the difference |" in table
        line = _line(table, "| pscl_simclr | 1 | 0.610 | 0.600 | 0.590 |")
        assert line.endswith(f"| +0.100 | 3 / 3 | {format_interval(paired_bootstrap_ci(differences, seed=seed))} |")
        assert _line(table, "| simclr | 1 | 0.550 |").endswith("| 1 / 1 | – |")
        assert _line(table, "| supervised | 1 | 0.500 | 0.520 |").endswith("| - | - | - |")
        assert f"seed {seed})" in table


def test_report_rejects_a_negative_bootstrap_seed(tmp_path: Path, capsys) -> None:
    runs = _multirun(tmp_path / "multirun", {("supervised", "1"): [0.5, 0.6]})
    with pytest.raises(SystemExit) as exit_info:
        main([str(runs), "--bootstrap-seed", "-1"])
    assert exit_info.value.code == 2 and "must be 0 or more" in capsys.readouterr().err


def test_report_writes_the_gap_recovered_per_regime(tmp_path: Path, capsys) -> None:
    runs = _multirun(tmp_path / "multirun", REGIMES)
    assert main([str(runs)]) == 0
    capsys.readouterr()
    table = (runs / "results.md").read_text()
    assert ("| method | Dice (1) | gap recovered (1) | Dice (5) | gap recovered (5) | Dice (all) "
            "| gap recovered (all) |") in table
    assert "| supervised | 0.500 | 0.00 | 0.600 | 0.50 | 0.700 | 1.00 |" in table
    # (0.60 - 0.50) / (0.70 - 0.50) = 0.5; (0.65 - 0.5) / 0.2 = 0.75; (0.72 - 0.5) / 0.2 = 1.1
    assert "| pscl_simclr | 0.600 | 0.50 | 0.650 | 0.75 | 0.720 | 1.10 |" in table
    rows = {(r["method"], r["num_labeled"]): r for r in _results_csv(runs)}
    assert float(rows[("pscl_simclr", "1")]["gap_recovered"]) == pytest.approx(0.5)
    assert float(rows[("pscl_simclr", "all")]["gap_recovered"]) == pytest.approx(1.1)
    assert float(rows[("supervised", "5")]["gap_recovered"]) == pytest.approx(0.5)


def test_report_shows_an_undefined_gap_as_a_dash(tmp_path: Path, capsys) -> None:
    flat = {**REGIMES, ("supervised", "all"): [0.45, 0.50, 0.49]}  # all labels no better than one
    runs = _multirun(tmp_path / "multirun", flat)
    assert main([str(runs)]) == 0
    capsys.readouterr()
    table = (runs / "results.md").read_text()
    assert "| pscl_simclr | 0.600 | – | 0.650 | – | 0.720 | – |" in table
    assert "–: undefined" in table and "no gap to recover" in table
    rows = _results_csv(runs)
    assert rows and all(r["gap_recovered"] == "" for r in rows)


def test_report_leaves_out_the_gap_without_supervised_at_both_ends(tmp_path: Path, capsys) -> None:
    partial = {k: v for k, v in REGIMES.items() if k != ("supervised", "all")}
    runs = _multirun(tmp_path / "multirun", partial)
    assert main([str(runs)]) == 0
    capsys.readouterr()
    table = (runs / "results.md").read_text()
    assert "| method | Dice (1) | Dice (5) | Dice (all) |" in table
    assert "| pscl_simclr | 0.600 | 0.650 | 0.720 |" in table
    assert "Gap recovered is not shown: `supervised` has no finished round with all label(s)" in table
    assert "gap_recovered" not in _results_csv(runs)[0]


def test_report_with_one_regime_has_no_regime_table(tmp_path: Path, capsys) -> None:
    runs = _multirun(tmp_path / "multirun", {("supervised", "1"): [0.5, 0.6], ("pscl_simclr", "1"): [0.6, 0.6]})
    assert main([str(runs)]) == 0
    capsys.readouterr()
    assert "Label regimes" not in (runs / "results.md").read_text()
    assert "gap_recovered" not in _results_csv(runs)[0]


def test_label_regimes_experiment_composes(tmp_path: Path) -> None:
    from conftest import compose_config

    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from pscl.data.splits import parse_num_labeled

    cfg = compose_config(["experiment=label_regimes"], tmp_path / "run")
    assert list(cfg.backbone.widths) == [16, 32, 64, 128] and cfg.data.crop_size == 128  # the quick recipe

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pscl.conf", version_base="1.3"):
        full = compose("train", overrides=["experiment=label_regimes"], return_hydra_config=True)
    params = full.hydra.sweeper.params
    regimes = str(params["data.num_labeled"]).split(",")
    assert regimes == ["1", "5", "all"] and [parse_num_labeled(r) for r in regimes] == [1, 5, None]
    assert str(params["method"]).split(",") == ["supervised", "simclr", "pscl_simclr"]
    assert str(params["data.label_seed"]).split(",") == ["0", "1", "2"]
    for regime in regimes:  # every point of the sweep composes
        point = compose_config(["experiment=label_regimes", f"data.num_labeled={regime}", "method=pscl_simclr"],
                               tmp_path / regime)
        assert str(point.data.num_labeled) == regime and point.method.name == "pscl_simclr"


def test_regime_table_warns_when_a_method_has_other_rounds_than_the_baseline(tmp_path: Path, capsys) -> None:
    """Supervised over 4 rounds at 1 label, pscl_simclr over 3: its mean is over other images."""
    runs = _multirun(tmp_path / "multirun", {**REGIMES, ("supervised", "1"): [0.50, 0.52, 0.48, 0.50]})
    assert main([str(runs)]) == 0
    capsys.readouterr()
    table = (runs / "results.md").read_text()
    assert "Not paired: `pscl_simclr` at 1 (rounds 0, 1, 2 vs 0, 1, 2, 3)." in table
    assert "at 5" not in table.split("Not paired:")[1].split(".")[0]  # the paired regimes are not named


def test_regime_table_of_paired_rounds_has_no_warning(tmp_path: Path, capsys) -> None:
    runs = _multirun(tmp_path / "multirun", REGIMES)
    assert main([str(runs)]) == 0
    capsys.readouterr()
    assert "Not paired" not in (runs / "results.md").read_text()


def test_report_says_when_rounds_annotate_the_same_images(tmp_path: Path, capsys) -> None:
    """At ``all`` every round annotates every image: the three runs are one round repeated."""
    runs = _multirun(tmp_path / "multirun", REGIMES)
    assert main([str(runs)]) == 0
    capsys.readouterr()
    table = (runs / "results.md").read_text()
    note = _line(table, "Rounds that annotate the same images:")
    assert "`supervised` at all (3 runs)" in note and "`pscl_simclr` at all (3 runs)" in note
    assert " at 1 " not in note and " at 5 " not in note  # other draws per round: not named
