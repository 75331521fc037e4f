"""Supervised segmentation LightningModule: the no-pretraining baseline and the fine-tuner.

Loss: ``ce_weight * weighted CE + dice_weight * soft Dice over foreground classes`` (paper:
0.5 / 0.5, CE weights [1, 1, 10, 10]). Adam with one learning rate for the encoder and another
for the decoder and classifier (paper fine-tuning: 1e-4 / 1e-3; supervised baseline: 1e-3 for
both). Validation (only when the data has a ``val`` split) and test report the metrics of
:mod:`pscl.metrics` as ``val/...`` and ``test/...``.

Two fine-tuning options for pretrained networks (chosen on validation data, docs/results.md):

* ``encoder_warmup_epochs``: the encoder's learning rate is 0 for the first epochs, so the
  decoder and classifier adapt to the pretrained features before the encoder moves;
* ``freeze_pretrained_bn``: BatchNorm layers that arrive with pretraining statistics
  (``num_batches_tracked > 0``) keep them: they normalise with their running statistics and do
  not update them. A randomly initialised layer is never frozen, so the supervised baseline is
  unaffected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from pscl.errors import ConfigError
from pscl.losses.ce_dice import segmentation_loss
from pscl.metrics import SegmentationMetrics
from pscl.models.base import SegmentationBackbone


class SegmentationModule(pl.LightningModule):
    """Trains ``backbone`` for per-pixel classification; see the module docstring."""

    def __init__(
        self,
        backbone: SegmentationBackbone,
        class_names: Sequence[str],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        encoder_lr: float = 1e-3,
        decoder_lr: float = 1e-3,
        class_weights: Sequence[float] | None = None,
        ce_weight: float = 0.5,
        dice_weight: float = 0.5,
        encoder_warmup_epochs: int = 0,
        freeze_pretrained_bn: bool = False,
    ) -> None:
        super().__init__()
        if len(class_names) != backbone.num_classes:
            raise ConfigError("num_classes", f"backbone predicts {backbone.num_classes} classes, data has {len(class_names)}")
        if ce_weight < 0 or dice_weight < 0 or ce_weight + dice_weight == 0:
            raise ConfigError("finetune.module.ce_weight/dice_weight", "must be >= 0 and not both 0")
        for key, lr in (("finetune.module.encoder_lr", encoder_lr), ("finetune.module.decoder_lr", decoder_lr)):
            if not lr > 0:
                raise ConfigError(key, f"learning rate must be > 0, got {lr}")
        if int(encoder_warmup_epochs) < 0:
            raise ConfigError("finetune.module.encoder_warmup_epochs", f"must be >= 0, got {encoder_warmup_epochs}")
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.backbone = backbone
        self.class_names = tuple(class_names)
        self.optimizer_factory = optimizer or torch.optim.Adam
        weights = torch.as_tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.dice_classes = tuple(range(1, len(class_names)))
        self.val_metrics = SegmentationMetrics(class_names)
        self.test_metrics = SegmentationMetrics(class_names)
        self.test_results: dict[str, float] = {}
        #: periodic test evaluations during training (eval.protocol=paper; pscl.training.periodic_test)
        self.test_history: list[dict[str, float]] = []
        # BatchNorm layers holding pretraining statistics, frozen when freeze_pretrained_bn
        self.frozen_bn = [m for m in backbone.modules()
                          if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
                          and int(m.num_batches_tracked) > 0] if freeze_pretrained_bn else []
        self._freeze_bn()

    def _freeze_bn(self) -> None:
        # Lightning keeps the modes it is given (it does not call train() when fitting starts)
        for module in self.frozen_bn:
            module.train(False)

    def on_train_start(self) -> None:
        self._freeze_bn()

    def train(self, mode: bool = True) -> "SegmentationModule":
        """Train mode, except that frozen BatchNorm layers stay in eval mode (running statistics kept)."""
        super().train(mode)
        self._freeze_bn()
        return self

    def on_train_epoch_start(self) -> None:
        self._freeze_bn()  # also after a validation loop has restored the modes it found
        warmup = int(self.hparams.encoder_warmup_epochs)
        if warmup:
            # lr 0 rather than requires_grad=False: the same parameters train every step, as DDP expects
            lr = 0.0 if self.current_epoch < warmup else float(self.hparams.encoder_lr)
            for optimizer in self.trainer.optimizers:
                for group in optimizer.param_groups:
                    if group.get("name") == "encoder":
                        group["lr"] = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image -> (B, num_classes, H, W) logits."""
        return self.backbone(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        terms = segmentation_loss(logits, batch["mask"], self.class_weights, self.dice_classes,
                                  self.hparams.ce_weight, self.hparams.dice_weight)
        batch_size = batch["image"].shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict({"train/ce": terms["ce"], "train/dice_loss": terms["dice"]}, batch_size=batch_size)
        return terms["loss"]

    def _evaluate(self, batch: dict[str, Any], metrics: SegmentationMetrics) -> torch.Tensor:
        preds = self(batch["image"]).argmax(dim=1)
        metrics.update(preds, batch["mask"])
        return preds

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        if self.val_metrics.num_updates:
            values = self.val_metrics.compute()
            # values are already synchronised by torchmetrics; sync_dist only averages equal numbers
            self.log_dict({f"val/{k}": v for k, v in values.items() if k != "dice"}, sync_dist=True)
            self.log("val/dice", values["dice"], prog_bar=True, sync_dist=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"preds": self._evaluate(batch, self.test_metrics)}

    def on_test_epoch_end(self) -> None:
        self.test_results = self.test_metrics.compute()
        self.log_dict({f"test/{k}": v for k, v in self.test_results.items()}, sync_dist=True)
        self.test_metrics.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        decoder_params = list(self.backbone.decoder.parameters()) + list(self.backbone.classifier.parameters())
        groups = [
            {"params": list(self.backbone.encoder.parameters()), "lr": self.hparams.encoder_lr, "name": "encoder"},
            {"params": decoder_params, "lr": self.hparams.decoder_lr, "name": "decoder"},
        ]
        return self.optimizer_factory(groups)
