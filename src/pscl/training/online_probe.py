"""Online dense linear probe during pretraining (as solo-learn does with its online linear / kNN eval).

Every ``every_n_epochs`` epochs (and once before the first step) the pretraining backbone is
probed (:func:`pscl.probe.probe_backbone`) and ``probe/dice`` and ``probe/acc`` are logged to
every logger at the current step, so TensorBoard shows whether pretraining learns anything
useful. The floor, the same probe on a randomly initialised backbone, is logged once as
``probe/random_init_dice``. With a TensorBoard logger, the same cadence also logs pixels of the
first annotated image (``projector_pixels`` per class, the probe's features) with their class to
TensorBoard's projector (``probe/pixels``). Only rank 0 probes; training's random stream is untouched.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from pscl.callbacks.epoch_count import epochs_ended
from pscl.probe.evaluate import ProbeSettings, probe_backbone
from pscl.probe.features import dense_features
from pscl.probe.linear import sample_pixels


class OnlineProbe(pl.Callback):
    """Probe ``pl_module.backbone`` every ``every_n_epochs``; points are kept in :attr:`history`."""

    def __init__(self, every_n_epochs: int, settings: ProbeSettings = ProbeSettings(), split: str = "test",
                 floor: bool = True, projector_pixels: int = 64) -> None:
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = int(every_n_epochs)
        self.settings = settings
        self.split = split
        self.floor = floor
        self.projector_pixels = int(projector_pixels)  # per class; 0 = no projector
        self.history: list[dict[str, Any]] = []

    def _log(self, trainer: pl.Trainer, values: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(values, step=int(trainer.global_step))

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        values = probe_backbone(pl_module.backbone, trainer.datamodule, self.settings, self.split)
        point = {"epoch": epoch, "steps": int(trainer.global_step), "dice": values["dice"], "acc": values["acc"]}
        self.history.append(point)
        self._log(trainer, {"probe/dice": values["dice"], "probe/acc": values["acc"]})
        self._project(trainer, pl_module)

    def _project(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log sampled pixels of the first annotated image, with their class names, to every
        TensorBoard logger's projector (``add_embedding``), at the probe's step."""
        loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        datamodule = trainer.datamodule
        if not loggers or self.projector_pixels < 1 or not datamodule.labeled_ids:
            return
        item = datamodule.whole_image_dataset(datamodule.labeled_ids[:1])[0]
        backbone = pl_module.backbone
        was_training = backbone.training
        backbone.eval()  # as the probe reads it: BatchNorm's running statistics stay as they are
        try:
            device = next(backbone.parameters()).device
            maps = dense_features(backbone, item["image"].unsqueeze(0).to(device), self.settings.features)[0].cpu()
        finally:
            backbone.train(was_training)
        generator = torch.Generator().manual_seed(int(self.settings.seed))  # not the global stream
        rows, labels = sample_pixels(maps, item["mask"], datamodule.num_classes, self.projector_pixels, generator)
        names = [datamodule.class_names[int(c)] for c in labels]
        for logger in loggers:
            logger.experiment.add_embedding(rows, metadata=names, global_step=int(trainer.global_step),
                                            tag="probe/pixels")

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(point) for point in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(point) for point in state_dict.get("history", [])]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self.floor:
            fresh = copy.deepcopy(pl_module.backbone)
            with torch.random.fork_rng(devices=[]):  # re-initialising draws random numbers
                torch.manual_seed(int(self.settings.seed))
                for module in fresh.modules():
                    if module is not fresh and hasattr(module, "reset_parameters"):
                        module.reset_parameters()
                    if hasattr(module, "reset_running_stats"):
                        module.reset_running_stats()
            floor = probe_backbone(fresh, trainer.datamodule, self.settings, self.split)
            self._log(trainer, {"probe/random_init_dice": floor["dice"]})
        if trainer.global_step == 0:
            self._probe(trainer, pl_module, 0)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = epochs_ended(trainer)
        if epoch % self.every_n_epochs == 0 and trainer.is_global_zero:
            self._probe(trainer, pl_module, epoch)
