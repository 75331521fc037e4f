"""Projection heads for pretraining (discarded before fine-tuning; spec §3).

* :class:`GlobalProjectionHead` - image level: global average pooling of the bottleneck, then
  Linear -> ReLU -> Linear to a 64-d vector.
* :class:`DenseProjectionHead` - patch level, one per decoder scale: grouped 1x1 conv ->
  per-pixel channel LayerNorm -> ReLU -> grouped 1x1 conv to 64 channels ("multi-head" = 4
  independent channel groups).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pscl.models.unet import ChannelLayerNorm


class GlobalProjectionHead(nn.Module):
    """(B, C, h, w) bottleneck -> (B, out_dim) image embedding."""

    def __init__(self, in_channels: int, hidden_dim: int = 128, out_dim: int = 64) -> None:
        super().__init__()
        hidden = min(hidden_dim, in_channels)
        self.mlp = nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.mean(dim=(2, 3)))


class DenseProjectionHead(nn.Module):
    """(B, C, h, w) decoder map -> (B, out_dim, h, w) per-cell embeddings."""

    def __init__(self, in_channels: int, hidden_dim: int = 128, out_dim: int = 64, groups: int = 4) -> None:
        super().__init__()
        hidden = min(hidden_dim, in_channels)
        # groups must divide every channel count; fall back to the largest divisor that does
        groups = math.gcd(math.gcd(groups, in_channels), math.gcd(hidden, out_dim))
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, groups=groups),
            ChannelLayerNorm(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_dim, 1, groups=groups),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) features of single cells -> (N, out_dim): the head is per-pixel, so this equals
        applying it to the whole map and then picking the cells."""
        return self.net(x[:, :, None, None])[:, :, 0, 0]


class PSCLHeads(nn.Module):
    """The global head and one dense head per pretrained decoder scale."""

    def __init__(self, bottleneck_channels: int, decoder_channels: tuple[int, ...], hidden_dim: int = 128,
                 out_dim: int = 64, groups: int = 4) -> None:
        super().__init__()
        self.global_head = GlobalProjectionHead(bottleneck_channels, hidden_dim, out_dim)
        self.dense_heads = nn.ModuleList(
            DenseProjectionHead(c, hidden_dim, out_dim, groups) for c in decoder_channels)

    def forward(self, bottleneck: torch.Tensor, decoder_maps: list[torch.Tensor]) -> dict:
        """``{"z": (B, out_dim), "dense": [(B, out_dim, h_s, w_s)]}``; one map per dense head, in order."""
        return {"z": self.global_head(bottleneck),
                "dense": [head(f) for head, f in zip(self.dense_heads, decoder_maps, strict=True)]}
