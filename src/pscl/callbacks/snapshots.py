"""Pretraining snapshots: the transferable weights at chosen epochs (the pretraining-length study).

At the end of each epoch in ``epochs`` the pretraining module's encoder/decoder weights are
written to ``<dirpath>/epoch_<e>.pt`` (the format of ``pretrained.pt``, with the epoch and the
optimiser steps so far in its meta), so one long pretraining yields the weights of several
shorter ones. Methods without a schedule that depends on the total length (PSCL, SimCLR, MoCo,
DenseCL) give at epoch e exactly what an e-epoch pretraining gives.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import lightning.pytorch as pl

from pscl.transfer import save_pretrained


def snapshot_path(dirpath: Path, epoch: int) -> Path:
    return Path(dirpath) / f"epoch_{int(epoch):04d}.pt"


class PretrainSnapshots(pl.Callback):
    """Save ``pl_module.transferable_state_dict()`` after each epoch in ``epochs`` (rank 0)."""

    def __init__(self, epochs: Iterable[int], dirpath: Path | str, meta: dict | None = None) -> None:
        self.epochs = sorted({int(e) for e in epochs})
        if any(e < 1 for e in self.epochs):
            raise ValueError(f"snapshot epochs must be >= 1, got {self.epochs}")
        self.dirpath = Path(dirpath)
        self.meta = dict(meta or {})
        #: epoch -> (file, optimiser steps) of the snapshots written so far
        self.saved: dict[int, tuple[Path, int]] = {}

    def state_dict(self) -> dict:
        """The snapshots written so far, so a resumed pretraining still knows the earlier ones."""
        return {"saved": {str(epoch): [str(path), int(steps)] for epoch, (path, steps) in self.saved.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.saved = {int(epoch): (Path(path), int(steps)) for epoch, (path, steps) in state_dict.get("saved", {}).items()}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch not in self.epochs:
            return
        steps = int(trainer.global_step)
        path = snapshot_path(self.dirpath, epoch)
        if trainer.is_global_zero:
            save_pretrained(pl_module.transferable_state_dict(), path, {**self.meta, "epoch": epoch, "steps": steps})
        self.saved[epoch] = (path, steps)
