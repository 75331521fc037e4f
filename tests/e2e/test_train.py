"""pscl-train: composed configs, fast_dev_run, learning, run folders, and CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import SHARED_NASA, compose_config, run_cli
from pscl.training.pipeline import train

TINY = ["backbone=unet_small", "backbone.widths=[8,16,32,64]", "logger=csv"]


def folder_overrides(root: Path, extra: list[str] | None = None) -> list[str]:
    return [f"data=folder", f"data.root={root}", "data.crop_size=32", "data.batch_size=4",
            "data.samples_per_epoch=8", *TINY, *(extra or [])]


def test_the_import_paths_of_before_the_training_package_still_work() -> None:
    """Scripts written before issue 22 import pscl.train and pscl.predict.model: thin re-exports."""
    import pscl.predict.model as old_model_module
    import pscl.train as old_train_module
    from pscl.models import model_file
    from pscl.training import app, pipeline

    assert (old_train_module.train, old_train_module.main, old_train_module.run_cli) == (
        pipeline.train, app.main, app.run_cli)
    assert (old_model_module.save_model, old_model_module.load_trained_model, old_model_module.TrainedModel,
            old_model_module.MODEL_FILE) == (model_file.save_model, model_file.load_trained_model,
                                             model_file.TrainedModel, model_file.MODEL_FILE)


def test_fast_dev_run_on_a_folder(make_folder, tmp_path: Path) -> None:
    root = make_folder(n=6)
    cfg = compose_config(folder_overrides(root, ["debug=fast_dev_run"]), tmp_path / "run")
    results = train(cfg)
    assert set(results["test"]) >= {"dice", "acc", "miou", "dice_phase1", "dice_phase2"}
    assert 0.0 <= results["test"]["dice"] <= 1.0


def test_fast_dev_run_on_synthetic_default_data(tmp_path: Path) -> None:
    overrides = ["data.synthetic.counts=[2,2,2]", "data.synthetic.size=96", "data.crop_size=64",
                 "debug=fast_dev_run", *TINY]
    cfg = compose_config(overrides, tmp_path / "run")
    results = train(cfg)
    assert results["test"]["dice"] >= 0.0
    assert len(results["labeled_ids"]) == 1
    assert (tmp_path / "cache").is_dir()  # generated into the configured cache


def evaluate_untrained(cfg) -> float:
    """Test Dice of the randomly initialised model on the same data (same seed as train)."""
    import hydra
    import lightning.pytorch as pl

    from pscl.metrics import SegmentationMetrics

    pl.seed_everything(int(cfg.seed))
    dm = hydra.utils.instantiate(cfg.data)
    dm.prepare_data()
    dm.setup()
    model = hydra.utils.instantiate(cfg.backbone, in_channels=1, num_classes=dm.num_classes).eval()
    metrics = SegmentationMetrics(dm.class_names)
    with torch.no_grad():
        for batch in dm.test_dataloader():
            metrics.update(model(batch["image"]).argmax(1), batch["mask"])
    return metrics.compute()["dice"]


def test_short_training_beats_the_untrained_model(make_folder, tmp_path: Path) -> None:
    root = make_folder(n=8, size=(64, 64))
    cfg = compose_config(folder_overrides(root, ["data.num_labeled=2", "trainer.max_epochs=12",
                                                 "data.samples_per_epoch=16", "logger=tensorboard"]),
                         tmp_path / "run")
    before = evaluate_untrained(cfg)
    results = train(cfg)
    assert results["test"]["dice"] > before + 0.2, (before, results["test"])
    out = tmp_path / "run"
    written = json.loads((out / "metrics.json").read_text())
    assert written["test"]["dice"] == pytest.approx(results["test"]["dice"])
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert sorted(p.name for p in out.glob("checkpoints/*.ckpt")) == ["last.ckpt"]  # never a test-selected one
    predicted = sorted(p.stem for p in (out / "predictions").glob("*.png"))
    assert len(predicted) == 2  # 8 images, 20 % test
    assert len(list((out / "predictions" / "overlay").glob("*.png"))) == 2
    # TensorBoard holds the test metrics and a few prediction overlays
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"test/dice", "test/acc", "train/loss"} <= set(events.Tags()["scalars"])
    assert events.Scalars("test/dice")[-1].value == pytest.approx(results["test"]["dice"], rel=1e-5)
    assert sum(t.startswith("test/prediction/") for t in events.Tags()["images"]) == 2


def test_cli_multirun_gives_each_run_its_own_folder(make_folder, tmp_path: Path) -> None:
    root = make_folder(n=6)
    args = ["-m", *folder_overrides(root, ["debug=limit", "trainer.max_epochs=1"]), "data.label_seed=0,1"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "logs" / "train" / "multiruns").glob("*/*/metrics.json"))
    assert len(runs) == 2
    seeds = sorted(json.loads(p.read_text())["label_seed"] for p in runs)
    assert seeds == [0, 1]
    assert "test Dice" in proc.stdout


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data=folder"], "data.root"),
        (["backbone=resnet9000"], "backbone"),
        (["data=folder", "data.root=/no/such/folder"], "/no/such/folder"),
        (["data=folder", "data.root=.", "data.num_labeled=zero"], "data.num_labeled"),
    ],
)
def test_cli_errors_are_one_clear_message(tmp_path: Path, overrides: list[str], expected: str) -> None:
    proc = run_cli(overrides, tmp_path)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_data_error_names_the_file_and_keeps_earlier_runs(make_folder, tmp_path: Path) -> None:
    root = make_folder(n=5)
    earlier = tmp_path / "logs" / "train" / "runs" / "earlier"
    earlier.mkdir(parents=True)
    (earlier / "metrics.json").write_text("{}")
    (root / "masks" / "img03.png").unlink()
    proc = run_cli(folder_overrides(root), tmp_path)
    assert proc.returncode == 2
    assert "img03" in proc.stderr and "has no mask" in proc.stderr and "Traceback" not in proc.stderr
    assert (earlier / "metrics.json").read_text() == "{}"


def test_multirun_failure_does_not_stop_other_jobs(make_folder, tmp_path: Path) -> None:
    root = make_folder(n=6)
    args = ["-m", *folder_overrides(root, ["debug=fast_dev_run"]), "data.num_labeled=1,99"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 1
    jobs = sorted((tmp_path / "logs" / "train" / "multiruns").glob("*/*"))
    failed = [j for j in jobs if (j / "FAILED").is_file()]
    assert len(failed) == 1 and "num_labeled" in (failed[0] / "FAILED").read_text()
    assert "1 run(s) failed" in proc.stderr


@pytest.mark.integration
@pytest.mark.skipif(not SHARED_NASA.is_dir(), reason="../shared/data/nasa_superalloy is absent")
def test_nasa_superalloy_integration(tmp_path: Path) -> None:
    cfg = compose_config(["data=nasa_superalloy", f"data.root={SHARED_NASA}", "data.crop_size=128",
                          "data.batch_size=4", "data.samples_per_epoch=16", "trainer.max_epochs=30",
                          "backbone=unet_small", "logger=csv"], tmp_path / "run")
    results = train(cfg)
    assert results["labeled_ids"][0] in json.loads((SHARED_NASA / "splits.json").read_text())["train"]
    assert set(results["test"]) >= {"dice_matrix_gamma", "dice_secondary_gamma_prime", "dice_tertiary_gamma_prime"}
    # 120 steps on one annotated image: matrix vs secondary gamma-prime (about 50/50) well above chance
    assert results["test"]["acc"] > 0.7
