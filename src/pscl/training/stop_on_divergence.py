"""Stop a stage the moment training diverges, before anything non-finite is saved.

:class:`StopOnDivergence` checks the training loss after every step and the weights at the end
of every epoch (before Lightning's ModelCheckpoint, which runs after the other callbacks, saves
them). Either non-finite raises :class:`~pscl.integrity.NonFiniteError` naming the stage, the
step and the last checkpoint, which is therefore finite and kept.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from pscl.integrity import NonFiniteError, first_non_finite


def _loss_value(outputs: Any) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return float(loss.detach())
    return None


class StopOnDivergence(pl.Callback):
    """Raise :class:`NonFiniteError` on a non-finite training loss or weight; ``stage`` names the stage."""

    def __init__(self, stage: str, checkpoint_dir: Path | str | None = None) -> None:
        self.stage = stage
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None

    def _last_checkpoint(self) -> str:
        last = self.checkpoint_dir / "last.ckpt" if self.checkpoint_dir is not None else None
        if last is not None and last.is_file():
            return f"the last finite checkpoint is kept: {last}"
        return "no checkpoint had been saved yet"

    def _stop(self, trainer: pl.Trainer, what: str) -> None:
        raise NonFiniteError(
            f"{self.stage} diverged: {what} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
            f"{self._last_checkpoint()}\n  fix: lower the learning rate (or raise the temperature), or check "
            "the data for constant or corrupt images")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = _loss_value(outputs)
        if loss is not None and not math.isfinite(loss):
            self._stop(trainer, f"the training loss became {loss}")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        key = first_non_finite(checkpoint.get("state_dict", {}))
        if key is not None:
            self._stop(trainer, f"the weight {key} became non-finite")
