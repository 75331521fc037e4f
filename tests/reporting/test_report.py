"""pscl-report on a fixture multirun with known metrics, a failed run, both protocols, the notebook."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pscl.reporting.report import main, write_report

CLASSES = ["matrix", "phase1", "phase2"]


def _test(dice: float, acc: float) -> dict[str, float]:
    return {"dice": dice, "acc": acc, "miou": dice - 0.1, "dice_matrix": 0.99,
            "dice_phase1": dice + 0.05, "dice_phase2": dice - 0.05}


def _write_run(folder: Path, method: str, num_labeled: str, seed: int, dice: float, acc: float,
               data_root: Path, history: list[dict] | None = None, labeled: int = 1) -> None:
    folder.mkdir(parents=True)
    record = {"method": method, "num_labeled": num_labeled, "label_seed": seed,
              "labeled_ids": [f"img{i:02d}" for i in range(labeled)], "data_root": str(data_root),
              "test": _test(dice, acc), "protocol": "paper" if history else "final",
              "test_history": history or []}
    (folder / "metrics.json").write_text(json.dumps(record))
    predictions = folder / "predictions"
    predictions.mkdir()
    for sample_id in ("img00", "img01"):
        Image.fromarray(np.full((64, 80), seed % 3, np.uint8)).save(predictions / f"{sample_id}.png")


@pytest.fixture
def multirun(tmp_path: Path, make_folder) -> Path:
    """supervised: 1 label x 2 rounds (Dice 0.5, 0.7) and 5 labels x 2 rounds; pscl_simclr: 3 rounds
    (0.6, 0.6, 0.9) and a 4th that failed."""
    data = make_folder("data", n=6, groups=["0d", "180d"])  # img00 (annotated) 0d, img01 180d
    root = tmp_path / "multirun"
    specs = [("supervised", "1", 0, 0.5, 0.90), ("supervised", "1", 1, 0.7, 0.80),
             ("supervised", "5", 0, 0.75, 0.95), ("supervised", "5", 1, 0.85, 0.97),
             ("pscl_simclr", "1", 0, 0.6, 0.9), ("pscl_simclr", "1", 1, 0.6, 0.9), ("pscl_simclr", "1", 2, 0.9, 0.96)]
    for job, (method, labels, seed, dice, acc) in enumerate(specs):
        _write_run(root / str(job), method, labels, seed, dice, acc, data, labeled=int(labels))
    failed = root / str(len(specs))
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "config.yaml").write_text("method:\n  name: pscl_simclr\ndata:\n  num_labeled: 1\n  label_seed: 3\n")
    (failed / "FAILED").write_text("RuntimeError: out of memory\n\nTraceback ...\n")
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_table_means_and_sample_stds(multirun: Path) -> None:
    written = write_report([multirun])
    rows = {(r["method"], r["num_labeled"]): r for r in _rows(written["results.csv"])}
    sup1 = rows[("supervised", "1")]
    assert float(sup1["dice_mean"]) == pytest.approx(0.6)
    assert float(sup1["dice_std"]) == pytest.approx(math.sqrt((0.1**2 + 0.1**2) / 1))  # n - 1
    assert float(sup1["acc_mean"]) == pytest.approx(0.85)
    assert float(sup1["dice_phase1"]) == pytest.approx(0.65)
    pscl = rows[("pscl_simclr", "1")]
    assert int(pscl["rounds"]) == 3 and int(pscl["failed"]) == 1
    assert float(pscl["dice_mean"]) == pytest.approx(0.7)
    assert float(pscl["dice_std"]) == pytest.approx(math.sqrt((0.01 + 0.01 + 0.04) / 2))
    table = written["results.md"].read_text()
    assert "Protocol: **final**" in table and "sample standard deviation" in table
    assert "| pscl_simclr | 1 | 3 (1 failed) | 0.700 ± 0.173 |" in table
    assert "out of memory" in table and "round 3" in table
    # the paper's order: supervised before PSCL
    assert table.index("| supervised | 1 |") < table.index("| pscl_simclr | 1 |")
    assert len(_rows(written["runs.csv"])) == 8


def test_paired_rounds_and_per_image_groups(multirun: Path) -> None:
    written = write_report([multirun])
    table = written["results.md"].read_text()
    # pscl_simclr rounds 0, 1 against supervised (0.5, 0.7): +0.1 and -0.1; round 2 is unpaired
    line = next(x for x in table.splitlines() if x.startswith("| pscl_simclr | 1 | 0.600 | 0.600 | 0.900 |"))
    assert line.endswith("0.000 | 1 / 2 | [-0.100, +0.100] |")  # 2 pairs: the interval spans both
    assert "same group" in table and "other groups" in table
    rows = _rows(written["per_image.csv"])
    assert len(rows) == 7 * 2  # 7 finished runs x 2 saved predictions
    by_image = {r["image"]: r for r in rows}
    assert by_image["img00"]["image_group"] == "0d" and by_image["img00"]["same_group"] == "True"
    assert by_image["img01"]["image_group"] == "180d" and by_image["img01"]["same_group"] == "False"
    truth = np.asarray(Image.open(multirun.parent / "data" / "masks" / "img01.png"))
    row = next(r for r in rows if (r["method"], r["label_seed"], r["image"]) == ("supervised", "1", "img01"))
    # the fixture's prediction is the constant class seed % 3 = 1: Dice of class 1 only
    expected = 2 * (truth == 1).sum() / ((truth == 1).size + (truth == 1).sum())
    if (truth == 2).any():  # class 2 is in the truth but never predicted: Dice 0 in the mean
        expected /= 2
    assert float(row["dice"]) == pytest.approx(expected)


def test_rounds_reported_twice_are_flagged(multirun: Path, capsys) -> None:
    """A sweep that varied another setting gives two runs per round: the report must say so."""
    data = multirun.parent / "data"
    _write_run(multirun / "lr" / "0", "supervised", "1", 0, 0.9, 0.99, data)
    written = write_report([multirun])
    table = written["results.md"].read_text()
    assert table.startswith("**Warning:**")
    assert "* supervised, labels 1, round 0: " in table and str(multirun / "lr" / "0") in table
    assert "reported by several runs" in capsys.readouterr().err
    clean = write_report([multirun / str(job) for job in range(7)], out=multirun / "clean")
    assert "Warning" not in clean["results.md"].read_text()


def test_plots_are_written(multirun: Path) -> None:
    written = write_report([multirun], out=multirun / "report")
    for name in ("label_efficiency.png", "gallery.png"):
        image = Image.open(written[name])
        assert image.size[0] > 200 and image.size[1] > 100
        assert np.asarray(image).std() > 0  # not a blank canvas


def test_protocol_switch_changes_the_reported_value(tmp_path: Path, make_folder) -> None:
    data = make_folder("data", n=6)
    history = [{"epoch": 5, "dice": 0.8, "acc": 0.95}, {"epoch": 10, "dice": 0.55, "acc": 0.9}]
    _write_run(tmp_path / "m" / "0", "supervised", "1", 0, 0.55, 0.9, data, history=history)
    final = write_report([tmp_path / "m"], out=tmp_path / "final", protocol="final")
    paper = write_report([tmp_path / "m"], out=tmp_path / "paper")  # auto: the runs recorded "paper"
    assert float(_rows(final["results.csv"])[0]["dice_mean"]) == pytest.approx(0.55)
    assert float(_rows(paper["results.csv"])[0]["dice_mean"]) == pytest.approx(0.8)
    assert float(_rows(paper["results.csv"])[0]["acc_mean"]) == pytest.approx(0.95)
    assert "Protocol: **paper**" in paper["results.md"].read_text()
    assert _rows(paper["runs.csv"])[0]["epoch"] == "5"


def test_paper_protocol_without_history_is_a_clear_error(multirun: Path, capsys) -> None:
    assert main([str(multirun), "--protocol", "paper"]) == 2
    assert "rerun it with eval=paper" in capsys.readouterr().err
    assert main([str(multirun / "nope")]) == 2


def test_notebook_runs_on_a_multirun(multirun: Path, monkeypatch) -> None:
    """Executes the notebook's code cells in order, as Jupyter would."""
    notebook = Path(__file__).resolve().parents[2] / "notebooks" / "results.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert code, "the notebook has no code"
    monkeypatch.setenv("PSCL_MULTIRUN", str(multirun))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__main__"}
    for source in code:
        exec(compile(source, str(notebook), "exec"), namespace)  # noqa: S102 - our own notebook
    assert (multirun / "results.md").is_file()
    assert len(namespace["table"]) == 3  # the notebook's results table: 3 (method, regime) rows
    assert len(namespace["per_image"]) == 14  # its per-image plot: 7 finished runs x 2 test images
    os.environ.pop("PSCL_MULTIRUN", None)
