"""The checkpoint a run resumes from: ``<dirpath>/last.ckpt``, rewritten every N epochs and at the end.

Lightning's ModelCheckpoint (2.6) writes ``last.ckpt`` only beside a top-k checkpoint, so with
no model selection (pscl never selects on the test set) it wrote it only when fit ended, and a
kill lost everything. This callback saves the full training state (weights, optimiser,
schedules, queues and momentum copies, loop counters, callback states) every
``every_n_epochs`` epochs and when fit ends, through a temporary file and a rename, so a kill
mid-save leaves the previous ``last.ckpt`` whole. It derives from Lightning's ``Checkpoint``, so it
runs after the other callbacks; StopOnDivergence checks the weights of each save before the file
is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint

from pscl.callbacks.epoch_count import epochs_ended

LAST = "last.ckpt"


class ResumeCheckpoint(Checkpoint):
    """Save ``<dirpath>/last.ckpt`` atomically every ``every_n_epochs`` epochs (0: only at the end)."""

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 1) -> None:
        if int(every_n_epochs) < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        self.dirpath = Path(dirpath)
        self.every_n_epochs = int(every_n_epochs)
        self._saved_at_step: int | None = None

    @property
    def last_path(self) -> Path:
        return self.dirpath / LAST

    def save(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` now (every rank must call it; rank 0 writes)."""
        if trainer.fast_dev_run or trainer.sanity_checking or self._saved_at_step == trainer.global_step:
            return
        self._saved_at_step = trainer.global_step
        tmp = self.dirpath / f".{LAST}.{os.getpid()}.tmp"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp, weights_only=False)  # the full state, not weights only
        if trainer.is_global_zero:
            os.replace(tmp, self.last_path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs and epochs_ended(trainer) % self.every_n_epochs == 0:
            self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)
