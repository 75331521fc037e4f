"""The authors' evaluation protocol: test the model every few epochs during fine-tuning.

With ``eval.protocol=paper`` the fine-tuning run evaluates on the test set every
``every_n_epochs`` epochs (spec §8.2: five points per run) and records each point; the report
then takes the best Dice of those points, as the paper did. This selects on the test set, so it
is not the default (``eval.protocol=final`` reports the final model only). The evaluation runs in
eval mode, without gradients, and leaves the random state untouched, so training is the same
with or without it.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from pscl.callbacks.epoch_count import epochs_ended
from pscl.metrics import SegmentationMetrics


class PeriodicTest(pl.Callback):
    """Appends ``{"epoch", "dice", "acc", ...}`` to ``pl_module.test_history`` every ``every_n_epochs``."""

    def __init__(self, every_n_epochs: int) -> None:
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = int(every_n_epochs)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = epochs_ended(trainer)
        # only rank 0 reports the run's results; the other ranks' points would be discarded
        if epoch % self.every_n_epochs or not trainer.is_global_zero:
            return
        metrics = SegmentationMetrics(pl_module.class_names).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        # building the loader reseeds its dataset from torch's generator: keep training's stream intact
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for batch in trainer.datamodule.test_dataloader():
                image = batch["image"].to(pl_module.device)
                metrics.update(pl_module(image).argmax(dim=1), batch["mask"].to(pl_module.device))
        pl_module.train(was_training)
        values = {"epoch": epoch, **metrics.compute()}
        pl_module.test_history.append(values)
        pl_module.log_dict({"periodic_test/dice": values["dice"], "periodic_test/acc": values["acc"]},
                           rank_zero_only=True)
