"""Run folders end in exactly one state; divergence stops a stage; fast_dev_run saves nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from conftest import compose_config
from pscl.training.stop_on_divergence import StopOnDivergence
from pscl.integrity import NonFiniteError, first_non_finite, load_weights
from pscl.reporting.run_records import collect_runs
from pscl.reporting.tables import markdown, summarize
from pscl.runs import FAILED, METRICS, RUNNING, read_state, run_markers
from pscl.training.pipeline import train

TINY_SYNTH = ["data.synthetic.counts=[2,2,2]", "data.synthetic.size=96", "data.crop_size=64",
              "data.unlabeled_batch_size=3", "backbone=unet_small", "backbone.widths=[8,16,32,64]", "logger=csv",
              "data.samples_per_epoch=4", "data.batch_size=2"]


# ------------------------------------------------------------------ markers
def test_markers_of_a_finished_run(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with run_markers(folder):
        assert read_state(folder).state == "unfinished" and json.loads((folder / RUNNING).read_text())["pid"] > 0
        (folder / METRICS).write_text(json.dumps({"split": "test", "test": {"dice": 0.5}}))
    assert sorted(p.name for p in folder.iterdir()) == [METRICS]
    assert read_state(folder).state == "finished"


def test_markers_of_a_failed_run(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with pytest.raises(ValueError), run_markers(folder):
        raise ValueError("bad thing\nsecond line")
    assert sorted(p.name for p in folder.iterdir()) == [FAILED]
    assert (folder / FAILED).read_text().splitlines()[0] == "ValueError: bad thing"
    assert read_state(folder) == read_state(folder).__class__("failed", "ValueError: bad thing")


def test_an_interrupted_run_stays_running_and_a_rerun_clears_stale_markers(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), run_markers(folder):
        raise KeyboardInterrupt
    assert read_state(folder).state == "unfinished"
    (folder / FAILED).write_text("old failure\n")
    (folder / METRICS).write_text("{}")
    with run_markers(folder):
        assert not (folder / FAILED).exists() and not (folder / METRICS).exists()
        (folder / METRICS).write_text(json.dumps({"split": "test", "test": {"dice": 0.7}}))
    assert (folder / "metrics.previous.json").read_text() == "{}"
    assert read_state(folder).state == "finished" and not (folder / RUNNING).exists()


def test_non_finite_metrics_count_as_failed(tmp_path: Path) -> None:
    (tmp_path / METRICS).write_text(json.dumps({"split": "test", "test": {"dice": float("nan"), "acc": 0.886}}))
    state = read_state(tmp_path)
    assert state.state == "failed" and "non-finite" in state.detail
    assert read_state(tmp_path / "nothing") is None


def test_report_lists_failed_and_unfinished_runs_by_name(tmp_path: Path) -> None:
    def run(name: str, seed: int, **files: str) -> Path:
        folder = tmp_path / name
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "config.yaml").write_text(
            f"method:\n  name: simclr\ndata:\n  num_labeled: 1\n  label_seed: {seed}\n")
        for file_name, text in files.items():
            (folder / file_name).write_text(text)
        return folder

    def metrics(seed: int, dice: float) -> str:
        return json.dumps({"method": "simclr", "num_labeled": 1, "label_seed": seed, "labeled_ids": ["a"],
                           "split": "test", "test": {"dice": dice, "acc": 0.9, "miou": 0.5}})

    run("0", 0, **{METRICS: metrics(0, 0.6)})
    run("1", 1, **{METRICS: metrics(1, 0.8)})
    killed = run("2", 2, RUNNING='{"pid": 1}')
    diverged = run("3", 3, **{METRICS: metrics(3, float("nan"))})
    runs = collect_runs([tmp_path])
    states = {r.folder.name: r.state for r in runs}
    assert states == {"0": "finished", "1": "finished", "2": "unfinished", "3": "failed"}
    rows = summarize(runs, "final")
    assert rows[0]["rounds"] == 2 and rows[0]["dice_mean"] == pytest.approx(0.7)
    table = markdown(rows, runs, "final")
    assert "| simclr | 1 | 2 (1 failed, 1 unfinished) | 0.700" in table
    assert f"unfinished: simclr, labels 1, round 2: `{killed}`" in table
    assert f"failed: simclr, labels 1, round 3: `{diverged}`" in table


# ------------------------------------------------------------------ divergence
class _ToyModule(pl.LightningModule):
    """A linear model whose loss turns NaN from step ``nan_from`` on."""

    def __init__(self, nan_from: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.nan_from = nan_from

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        return loss * float("nan") if self.global_step >= self.nan_from else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _toy_fit(tmp_path: Path, module: pl.LightningModule) -> None:
    """Three epochs of 4 steps, last.ckpt after every epoch, divergence checked."""
    from pscl.callbacks.resume_checkpoint import ResumeCheckpoint

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=2)
    checkpoints = tmp_path / "checkpoints"
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path,
                         callbacks=[ResumeCheckpoint(checkpoints, every_n_epochs=1),
                                    StopOnDivergence("toy stage", checkpoints)])
    trainer.fit(module, data)


def test_a_non_finite_loss_stops_the_stage_and_keeps_the_last_finite_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteError) as info:
        _toy_fit(tmp_path, _ToyModule(nan_from=6))  # 4 steps an epoch: epoch 0 ends finite, step 6 is NaN
    message = str(info.value)
    assert "toy stage diverged" in message and "at step 7" in message and "epoch 1" in message
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert str(last) in message
    saved = load_weights(last)
    assert saved["global_step"] == 4 and first_non_finite(saved["state_dict"]) is None


class _NanWeightModule(_ToyModule):
    """Its loss stays finite, but the weights turn NaN right after step ``nan_weights_at``."""

    def __init__(self, nan_weights_at: int) -> None:
        super().__init__(nan_from=10**9)
        self.nan_weights_at = nan_weights_at

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.global_step == self.nan_weights_at + 1:  # the step just taken was step nan_weights_at
            with torch.no_grad():
                self.layer.weight.fill_(float("nan"))


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    # the weights turn NaN in the last step of epoch 1 (step 7), so the loss never shows it before
    # the epoch-end save: the save itself must refuse, and the epoch-0 checkpoint stays
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(NonFiniteError, match="the weight layer.weight became non-finite at step 8") as info:
        _toy_fit(tmp_path, _NanWeightModule(nan_weights_at=7))
    assert str(checkpoints / "last.ckpt") in str(info.value)
    saved = load_weights(checkpoints / "last.ckpt")
    assert saved["global_step"] == 4 and first_non_finite(saved["state_dict"]) is None
    assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]  # no half-written temporary file


def test_a_finite_run_is_not_stopped(tmp_path: Path) -> None:
    _toy_fit(tmp_path, _ToyModule(nan_from=10**9))
    assert load_weights(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 12


def _nan_after(module_class: type, steps: int, monkeypatch) -> None:
    original = module_class.training_step

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= steps else loss

    monkeypatch.setattr(module_class, "training_step", training_step)


def test_diverged_fine_tuning_fails_the_run(tmp_path: Path, monkeypatch) -> None:
    from pscl.modules.segmentation import SegmentationModule

    _nan_after(SegmentationModule, 3, monkeypatch)  # 2 steps an epoch: the 2nd epoch diverges
    folder = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="fine-tuning diverged: the training loss became nan at step 4"):
        train(compose_config([*TINY_SYNTH, "trainer.max_epochs=3", "checkpoint.finetune_every_n_epochs=1"], folder))
    assert read_state(folder).state == "failed" and "diverged" in (folder / FAILED).read_text()
    assert not (folder / METRICS).exists() and not (folder / RUNNING).exists()
    assert first_non_finite(load_weights(folder / "checkpoints" / "last.ckpt")["state_dict"]) is None


def test_diverged_pretraining_stores_nothing(tmp_path: Path, monkeypatch) -> None:
    from pscl.modules.simclr import SimCLRModule

    _nan_after(SimCLRModule, 1, monkeypatch)
    folder = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="pretraining diverged"):
        train(compose_config([*TINY_SYNTH, "method=simclr", "method.pretrain_epochs=2", "trainer.max_epochs=1"],
                             folder))
    assert not (folder / "pretrain" / "pretrained.pt").exists()
    assert not list((tmp_path / "cache").glob("pretrained/simclr-*/pretrained.pt"))
    assert read_state(folder).state == "failed"


def test_fast_dev_run_saves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    results = train(compose_config([*TINY_SYNTH, "method=simclr", "debug=fast_dev_run"], folder))
    assert math.isfinite(results["test"]["dice"])
    written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert not [w for w in written if w.endswith((".pt", ".ckpt", ".png", ".json")) or w in (RUNNING, FAILED)], written
