"""Pretraining snapshots: the transferable weights at chosen epochs or optimiser steps (the
pretraining-length study).

At the end of each epoch in ``snapshot_epochs`` or after each optimiser step in ``snapshot_steps``
(:class:`PretrainSnapshots`, counting in one unit or the other) the pretraining module's encoder/decoder weights are written to ``<dirpath>/epoch_<e>.pt`` or
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

from pscl.callbacks.epoch_count import epoch_in_progress, epochs_ended
from pscl.models.transfer import save_pretrained
from pscl.training.pretrain_cache import Snapshot, snapshot_path, step_snapshot_path


UNITS = ("epoch", "step")


def _positive(values: Iterable[int], unit: str) -> list[int]:
    chosen = sorted({int(v) for v in values})
    if any(v < 1 for v in chosen):
        raise ValueError(f"snapshot {unit}s must be >= 1, got {chosen}")
    return chosen


class PretrainSnapshots(pl.Callback):
    """Save ``pl_module.transferable_state_dict()`` at each count in ``at`` (rank 0): after those
    epochs (``unit="epoch"``) or optimiser steps (``unit="step"``).

    ``trainer.global_step`` counts optimiser steps and has already counted this batch's step when
    ``on_train_batch_end`` runs; with gradient accumulation several batches end at the same count,
    and only the first of them (the one that stepped) is saved.
    """

    def __init__(self, at: Iterable[int], dirpath: Path | str, meta: dict | None = None, unit: str = "epoch") -> None:
        if unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
        self.unit = unit
        self.at = _positive(at, unit)
        self.dirpath = Path(dirpath)
        self.meta = dict(meta or {})
        #: count -> (file, the other count: the steps of an epoch snapshot, the epoch of a step one)
        self.saved: dict[int, tuple[Path, int]] = {}

    @property
    def state_key(self) -> str:
        # the keys the two classes this one replaced wrote, so older checkpoints still resume
        return "PretrainSnapshots" if self.unit == "epoch" else "StepSnapshots"

    def state_dict(self) -> dict:
        """The snapshots written so far, so a resumed pretraining still knows the earlier ones."""
        return {"saved": {str(count): [str(path), int(other)] for count, (path, other) in self.saved.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("saved", {})
        self.saved = {int(count): (Path(path), int(other)) for count, (path, other) in saved.items()}

    def snapshots(self) -> list[Snapshot]:
        """The snapshots written so far, shortest first."""
        if self.unit == "epoch":
            return [Snapshot(epoch, steps, path) for epoch, (path, steps) in sorted(self.saved.items())]
        return [Snapshot(epoch, step, path) for step, (path, epoch) in sorted(self.saved.items())]

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, steps: int) -> None:
        count, other = (epoch, steps) if self.unit == "epoch" else (steps, epoch)
        path = (snapshot_path if self.unit == "epoch" else step_snapshot_path)(self.dirpath, count)
        if trainer.is_global_zero:
            save_pretrained(pl_module.transferable_state_dict(), path, {**self.meta, "epoch": epoch, "steps": steps})
        self.saved[count] = (path, other)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = epochs_ended(trainer)
        if self.unit == "epoch" and epoch in self.at:
            self._save(trainer, pl_module, epoch, int(trainer.global_step))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if self.unit == "step" and step in self.at and step not in self.saved:
            self._save(trainer, pl_module, epoch_in_progress(trainer), step)
