"""Pretraining length in optimiser steps (``method.pretrain_steps``), snapshots after chosen steps
(``snapshot_steps``), and the recipes that use them (quick, pretrain_scaling, pretrain_long)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import compose_config
from pscl.errors import ConfigError
from pscl.training.pipeline import train
from pscl.models.transfer import load_pretrained, read_meta

# a tiny network on tiny crops; one short fine-tuning
TINY = ["data=folder", "backbone=unet_small", "backbone.widths=[4,8,16,32]", "data.crop_size=32", "logger=csv",
        "data.unlabeled_batch_size=2", "data.batch_size=2", "data.samples_per_epoch=4", "trainer.max_epochs=1",
        "probe.pixels_per_class=256", "probe.max_iter=20"]
SYNTHETIC_POOL = 159  # the default synthetic data's train images (counts 66/60/72, 20 % of each to test)


class Interrupted(RuntimeError):
    """Stands in for a kill."""


def _args(root: Path, *extra: str) -> list[str]:
    return [*TINY, f"data.root={root}", *extra]


def _last_global_step(stage_dir: Path) -> int:
    """The optimiser steps recorded in the pretraining's last checkpoint (saved when fit ends)."""
    checkpoint = torch.load(stage_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return int(checkpoint["global_step"])


def test_a_length_in_steps_is_the_same_on_pools_of_any_size(make_folder, tmp_path: Path) -> None:
    small = make_folder("small", n=6, size=(48, 48))
    large = make_folder("large", n=6, size=(48, 48), unlabeled=6)
    epochs = {}
    for name, root in (("small", small), ("large", large)):
        folder = tmp_path / name / "run"
        train(compose_config(_args(root, "method=simclr", "method.pretrain_steps=5", "snapshot_steps=[5]",
                                   "stage=pretrain"), folder))
        assert _last_global_step(folder / "pretrain") == 5
        meta = read_meta(folder / "pretrain" / "snapshots" / "step_0005.pt")
        assert meta["steps"] == 5
        epochs[name] = meta["epoch"]
    # 5 train images make 2 batches an epoch, 11 make 5: the small pool needed 3 epochs, the large 1
    assert epochs == {"small": 3, "large": 1}


def test_steps_equal_to_the_epochs_give_the_same_weights(make_folder, tmp_path: Path) -> None:
    """Why experiment=quick's results are unchanged: 2 epochs of 2 batches and 4 steps are the same
    pretraining, BYOL's cosine momentum (which follows the total length) included."""
    root = make_folder("data", n=6, size=(48, 48))
    common = ["method=byol", "stage=pretrain", "reuse_pretraining=false"]
    train(compose_config(_args(root, *common, "method.pretrain_epochs=2"), tmp_path / "epochs"))
    train(compose_config(_args(root, *common, "method.pretrain_epochs=1", "method.pretrain_steps=4"),
                         tmp_path / "steps"))
    by_epochs = load_pretrained(tmp_path / "epochs" / "pretrain" / "pretrained.pt")
    by_steps = load_pretrained(tmp_path / "steps" / "pretrain" / "pretrained.pt")
    assert all(torch.equal(by_epochs[k], by_steps[k]) for k in by_epochs)
    assert _last_global_step(tmp_path / "steps" / "pretrain") == 4


def test_step_snapshots_are_written_reused_and_found_on_resume(make_folder, tmp_path: Path, monkeypatch,
                                                              caplog) -> None:
    root = make_folder("data", n=6, size=(48, 48))
    args = _args(root, "method=simclr", "method.pretrain_steps=5", "snapshot_steps=[2,5]")
    with caplog.at_level("INFO", logger="pscl.train"):
        first = train(compose_config(args, tmp_path / "first"))
    assert "pretraining simclr for 5 steps" in caplog.text
    folder = tmp_path / "first" / "pretrain" / "snapshots"
    assert sorted(p.name for p in folder.iterdir()) == ["step_0002.pt", "step_0005.pt"]
    assert [read_meta(folder / name)["steps"] for name in ("step_0002.pt", "step_0005.pt")] == [2, 5]
    final = load_pretrained(tmp_path / "first" / "pretrain" / "pretrained.pt")
    last = load_pretrained(folder / "step_0005.pt")
    assert all(torch.equal(final[k], last[k]) for k in final)
    written = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert [(p["epoch"], p["steps"]) for p in written["snapshots"]] == [(1, 2), (3, 5)]  # 2 batches an epoch
    assert (tmp_path / "first" / "from_snapshot" / "step_0002" / "point.json").is_file()
    assert written["test"] == written["snapshots"][-1]["test"]

    # the same config in another round: the pretraining and its snapshots come from the cache
    second = train(compose_config([*args, "data.label_seed=1"], tmp_path / "second"))
    assert first["pretraining"]["reused"] is False and second["pretraining"]["reused"] is True
    assert [p["steps"] for p in second["snapshots"]] == [2, 5]
    assert not (tmp_path / "second" / "pretrain").exists()

    # killed after its own pretraining: the resumed run takes its snapshots, it does not pretrain again
    run = tmp_path / "interrupted"
    local = [*args, "reuse_pretraining=false"]
    with monkeypatch.context() as patch:
        patch.setattr("pscl.training.evaluation.evaluate_weights", _raise_interrupted)  # the snapshot's
        patch.setattr("pscl.training.pipeline.evaluate_weights", _raise_interrupted)  # and the final one's
        with pytest.raises(Interrupted):
            train(compose_config(local, run))
    monkeypatch.setattr("pscl.training.pretraining.pretrain", _refuse_pretraining)
    resumed = train(compose_config([*local, f"resume={run}"], run))
    assert resumed["pretraining"]["source"] == str(run / "pretrain" / "pretrained.pt")
    assert [(p["epoch"], p["steps"]) for p in resumed["snapshots"]] == [(1, 2), (3, 5)]


def _raise_interrupted(*args, **kwargs):
    raise Interrupted("simulated kill before the first fine-tuning")


def _refuse_pretraining(*args, **kwargs):
    raise AssertionError("pretrained again")


@pytest.mark.parametrize(("extra", "key", "words"), [
    (["snapshot_steps=[2]"], "snapshot_steps", "method.pretrain_steps is null"),
    (["method.pretrain_steps=5", "snapshot_steps=[6]"], "snapshot_steps", "[1, method.pretrain_steps=5]"),
    (["method.pretrain_steps=5", "snapshot_steps=[0]"], "snapshot_steps", "got [0]"),
    (["method.pretrain_steps=5", "snapshot_steps=[2.5]"], "snapshot_steps", "got [2.5]"),
    (["method.pretrain_steps=5", "snapshot_steps=[2]", "snapshot_epochs=[1]"], "snapshot_steps", "snapshot_epochs"),
    (["method.pretrain_steps=5", "snapshot_epochs=[1]"], "snapshot_epochs", "method.pretrain_steps=5"),
    (["method.pretrain_steps=0"], "method.pretrain_steps", "or null, got 0"),
])
def test_bad_step_settings_are_config_errors(make_folder, tmp_path: Path, extra: list[str], key: str,
                                             words: str) -> None:
    root = make_folder("data", n=6, size=(48, 48))
    with pytest.raises(ConfigError, match=rf"config `{key}`") as info:
        train(compose_config(_args(root, "method=simclr", *extra), tmp_path / "run"))
    assert words in str(info.value) and "fix:" in str(info.value)


def _sweep(experiment: str) -> dict[str, list[str]]:
    """The multirun sweep of ``experiment``: {parameter: values}."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pscl.conf", version_base="1.3"):
        full = compose("train", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    return {name: str(values).split(",") for name, values in full.hydra.sweeper.params.items()}


def test_pretrain_long_composes_for_every_method_of_its_sweep(tmp_path: Path) -> None:
    from pscl.checks import check_config
    from pscl.training.pretraining_length import snapshot_steps

    sweep = _sweep("pretrain_long")
    assert sweep == {"method": ["supervised", "simclr", "moco", "pscl_simclr"], "data.label_seed": ["0", "1", "2"]}
    for method in sweep["method"]:
        cfg = compose_config(["experiment=pretrain_long", f"method={method}"], tmp_path / method)
        check_config(cfg)
        assert cfg.method.name == method and cfg.eval.probe is True
        assert cfg.method.pretrain_steps == 4000 and list(cfg.backbone.widths) == [16, 32, 64, 128]  # quick's
        assert snapshot_steps(cfg) == [190, 570, 1500, 4000] and not cfg.snapshot_epochs


def test_recipes_in_steps_match_their_epochs_on_the_synthetic_pool(tmp_path: Path) -> None:
    quick = compose_config(["experiment=quick"], tmp_path / "quick")
    counts, fraction = list(quick.data.synthetic.counts), float(quick.data.synthetic.test_fraction)
    pool = sum(n - round(n * fraction) for n in counts)
    assert pool == SYNTHETIC_POOL
    per_epoch = pool // quick.data.unlabeled_batch_size  # the pool loader drops the last partial batch
    assert quick.method.pretrain_steps == per_epoch * quick.method.pretrain_epochs == 190
    scaling = compose_config(["experiment=pretrain_scaling", "method=simclr"], tmp_path / "scaling")
    assert scaling.method.pretrain_steps == 30 * per_epoch
    assert list(scaling.snapshot_steps) == [3 * per_epoch, 10 * per_epoch, 30 * per_epoch]
    assert not scaling.snapshot_epochs
    for paper in ("paper_pscl_simclr", "paper_pscl_moco", "table_paper"):  # the paper's schedules stay in epochs
        cfg = compose_config([f"experiment={paper}"], tmp_path / paper)
        assert cfg.method.pretrain_steps is None and cfg.method.pretrain_epochs == 200


@pytest.mark.slow
def test_pretrain_long_end_to_end(make_folder, tmp_path: Path) -> None:
    root = make_folder("data", n=6, size=(48, 48))
    cfg = compose_config(["experiment=pretrain_long", "method=simclr", "data.label_seed=0", *_args(root),
                          "method.pretrain_steps=4", "snapshot_steps=[2,4]"], tmp_path / "run")
    results = train(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [(p["epoch"], p["steps"]) for p in written["snapshots"]] == [(1, 2), (2, 4)]
    assert all("probe" in p and 0 <= p["test"]["dice"] <= 1 for p in written["snapshots"])
    assert results["test"] == written["snapshots"][-1]["test"] and "probe" in results
