"""Pretraining's callbacks come from conf/callbacks/pretrain.yaml; the snapshot callback counts
epochs or steps and keeps the state keys older checkpoints were written with."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import compose_config
from lightning.pytorch.callbacks import TQDMProgressBar
from omegaconf import open_dict

from pscl.callbacks.resume_checkpoint import ResumeCheckpoint
from pscl.training.checkpoint_rng import RandomState
from pscl.training.pretrain_snapshots import PretrainSnapshots
from pscl.training.pretraining import pretraining_callbacks
from pscl.training.stop_on_divergence import StopOnDivergence


def test_pretraining_callbacks_come_from_their_config(tmp_path: Path) -> None:
    cfg = compose_config(["method=simclr", "checkpoint.pretrain_every_n_epochs=7",
                          "callbacks.progress_bar.refresh_rate=3"], tmp_path / "run")
    stage_dir = tmp_path / "elsewhere" / "pretrain"
    callbacks = pretraining_callbacks(cfg, stage_dir)
    assert [type(c) for c in callbacks] == [ResumeCheckpoint, TQDMProgressBar, StopOnDivergence, RandomState]
    saver = callbacks[0]
    assert saver.dirpath == stage_dir / "checkpoints" and saver.every_n_epochs == 7
    assert callbacks[1].refresh_rate == 3  # the fine-tuning progress bar's setting applies to both


def test_without_configured_callbacks_the_stage_keeps_its_own(tmp_path: Path) -> None:
    cfg = compose_config(["method=simclr"], tmp_path / "run")
    with open_dict(cfg):
        cfg.pretrain_callbacks = None
    assert [type(c) for c in pretraining_callbacks(cfg, tmp_path)] == [StopOnDivergence, RandomState]


def test_no_fine_tuning_progress_bar_leaves_pretraining_without_one(tmp_path: Path) -> None:
    cfg = compose_config(["method=simclr", "~callbacks.progress_bar"], tmp_path / "run")
    assert [type(c) for c in pretraining_callbacks(cfg, tmp_path)] == [ResumeCheckpoint, StopOnDivergence, RandomState]


class _Module:
    def transferable_state_dict(self) -> dict:
        import torch

        return {"w": torch.zeros(1)}


@pytest.mark.parametrize(("unit", "key"), [("epoch", "PretrainSnapshots"), ("step", "StepSnapshots")])
def test_snapshots_keep_the_state_keys_of_older_checkpoints(unit: str, key: str, tmp_path: Path) -> None:
    snapshots = PretrainSnapshots([2], tmp_path, {"method": "simclr"}, unit=unit)
    assert snapshots.state_key == key
    restored = PretrainSnapshots([2], tmp_path, unit=unit)
    restored.load_state_dict({"saved": {"2": [str(tmp_path / "x.pt"), 9]}})
    (snapshot,) = restored.snapshots()
    assert (snapshot.epoch, snapshot.steps) == ((2, 9) if unit == "epoch" else (9, 2))


def _trainer(epoch: int, epochs_ended: int, step: int) -> SimpleNamespace:
    """The parts of a Trainer the snapshot callbacks read, in epoch index ``epoch`` with ``current_epoch``
    one behind, as in a step-based fit resumed from an epoch-end checkpoint (Lightning 2.6)."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=epochs_ended))
    return SimpleNamespace(current_epoch=epoch - 1, global_step=step, is_global_zero=True,
                           fit_loop=SimpleNamespace(epoch_progress=progress))


def test_epoch_and_step_snapshots_save_at_their_own_counts(tmp_path: Path) -> None:
    by_epoch = PretrainSnapshots([2], tmp_path, unit="epoch")
    by_step = PretrainSnapshots([5], tmp_path, unit="step")
    module = _Module()
    batches = ((0, 3), (1, 5), (1, 5), (2, 8))  # (epoch index, steps); the accumulation repeat at step 5 saves once
    for k, (epoch, step) in enumerate(batches):
        for callback in (by_epoch, by_step):
            callback.on_train_batch_end(_trainer(epoch, epoch, step), module, None, None, 0)
        if k + 1 == len(batches) or batches[k + 1][0] != epoch:  # Lightning counts the epoch, then the hook
            for callback in (by_epoch, by_step):
                callback.on_train_epoch_end(_trainer(epoch, epoch + 1, step), module)
    assert [(s.epoch, s.steps, s.path.name) for s in by_epoch.snapshots()] == [(2, 5, "epoch_0002.pt")]
    assert [(s.epoch, s.steps, s.path.name) for s in by_step.snapshots()] == [(2, 5, "step_0005.pt")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0002.pt", "step_0005.pt"]


def test_an_unknown_unit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unit must be one of"):
        PretrainSnapshots([1], tmp_path, unit="minute")
