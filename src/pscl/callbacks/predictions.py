"""Saves test predictions as class-index PNGs and colour overlays, and shows a few in TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from pscl.quantify.colours import colour_overlay


class PredictionWriter(pl.Callback):
    """Writes ``<dirpath>/<id>.png`` (class indices) and ``<dirpath>/overlay/<id>.png`` for each test image.

    The first ``num_logged`` overlays also go to TensorBoard as ``test/prediction/<id>``.
    """

    def __init__(self, dirpath: str | Path, num_logged: int = 4, save_overlays: bool = True) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.num_logged = num_logged
        self.save_overlays = save_overlays
        self._logged = 0

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._logged = 0
        if not trainer.fast_dev_run:
            (self.dirpath / "overlay").mkdir(parents=True, exist_ok=True)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                          batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict) or "preds" not in outputs or trainer.fast_dev_run:
            return  # debug=fast_dev_run saves nothing
        preds = outputs["preds"].detach().cpu().numpy().astype(np.uint8)
        images = batch["image"].detach().float().cpu().numpy()
        datamodule = getattr(trainer, "datamodule", None)
        mean = float(np.mean(getattr(datamodule, "mean", (0.0,)) or (0.0,)))
        std = float(np.mean(getattr(datamodule, "std", (1.0,)) or (1.0,)))
        for pred, image, sample_id in zip(preds, images, batch["id"]):
            Image.fromarray(pred).save(self.dirpath / f"{sample_id}.png")
            if not self.save_overlays and self._logged >= self.num_logged:
                continue
            grey = image.mean(axis=0) * std + mean
            overlay = colour_overlay(grey, pred)
            if self.save_overlays:
                Image.fromarray(overlay).save(self.dirpath / "overlay" / f"{sample_id}.png")
            if self._logged < self.num_logged:
                for logger in trainer.loggers:
                    if isinstance(logger, TensorBoardLogger):
                        logger.experiment.add_image(f"test/prediction/{sample_id}", overlay, trainer.global_step,
                                                    dataformats="HWC")
                self._logged += 1
