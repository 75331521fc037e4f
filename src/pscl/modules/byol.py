"""BYOL (Grill et al. 2020) on the UNet encoder: no negatives, an online predictor, an EMA target.

Online: encoder -> pooled bottleneck -> projector -> predictor (lightly's BYOL heads). Target:
EMA copy of encoder and projector, momentum rising from ``momentum`` to 1 on a cosine schedule.
Symmetric loss: negative cosine similarity of each view's prediction with the other view's
target projection (lightly's ``NegativeCosineSimilarity``; equals BYOL's 2 - 2 cos up to an
affine map).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

from pscl.models.base import SegmentationBackbone
from pscl.modules.pretrain_base import MomentumPretrainModule


class BYOLModule(MomentumPretrainModule):
    """``method=byol``."""

    min_batch_size = 2  # the projection and prediction heads' BatchNorm1d needs two images

    def __init__(self, backbone: SegmentationBackbone, momentum: float = 0.99, hidden_dim: int = 512,
                 out_dim: int = 128, view_options: Mapping[str, Any] | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None, lr: float = 1e-4,
                 num_classes: int | None = None) -> None:
        super().__init__(backbone, optimizer=optimizer, lr=lr, momentum=momentum, momentum_schedule="cosine",
                         view_options=view_options)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "num_classes"])
        self.projection = BYOLProjectionHead(backbone.bottleneck_channels, hidden_dim, out_dim)
        self.prediction = BYOLPredictionHead(out_dim, hidden_dim, out_dim)
        self.add_momentum_copy("backbone")
        self.add_momentum_copy("projection")
        self.criterion = NegativeCosineSimilarity()

    def _online(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction(self.projection(self.encode(x).mean(dim=(2, 3))))

    @torch.no_grad()
    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_momentum(self.backbone_momentum.forward_bottleneck(x).mean(dim=(2, 3)))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        views = batch["unlabeled"]
        momentum = self.update_momentum_copies()
        p0, p1 = self._online(views["x0"]), self._online(views["x1"])
        z0, z1 = self._target(views["x0"]), self._target(views["x1"])
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        self.log_losses({"loss": loss, "momentum": torch.tensor(momentum)}, batch_size=views["x0"].shape[0])
        return loss
