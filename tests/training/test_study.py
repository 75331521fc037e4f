"""The pretraining-length study: snapshots at chosen epochs, fine-tuning from each, reuse, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import compose_config
from pscl.errors import ConfigError
from pscl.training.pipeline import train
from pscl.models.transfer import load_pretrained, read_meta

TINY = ["data=synthetic", "data.synthetic.counts=[3,3,3]", "data.synthetic.size=64", "data.crop_size=32",
        "data.unlabeled_batch_size=3", "data.batch_size=2", "data.samples_per_epoch=4", "trainer.max_epochs=1",
        "backbone=unet_small", "backbone.widths=[4,8,16,32]", "probe.pixels_per_class=256", "probe.max_iter=20",
        "logger=csv"]


def test_snapshots_are_the_weights_of_shorter_pretrainings(tmp_path: Path) -> None:
    long = train(compose_config(["method=simclr", "method.pretrain_epochs=3", "snapshot_epochs=[1,2]",
                                 "eval.probe=true", *TINY], tmp_path / "long"))
    points = long["snapshots"]
    assert [p["epoch"] for p in points] == [1, 2, 3]
    steps = [p["steps"] for p in points]
    assert steps[0] > 0 and steps == [steps[0] * k for k in (1, 2, 3)]
    assert all("probe" in p and 0 <= p["test"]["dice"] <= 1 for p in points)
    assert long["test"] == points[-1]["test"]  # the run's result is the full-length pretraining
    folder = tmp_path / "long" / "pretrain" / "snapshots"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    assert read_meta(folder / "epoch_0002.pt")["steps"] == steps[1]
    final, last = load_pretrained(tmp_path / "long" / "pretrain" / "pretrained.pt"), load_pretrained(folder / "epoch_0003.pt")
    assert all(torch.equal(final[k], last[k]) for k in final)
    # epoch 1 of a 3-epoch SimCLR pretraining is a 1-epoch pretraining: same weights, same Dice
    short = train(compose_config(["method=simclr", "method.pretrain_epochs=1", "reuse_pretraining=false", *TINY],
                                 tmp_path / "short"))
    first, alone = load_pretrained(folder / "epoch_0001.pt"), load_pretrained(tmp_path / "short" / "pretrain" / "pretrained.pt")
    assert all(torch.equal(first[k], alone[k]) for k in first)
    assert short["test"]["dice"] == pytest.approx(points[0]["test"]["dice"], abs=1e-6)
    written = json.loads((tmp_path / "long" / "metrics.json").read_text())
    assert [p["epoch"] for p in written["snapshots"]] == [1, 2, 3]


def test_label_free_snapshots_are_reused_across_rounds(tmp_path: Path) -> None:
    args = ["method=simclr", "method.pretrain_epochs=2", "snapshot_epochs=[1]", *TINY]
    first = train(compose_config([*args, "data.label_seed=0"], tmp_path / "r0"))
    second = train(compose_config([*args, "data.label_seed=1"], tmp_path / "r1"))
    assert first["pretraining"]["reused"] is False and second["pretraining"]["reused"] is True
    assert [p["steps"] for p in second["snapshots"]] == [p["steps"] for p in first["snapshots"]]
    assert not (tmp_path / "r1" / "pretrain").exists()
    # a different snapshot list is a different cache entry
    third = train(compose_config(["method=simclr", "method.pretrain_epochs=2", "snapshot_epochs=[2]", *TINY],
                                 tmp_path / "r2"))
    assert third["pretraining"]["reused"] is False and len(third["snapshots"]) == 1


def test_pscl_pretraining_is_reused_only_for_the_same_annotated_images(tmp_path: Path) -> None:
    args = ["method=pscl_simclr", "method.pretrain_epochs=1", *TINY]
    runs = [train(compose_config([*args, f"data.label_seed={seed}"], tmp_path / name))
            for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    assert [r["pretraining"]["reused"] for r in runs] == [False, True, False]
    assert runs[1]["test"]["dice"] == pytest.approx(runs[0]["test"]["dice"], abs=1e-6)


@pytest.mark.parametrize("epochs", ["[0]", "[5]", "[1.5]"])
def test_bad_snapshot_epochs_are_config_errors(epochs: str, tmp_path: Path) -> None:
    cfg = compose_config(["method=simclr", "method.pretrain_epochs=3", f"snapshot_epochs={epochs}", *TINY],
                         tmp_path / "run")
    with pytest.raises(ConfigError, match="snapshot_epochs"):
        train(cfg)
