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

from pscl.contrastive.info_nce import gather, queue_info_nce
from pscl.contrastive.queues import FeatureQueue
from pscl.errors import ConfigError
from pscl.models.base import SegmentationBackbone
from pscl.modules.pretrain_base import MomentumPretrainModule


class MoCoModule(MomentumPretrainModule):
    """``method=moco``; DenseCL extends it with a dense branch."""

    def __init__(self, backbone: SegmentationBackbone, temperature: float = 0.2, queue_size: int = 256,
                 momentum: float = 0.99, hidden_dim: int = 512, out_dim: int = 128, gather_distributed: bool = True,
                 view_options: Mapping[str, Any] | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None, lr: float = 1e-4,
                 num_classes: int | None = None) -> None:
        super().__init__(backbone, optimizer=optimizer, lr=lr, momentum=momentum, view_options=view_options)
        if int(queue_size) < 1:
            raise ConfigError("method.queue_size", f"must be >= 1, got {queue_size}")
        if not temperature > 0:
            raise ConfigError("method.temperature", f"must be > 0, got {temperature}")
        self.save_hyperparameters(ignore=["backbone", "optimizer", "num_classes"])
        self.projection = MoCoProjectionHead(backbone.bottleneck_channels, hidden_dim, out_dim)
        self.add_momentum_copy("backbone")
        self.add_momentum_copy("projection")
        self.queue = FeatureQueue(int(queue_size), out_dim)

    def query_and_key(self, views: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Bottleneck grids and global embeddings of both views: ``grid_q, query, grid_k, key``.

        The EMA step comes between the query and the key network (MoCo); the key is normalised and
        carries no gradient.
        """
        grid_q = self.encode(views["x0"])
        query = self.projection(grid_q.mean(dim=(2, 3)))
        self.update_momentum_copies()
        with torch.no_grad():
            grid_k = self.backbone_momentum.forward_bottleneck(views["x1"])
            key = F.normalize(self.projection_momentum(grid_k.mean(dim=(2, 3))), dim=1)
        return grid_q, query, grid_k, key

    def push(self, queue: FeatureQueue, entries: torch.Tensor) -> None:
        """Enqueue this step's ``entries`` (from every DDP rank when ``gather_distributed``)."""
        queue.enqueue(gather(entries) if self.hparams.gather_distributed else entries, step=int(self.global_step))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        views = batch["unlabeled"]
        _, query, _, key = self.query_and_key(views)
        loss = queue_info_nce(query, key, self.queue.features, self.hparams.temperature, self.queue.valid)
        self.push(self.queue, key)
        self.log_losses({"loss": loss, "momentum": torch.tensor(self.current_momentum())},
                        batch_size=views["x0"].shape[0])
        return loss
