"""DenseCL (Wang et al. 2021) on the UNet encoder: MoCo v2 plus a dense branch on the bottleneck grid.

* Global branch: MoCo v2 (:class:`pscl.modules.moco.MoCoModule`: pooled bottleneck -> MLP head,
  EMA key network, queue of keys).
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
from lightly.models.modules import DenseCLProjectionHead
from lightly.models.utils import select_most_similar

from pscl.contrastive.info_nce import queue_info_nce
from pscl.contrastive.queues import FeatureQueue
from pscl.errors import ConfigError
from pscl.models.base import SegmentationBackbone
from pscl.modules.moco import MoCoModule


def grid_rows(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h * w, C)."""
    return grid.flatten(2).transpose(1, 2)


class DenseCLModule(MoCoModule):
    """``method=densecl``."""

    def __init__(self, backbone: SegmentationBackbone, temperature: float = 0.2, queue_size: int = 256,
                 momentum: float = 0.99, dense_weight: float = 0.5, hidden_dim: int = 512, out_dim: int = 128,
                 gather_distributed: bool = True, view_options: Mapping[str, Any] | None = None,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None, lr: float = 1e-4,
                 num_classes: int | None = None) -> None:
        if not 0.0 <= dense_weight <= 1.0:
            raise ConfigError("method.dense_weight", f"must lie in [0, 1], got {dense_weight}")
        super().__init__(backbone, temperature=temperature, queue_size=queue_size, momentum=momentum,
                         hidden_dim=hidden_dim, out_dim=out_dim, gather_distributed=gather_distributed,
                         view_options=view_options, optimizer=optimizer, lr=lr)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "num_classes"])
        self.dense_projection = DenseCLProjectionHead(backbone.bottleneck_channels, hidden_dim, out_dim)
        self.add_momentum_copy("dense_projection")
        self.dense_queue = FeatureQueue(int(queue_size), out_dim)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        views = batch["unlabeled"]
        grid_q, query, grid_k, key = self.query_and_key(views)
        query_dense = self.dense_projection(grid_rows(grid_q))  # (B, h*w, D)
        with torch.no_grad():
            key_dense = F.normalize(self.dense_projection_momentum(grid_rows(grid_k)), dim=2)
            # positive of each query cell: the key cell with the most similar backbone feature
            matched = select_most_similar(grid_rows(grid_q.detach()), grid_rows(grid_k), key_dense)
            pooled_dense = F.normalize(key_dense.mean(dim=1), dim=1)
        global_loss = queue_info_nce(query, key, self.queue.features, hp.temperature, self.queue.valid)
        dense_loss = queue_info_nce(query_dense.flatten(0, 1), matched.flatten(0, 1), self.dense_queue.features,
                                    hp.temperature, self.dense_queue.valid)
        loss = (1 - hp.dense_weight) * global_loss + hp.dense_weight * dense_loss
        self.push(self.queue, key)
        self.push(self.dense_queue, pooled_dense)
        self.log_losses({"loss": loss, "global_loss": global_loss, "dense_loss": dense_loss,
                         "momentum": torch.tensor(self.current_momentum())}, batch_size=views["x0"].shape[0])
        return loss
