"""Pretraining snapshots: the transferable weights at chosen epochs or optimiser steps (the
pretraining-length study).

At the end of each epoch in ``epochs`` (:class:`PretrainSnapshots`, ``snapshot_epochs``) or after
each optimiser step in ``steps`` (:class:`StepSnapshots`, ``snapshot_steps``) the pretraining
module's encoder/decoder weights are written to ``<dirpath>/epoch_<e>.pt`` or
``<dirpath>/step_<s>.pt`` (the format of ``pretrained.pt``, with the epoch and the optimiser steps
in its meta), so one long pretraining yields the weights of several shorter ones. Methods without
a schedule that depends on the total length (PSCL, SimCLR, MoCo, DenseCL) give at epoch e / step s
exactly what a pretraining of that length gives; BYOL's momentum follows the whole length. The files
are named as in a cache entry (:func:`pscl.training.pretrain_cache.snapshot_path`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lightning.pytorch as pl

from pscl.models.transfer import save_pretrained
from pscl.training.pretrain_cache import Snapshot, snapshot_path, step_snapshot_path


def _positive(values: Iterable[int], what: str) -> list[int]:
    chosen = sorted({int(v) for v in values})
    if any(v < 1 for v in chosen):
        raise ValueError(f"snapshot {what} must be >= 1, got {chosen}")
    return chosen


class PretrainSnapshots(pl.Callback):
    """Save ``pl_module.transferable_state_dict()`` after each epoch in ``epochs`` (rank 0)."""

    def __init__(self, epochs: Iterable[int], dirpath: Path | str, meta: dict | None = None) -> None:
        self.epochs = _positive(epochs, "epochs")
        self.dirpath = Path(dirpath)
        self.meta = dict(meta or {})
        #: epoch -> (file, optimiser steps) of the snapshots written so far
        self.saved: dict[int, tuple[Path, int]] = {}

    def state_dict(self) -> dict:
        """The snapshots written so far, so a resumed pretraining still knows the earlier ones."""
        return {"saved": {str(epoch): [str(path), int(steps)] for epoch, (path, steps) in self.saved.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.saved = {int(epoch): (Path(path), int(steps)) for epoch, (path, steps) in state_dict.get("saved", {}).items()}

    def snapshots(self) -> list[Snapshot]:
        """The snapshots written so far, shortest first."""
        return [Snapshot(epoch, steps, path) for epoch, (path, steps) in sorted(self.saved.items())]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch not in self.epochs:
            return
        steps = int(trainer.global_step)
        path = snapshot_path(self.dirpath, epoch)
        if trainer.is_global_zero:
            save_pretrained(pl_module.transferable_state_dict(), path, {**self.meta, "epoch": epoch, "steps": steps})
        self.saved[epoch] = (path, steps)


class StepSnapshots(pl.Callback):
    """Save ``pl_module.transferable_state_dict()`` after each optimiser step in ``steps`` (rank 0).

    ``trainer.global_step`` counts optimiser steps and has already counted this batch's step when
    ``on_train_batch_end`` runs; with gradient accumulation several batches end at the same count,
    and only the first of them (the one that stepped) is saved.
    """

    def __init__(self, steps: Iterable[int], dirpath: Path | str, meta: dict | None = None) -> None:
        self.steps = _positive(steps, "steps")
        self.dirpath = Path(dirpath)
        self.meta = dict(meta or {})
        #: step -> (file, the epoch it fell in) of the snapshots written so far
        self.saved: dict[int, tuple[Path, int]] = {}

    def state_dict(self) -> dict:
        """The snapshots written so far, so a resumed pretraining still knows the earlier ones."""
        return {"saved": {str(step): [str(path), int(epoch)] for step, (path, epoch) in self.saved.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("saved", {})
        self.saved = {int(step): (Path(path), int(epoch)) for step, (path, epoch) in saved.items()}

    def snapshots(self) -> list[Snapshot]:
        """The snapshots written so far, shortest first."""
        return [Snapshot(epoch, step, path) for step, (path, epoch) in sorted(self.saved.items())]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if step not in self.steps or step in self.saved:
            return
        epoch = trainer.current_epoch + 1
        path = step_snapshot_path(self.dirpath, step)
        if trainer.is_global_zero:
            save_pretrained(pl_module.transferable_state_dict(), path, {**self.meta, "epoch": epoch, "steps": step})
        self.saved[step] = (path, epoch)
