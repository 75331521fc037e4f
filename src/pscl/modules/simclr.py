"""SimCLR (Chen et al. 2020) on the UNet encoder: NT-Xent between two augmented views.

Pooled bottleneck -> lightly's SimCLR projection head (Linear-BN-ReLU-Linear) -> NT-Xent
(lightly, negatives gathered over DDP ranks). Only the encoder is trained; the decoder keeps its
initialisation (docs/method.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightly.models.modules import SimCLRProjectionHead

from pscl.contrastive.info_nce import nt_xent
from pscl.errors import ConfigError
from pscl.models.base import SegmentationBackbone
from pscl.modules.pretrain_base import PretrainModule


class SimCLRModule(PretrainModule):
    """``method=simclr``."""

    min_batch_size = 2  # the projection head's BatchNorm1d needs two images, and NT-Xent a negative

    def __init__(self, backbone: SegmentationBackbone, temperature: float = 0.5, hidden_dim: int = 512,
                 out_dim: int = 128, gather_distributed: bool = True, view_options: Mapping[str, Any] | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None, lr: float = 1e-4,
                 num_classes: int | None = None) -> None:
        super().__init__(backbone, optimizer=optimizer, lr=lr, view_options=view_options)
        if not temperature > 0:
            raise ConfigError("method.temperature", f"must be > 0, got {temperature}")
        self.save_hyperparameters(ignore=["backbone", "optimizer", "num_classes"])
        self.projection = SimCLRProjectionHead(backbone.bottleneck_channels, hidden_dim, out_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encode(x).mean(dim=(2, 3)))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        views = batch["unlabeled"]
        loss = nt_xent(self.embed(views["x0"]), self.embed(views["x1"]), self.hparams.temperature,
                       gather_distributed=self.hparams.gather_distributed)
        self.log_losses({"loss": loss}, batch_size=views["x0"].shape[0])
        return loss
