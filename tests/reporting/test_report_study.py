"""pscl-report on a fixture pretraining-length study and a fixture protocol grid; the small mends
(gallery legend, the note when label_efficiency.png is absent)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pscl.reporting.grid import grid_rows
from pscl.reporting.report import write_report
from pscl.reporting.study import snapshot_rows


def _metrics(dice: float) -> dict[str, float]:
    return {"dice": dice, "acc": 0.9, "miou": dice - 0.1, "dice_matrix": 0.99, "dice_phase1": dice, "dice_phase2": dice}


def _probe(dice: float, floor: float) -> dict:
    return {"dice": dice, "acc": 0.8, "miou": 0.3, "features": "multiscale", "split": "test", "seconds": 1.0,
            "pretrained": True, "random_init": {"dice": floor, "acc": 0.7}}


def _write(folder: Path, record: dict, data_root: Path, overrides: list[str] | None = None) -> None:
    folder.mkdir(parents=True)
    record = {"num_labeled": 1, "labeled_ids": ["img00"], "data_root": str(data_root), "protocol": "final",
              "test_history": [], **record}
    (folder / "metrics.json").write_text(json.dumps(record))
    if overrides is not None:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    predictions = folder / "predictions"
    predictions.mkdir()
    Image.fromarray(np.zeros((64, 80), np.uint8)).save(predictions / "img01.png")


@pytest.fixture
def study(tmp_path: Path, make_folder) -> Path:
    """pscl_simclr over 2 rounds with snapshots at epochs 3/10/30 (57/190/570 steps); supervised 2 rounds."""
    data = make_folder("data", n=6)
    root = tmp_path / "study"
    for seed, offset in ((0, 0.0), (1, 0.1)):
        points = [{"epoch": e, "steps": s, "test": _metrics(d + offset), "probe": _probe(p + offset, 0.3)}
                  for e, s, d, p in ((3, 57, 0.5, 0.40), (10, 190, 0.6, 0.45), (30, 570, 0.7, 0.5))]
        _write(root / f"pscl{seed}", {"method": "pscl_simclr", "label_seed": seed, "test": points[-1]["test"],
                                      "probe": points[-1]["probe"], "snapshots": points}, data)
        _write(root / f"sup{seed}", {"method": "supervised", "label_seed": seed, "test": _metrics(0.55 + offset),
                                     "probe": {**_probe(0.3, 0.3), "pretrained": False}}, data)
    return root


def test_study_curve_and_tables(study: Path) -> None:
    written = write_report([study])
    assert written["pretraining_curve.png"].stat().st_size > 10_000
    text = written["results.md"].read_text()
    # fine-tuned 0.5/0.6 -> 0.55 ± 0.071 at 57 steps; probe 0.5/0.6 at 570 steps
    assert "| pscl_simclr | 3 | 57 | 2 | 0.550 ± 0.071 | 0.450 ± 0.071 | 0.300 |" in text
    assert "| pscl_simclr | 30 | 570 | 2 | 0.750 ± 0.071 | 0.550 ± 0.071 | 0.300 |" in text
    assert "Supervised (no pretraining): 0.600 ± 0.071 over 2 round(s)." in text
    # the probe table: ceiling = supervised fine-tuned Dice on the same rounds
    assert "| pscl_simclr | 1 | 2 | 0.550 ± 0.071 | 0.300 ± 0.000 | 0.600 ± 0.071 | 0.750 ± 0.071 |" in text
    # one regime only: the report says why there is no label-efficiency plot
    assert "label_efficiency.png" not in written and "`label_efficiency.png` is not drawn" in text


def test_curve_reference_uses_only_the_studys_rounds(study: Path) -> None:
    """Supervised rounds the study has no snapshots for (another label seed, another label regime)
    stay out of the curve's reference line, but are reported in their own rows."""
    data = Path(json.loads((study / "sup0" / "metrics.json").read_text())["data_root"])
    _write(study / "sup2", {"method": "supervised", "label_seed": 2, "test": _metrics(0.95)}, data)
    _write(study / "sup_all", {"method": "supervised", "label_seed": 0, "num_labeled": "all", "test": _metrics(0.9)},
           data)
    text = write_report([study])["results.md"].read_text()
    assert "Supervised (no pretraining): 0.600 ± 0.071 over 2 round(s)." in text
    assert "| supervised | 1 | 3 | 0.717 ± 0.208 |" in text  # the results table keeps all three rounds at 1 label


def test_snapshot_rows_pool_rounds_per_epoch() -> None:
    records = [{"method": "simclr", "label_seed": s,
                "snapshots": [{"epoch": 1, "steps": 10, "test": {"dice": d}}, {"epoch": 2, "steps": 20, "test": {"dice": d + 0.2}}]}
               for s, d in ((0, 0.1), (1, 0.3), (2, 0.5))]
    rows = snapshot_rows(records)
    assert [(r["epoch"], r["steps"], r["rounds"]) for r in rows] == [(1, 10, 3), (2, 20, 3)]
    assert rows[1]["dice_mean"] == pytest.approx(0.5) and rows[1]["dice_std"] == pytest.approx(0.2)
    assert math.isnan(rows[0]["probe_mean"])  # no probe recorded


def test_snapshot_rows_pool_by_steps_when_a_round_counted_another_epoch() -> None:
    """A step snapshot written after a resume by older pscl said epoch 1,499 at step 1,500: the
    round still belongs to the 1,500-step point, and the row names both epochs."""
    records = [{"method": "pscl_simclr", "label_seed": s,
                "snapshots": [{"epoch": e, "steps": 1500, "test": {"dice": d}}]}
               for s, e, d in ((0, 1500, 0.9), (1, 1499, 0.7), (2, 1500, 0.8))]
    rows = snapshot_rows(records)
    assert [(r["epoch"], r["steps"], r["rounds"], r["label_seeds"]) for r in rows] == [("1499–1500", 1500, 3, [0, 1, 2])]
    assert rows[0]["dice_mean"] == pytest.approx(0.8)


def test_grid_report_ranks_points_by_mean_validation_dice(tmp_path: Path, make_folder) -> None:
    data = make_folder("data", n=6)
    root = tmp_path / "grid"
    values = {("lr=1e-4", "simclr"): (0.5, 0.6), ("lr=1e-4", "pscl_simclr"): (0.4, 0.4),
              ("lr=1e-3", "simclr"): (0.7, 0.7), ("lr=1e-3", "pscl_simclr"): (0.5, 0.3)}
    for job, ((point, method), dices) in enumerate(values.items()):
        for seed, dice in enumerate(dices):
            _write(root / f"{job}_{seed}", {"method": method, "label_seed": seed, "split": "val", "val": _metrics(dice)},
                   data, overrides=[f"method={method}", f"data.label_seed={seed}", "experiment=protocol_grid",
                                    f"method.finetune_encoder_{point}"])
    written = write_report([root])
    text = written["results.md"].read_text()
    lines = [line for line in text.splitlines() if line.startswith("| `")]
    # lr=1e-3: (0.7 + 0.4) / 2 = 0.55 beats lr=1e-4: (0.55 + 0.4) / 2 = 0.475
    assert lines[0].startswith("| `method.finetune_encoder_lr=1e-3` **(chosen)** | 0.550 |")
    assert lines[1].startswith("| `method.finetune_encoder_lr=1e-4` | 0.475 |")
    assert "results.csv" not in written  # no test-set runs, no test table
    rows = grid_rows([{"point": "a", "method": "m", "label_seed": 0, "dice": 0.2},
                      {"point": "a", "method": "n", "label_seed": 0, "dice": 0.4}])
    assert rows[0]["mean"] == pytest.approx(0.3)


def test_gallery_has_a_class_legend(study: Path, monkeypatch) -> None:
    import matplotlib.figure

    legends: list[list[str]] = []
    original = matplotlib.figure.Figure.legend

    def recording(self, *args, **kwargs):
        legends.append([h.get_label() for h in kwargs.get("handles", [])])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "legend", recording)
    written = write_report([study])
    assert "gallery.png" in written
    assert ["matrix", "phase1", "phase2"] in legends
