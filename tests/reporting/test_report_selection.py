"""pscl.reporting.selection: chosen sets placed among random draws of the same budget."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pscl.reporting.selection import (
    percentile_among,
    plot_selection,
    selection_markdown,
    selection_rows,
)


def _records() -> list[dict]:
    draws = [{"method": "supervised", "num_labeled": 1, "dice": d, "strategy": None}
             for d in (0.40, 0.50, 0.60, 0.70)]
    draws += [{"method": "supervised", "num_labeled": 5, "dice": 0.8, "strategy": "random"}]
    chosen = [{"method": "supervised", "num_labeled": 1, "dice": 0.65, "strategy": "coverage"},
              {"method": "supervised", "num_labeled": 1, "dice": 0.50, "strategy": "typical"},
              {"method": "moco", "num_labeled": 1, "dice": 0.55, "strategy": "coverage"}]
    return draws + chosen


def test_percentile_counts_ties_half() -> None:
    assert percentile_among(0.65, [0.4, 0.5, 0.6, 0.7]) == pytest.approx(75.0)
    assert percentile_among(0.5, [0.4, 0.5, 0.6, 0.7]) == pytest.approx(37.5)
    assert percentile_among(0.1, [0.4, 0.5]) == 0.0 and percentile_among(0.9, [0.4, 0.5]) == 100.0
    assert math.isnan(percentile_among(0.5, []))


def test_each_choice_is_placed_among_its_own_method_and_budget() -> None:
    rows = selection_rows(_records())
    by = {(r["method"], r["num_labeled"], r["strategy"]): r for r in rows}
    assert set(by) == {("supervised", "1", "coverage"), ("supervised", "1", "typical"), ("moco", "1", "coverage")}
    coverage = by[("supervised", "1", "coverage")]
    assert coverage["draws"] == 4  # the 5-label draw is another budget
    assert coverage["draws_mean"] == pytest.approx(0.55)
    assert coverage["difference"] == pytest.approx(0.10)
    assert coverage["percentile"] == pytest.approx(75.0)
    assert coverage["draws_min"] == pytest.approx(0.40) and coverage["draws_max"] == pytest.approx(0.70)
    moco = by[("moco", "1", "coverage")]  # no random draw of MoCo: nothing to compare with
    assert moco["draws"] == 0 and math.isnan(moco["percentile"]) and math.isnan(moco["difference"])


def test_markdown_and_plot(tmp_path: Path) -> None:
    rows = selection_rows(_records())
    text = selection_markdown(rows)
    assert "| supervised | 1 | coverage | 0.650 | 0.550 ± 0.129 (0.400..0.700) | 4 | 75 | +0.100 |" in text
    assert "| moco | 1 | coverage | 0.550 | n/a ± n/a (n/a..n/a) | 0 | n/a | n/a |" in text
    assert "Fewer than 10 random draws" in text
    path = plot_selection(_records(), tmp_path / "selection.png")
    assert path is not None and path.stat().st_size > 1000


def test_no_choice_no_section(tmp_path: Path) -> None:
    draws = [r for r in _records() if r["strategy"] in (None, "random")]
    assert selection_rows(draws) == []
    assert selection_markdown([]) == ""
    assert plot_selection(draws, tmp_path / "selection.png") is None
    assert not (tmp_path / "selection.png").exists()


def _metrics(folder: Path, method: str, seed: int, dice: float, source: dict | None) -> None:
    import json

    folder.mkdir(parents=True)
    record = {"method": method, "num_labeled": 1, "label_seed": seed, "labeled_ids": [f"img{seed:02d}"],
              "test": {"dice": dice, "acc": 0.9, "miou": dice - 0.1}, "protocol": "final", "test_history": []}
    if source is not None:
        record["labeled_source"] = source
    (folder / "metrics.json").write_text(json.dumps(record))


def test_report_sets_chosen_runs_apart_from_the_rounds(tmp_path: Path) -> None:
    from pscl.reporting.report import write_report

    root = tmp_path / "multirun"
    for seed, dice in enumerate((0.40, 0.50, 0.60, 0.70)):
        source = {"kind": "selection", "strategy": "random", "seed": seed} if seed % 2 else None
        _metrics(root / str(seed), "supervised", seed, dice, source)
    _metrics(root / "4", "supervised", 0, 0.66, {"kind": "selection", "strategy": "coverage", "seed": 0})
    _metrics(root / "5", "supervised", 0, 0.45, {"kind": "list"})
    written = write_report([root], tmp_path / "out")
    text = written["results.md"].read_text()
    assert "selection.png" in written
    assert "| supervised | 1 | coverage | 0.660 |" in text and "| 75 | +0.110 |" in text
    assert "| supervised | 1 | list | 0.450 |" in text
    # the main table pools the four draws only: mean 0.55 over 4 rounds, no repeated-round warning
    assert "0.550" in text and "reported by several runs" not in text


def test_rounds_with_and_without_per_class_dice_are_reported(tmp_path: Path) -> None:
    """A multirun mixing records with and without per-class Dice (e.g. an older pscl) is reported
    without a crash; only the classes every round has get a column value."""
    import json

    from pscl.reporting.report import write_report

    root = tmp_path / "multirun"
    for seed, per_class in enumerate(({"dice_matrix": 0.99, "dice_phase1": 0.5}, {})):
        _metrics(root / str(seed), "supervised", seed, 0.5 + seed / 10, None)
        record = json.loads((root / str(seed) / "metrics.json").read_text())
        record["test"].update(per_class)
        (root / str(seed) / "metrics.json").write_text(json.dumps(record))
    text = write_report([root], tmp_path / "out")["results.md"].read_text()
    assert "| supervised | 1 | 2 | 0.550 ± 0.071 |" in text
