"""MoCo v2 (Chen et al. 2020, "Improved baselines") on the UNet encoder.

Query: encoder -> pooled bottleneck -> MLP head (lightly's MoCo head). Key: the EMA copy of both
(lightly's ``update_momentum``). InfoNCE of each query against its key (positive) and a queue of
earlier keys (negatives), temperature 0.2. The queue is a :class:`FeatureQueue`: a checkpoint
restores it, and slots not yet written are never used as negatives. Without several GPUs there
is no shuffled BatchNorm; like most single-device MoCo reimplementations we do without it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from lightly.models.modules import MoCoProjectionHead

from pscl.contrastive.losses import gather, queue_info_nce
from pscl.contrastive.queues import FeatureQueue
from pscl.errors import ConfigError
from pscl.models.base import SegmentationBackbone
from pscl.modules.pretrain_base import MomentumPretrainModule


def check_queue(queue_size: int, temperature: float) -> None:
    if int(queue_size) < 1:
        raise ConfigError("method.queue_size", f"must be >= 1, got {queue_size}")
    if not temperature > 0:
        raise ConfigError("method.temperature", f"must be > 0, got {temperature}")


class MoCoModule(MomentumPretrainModule):
    """``method=moco``."""

    def __init__(self, backbone: SegmentationBackbone, temperature: float = 0.2, queue_size: int = 256,
                 momentum: float = 0.99, hidden_dim: int = 512, out_dim: int = 128, gather_distributed: bool = True,
                 view_options: Mapping[str, Any] | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None, lr: float = 1e-4,
                 num_classes: int | None = None) -> None:
        super().__init__(backbone, optimizer=optimizer, lr=lr, momentum=momentum, view_options=view_options)
        check_queue(queue_size, temperature)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "num_classes"])
        self.projection = MoCoProjectionHead(backbone.bottleneck_channels, hidden_dim, out_dim)
        self.add_momentum_copy("backbone")
        self.add_momentum_copy("projection")
        self.queue = FeatureQueue(int(queue_size), out_dim)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        views = batch["unlabeled"]
        query = self.projection(self.encode(views["x0"]).mean(dim=(2, 3)))
        momentum = self.update_momentum_copies()
        with torch.no_grad():
            key = F.normalize(self.projection_momentum(
                self.backbone_momentum.forward_bottleneck(views["x1"]).mean(dim=(2, 3))), dim=1)
        loss = queue_info_nce(query, key, self.queue.features, self.hparams.temperature, self.queue.valid)
        keys = gather(key) if self.hparams.gather_distributed else key
        self.queue.enqueue(keys, torch.full((keys.shape[0],), -1, dtype=torch.long, device=keys.device),
                           step=int(self.global_step))
        self.log_losses({"loss": loss, "momentum": torch.tensor(momentum)}, batch_size=views["x0"].shape[0])
        return loss
