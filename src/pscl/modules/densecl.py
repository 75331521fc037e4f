"""DenseCL (Wang et al. 2021) on the UNet encoder: MoCo v2 plus a dense branch on the bottleneck grid.

* Global branch: MoCo v2 (pooled bottleneck -> MLP head, EMA key network, queue of keys).
* Dense branch: lightly's DenseCL head applied to every cell of the bottleneck grid. Each query
  cell's positive is the key cell whose *backbone* feature is most cosine-similar to its own
  (``lightly.models.utils.select_most_similar``; no geometry is used, unlike PSCL). Negatives are
  a second queue holding one vector per key image, its dense key embeddings averaged.
* Loss = (1 - dense_weight) * global + dense_weight * dense (DenseCL: 0.5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from lightly.models.modules import DenseCLProjectionHead, MoCoProjectionHead
from lightly.models.utils import select_most_similar

from pscl.contrastive.losses import gather, queue_info_nce
from pscl.contrastive.queues import FeatureQueue
from pscl.errors import ConfigError
from pscl.models.base import SegmentationBackbone
from pscl.modules.moco import check_queue
from pscl.modules.pretrain_base import MomentumPretrainModule


def grid_rows(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h * w, C)."""
    return grid.flatten(2).transpose(1, 2)


class DenseCLModule(MomentumPretrainModule):
    """``method=densecl``."""

    def __init__(self, backbone: SegmentationBackbone, temperature: float = 0.2, queue_size: int = 256,
                 momentum: float = 0.99, dense_weight: float = 0.5, hidden_dim: int = 512, out_dim: int = 128,
                 gather_distributed: bool = True, view_options: Mapping[str, Any] | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None, lr: float = 1e-4,
                 num_classes: int | None = None) -> None:
        super().__init__(backbone, optimizer=optimizer, lr=lr, momentum=momentum, view_options=view_options)
        check_queue(queue_size, temperature)
        if not 0.0 <= dense_weight <= 1.0:
            raise ConfigError("method.dense_weight", f"must lie in [0, 1], got {dense_weight}")
        self.save_hyperparameters(ignore=["backbone", "optimizer", "num_classes"])
        channels = backbone.bottleneck_channels
        self.projection = MoCoProjectionHead(channels, hidden_dim, out_dim)
        self.dense_projection = DenseCLProjectionHead(channels, hidden_dim, out_dim)
        for name in ("backbone", "projection", "dense_projection"):
            self.add_momentum_copy(name)
        self.queue = FeatureQueue(int(queue_size), out_dim)
        self.dense_queue = FeatureQueue(int(queue_size), out_dim)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        views = batch["unlabeled"]
        grid_q = self.encode(views["x0"])  # (B, C, h, w)
        query = self.projection(grid_q.mean(dim=(2, 3)))
        query_dense = self.dense_projection(grid_rows(grid_q))  # (B, h*w, D)
        momentum = self.update_momentum_copies()
        with torch.no_grad():
            grid_k = self.backbone_momentum.forward_bottleneck(views["x1"])
            key = F.normalize(self.projection_momentum(grid_k.mean(dim=(2, 3))), dim=1)
            key_dense = F.normalize(self.dense_projection_momentum(grid_rows(grid_k)), dim=2)
            # positive of each query cell: the key cell with the most similar backbone feature
            matched = select_most_similar(grid_rows(grid_q.detach()), grid_rows(grid_k), key_dense)
            pooled_dense = F.normalize(key_dense.mean(dim=1), dim=1)
        global_loss = queue_info_nce(query, key, self.queue.features, hp.temperature, self.queue.valid)
        dense_loss = queue_info_nce(query_dense.flatten(0, 1), matched.flatten(0, 1), self.dense_queue.features,
                                    hp.temperature, self.dense_queue.valid)
        loss = (1 - hp.dense_weight) * global_loss + hp.dense_weight * dense_loss
        step = int(self.global_step)
        for queue, entries in ((self.queue, key), (self.dense_queue, pooled_dense)):
            entries = gather(entries) if hp.gather_distributed else entries
            queue.enqueue(entries, torch.full((entries.shape[0],), -1, dtype=torch.long, device=entries.device),
                          step=step)
        self.log_losses({"loss": loss, "global_loss": global_loss, "dense_loss": dense_loss,
                         "momentum": torch.tensor(momentum)}, batch_size=views["x0"].shape[0])
        return loss
