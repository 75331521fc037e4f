"""The paper's UNet: three down-samplings, transposed-conv up-sampling, BN, and LN in the decoder.

Widths default to the paper's 32/64/128/256 (about 2.14 M parameters with 3 input channels and
4 classes); ``unet_small`` halves them for CPU work. Blocks follow the paper (spec §2):
DoubleConv = 2 x [3x3 conv without bias -> norm -> LeakyReLU(0.01)], with BatchNorm in the
encoder and BatchNorm then per-pixel channel LayerNorm in the decoder. Any input size works:
each up-sampled map is zero-padded at the bottom/right to its skip's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pscl.errors import ConfigError
from pscl.models.checkpointing import CHECKPOINT_CHOICES, checkpoint_block, recomputed
from pscl.models.base import BackboneFeatures, SegmentationBackbone


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "ln":
        return ChannelLayerNorm(channels)
    raise ValueError(f"unknown norm {kind!r}; use 'bn' or 'ln'")


class DoubleConv(nn.Sequential):
    """Two [3x3 conv (no bias) -> norm -> LeakyReLU(0.01)] steps."""

    def __init__(self, in_ch: int, out_ch: int, norms: tuple[str, str] = ("bn", "bn")) -> None:
        super().__init__(
            # in place: neither BatchNorm nor LayerNorm needs its output for the backward pass
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), _norm(norms[0], out_ch), nn.LeakyReLU(0.01, inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), _norm(norms[1], out_ch), nn.LeakyReLU(0.01, inplace=True),
        )


class Down(nn.Sequential):
    """2x2 max-pool then DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch))


class Up(nn.Module):
    """Transposed conv (k 3, s 2, p 1) to half the channels, pad to the skip, concat [skip, up], DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=3, stride=2, padding=1)
        self.conv = DoubleConv(in_ch // 2 + out_ch, out_ch, norms=("bn", "ln"))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dh or dw:
            x = F.pad(x, (0, dw, 0, dh))
        return self.conv(torch.cat([skip, x], dim=1))


def _run(block: nn.Module, checkpointed: bool, *inputs: torch.Tensor) -> torch.Tensor:
    """Run ``block``, recomputing its activations in backward when ``checkpointed``."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint_block(block, *inputs)
    return block(*inputs)


class UNetEncoder(nn.Module):
    """inc + three down blocks; returns the four maps, finest first."""

    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.inc = DoubleConv(in_channels, widths[0])
        self.down1 = Down(widths[0], widths[1])
        self.down2 = Down(widths[1], widths[2])
        self.down3 = Down(widths[2], widths[3])

    checkpoint_blocks = "none"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        choice = self.checkpoint_blocks
        x1 = _run(self.inc, recomputed(choice, 0), x)
        x2 = _run(self.down1, recomputed(choice, 1), x1)
        x3 = _run(self.down2, recomputed(choice, 2), x2)
        return [x1, x2, x3, _run(self.down3, recomputed(choice, 3), x3)]


class UNetDecoder(nn.Module):
    """Three up blocks; returns the decoder maps at 1/4, 1/2 and 1/1 resolution."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        self.up1 = Up(widths[3], widths[2])
        self.up2 = Up(widths[2], widths[1])
        self.up3 = Up(widths[1], widths[0])

    checkpoint_blocks = "none"

    def forward(self, skips: list[torch.Tensor]) -> list[torch.Tensor]:
        x1, x2, x3, x4 = skips
        choice = self.checkpoint_blocks
        d4 = _run(self.up1, recomputed(choice, 2), x4, x3)
        d2 = _run(self.up2, recomputed(choice, 1), d4, x2)
        return [d4, d2, _run(self.up3, recomputed(choice, 0), d2, x1)]


class UNet(SegmentationBackbone):
    """The paper's UNet (spec §2) behind the shared backbone interface."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4,
                 widths: Sequence[int] = (32, 64, 128, 256), channels_last: bool = False,
                 checkpoint_blocks: str = "none") -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4 or any(w < 2 or w % 2 for w in widths):
            raise ConfigError("backbone.widths", f"needs four even widths (one per level), got {list(widths)}")
        if checkpoint_blocks not in CHECKPOINT_CHOICES:
            raise ConfigError("backbone.checkpoint_blocks", f"must be one of {CHECKPOINT_CHOICES}, got {checkpoint_blocks!r}")
        if num_classes < 2:
            raise ConfigError("num_classes", f"needs at least 2 classes, got {num_classes}")
        self.in_channels, self.num_classes, self.widths = in_channels, num_classes, widths
        self.bottleneck_channels = widths[3]
        self.decoder_channels = (widths[2], widths[1], widths[0])
        self.encoder = UNetEncoder(in_channels, widths)
        self.decoder = UNetDecoder(widths)
        self.classifier = nn.Conv2d(widths[0], num_classes, kernel_size=1)
        # NHWC keeps the per-pixel LayerNorm free of copies and suits oneDNN's CPU convolutions
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)
        # blocks whose activations are recomputed in backward instead of stored: none, the two
        # full-resolution ones, or all seven (BatchNorm statistics are updated once either way)
        self.encoder.checkpoint_blocks = self.decoder.checkpoint_blocks = checkpoint_blocks

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward_features(self, x: torch.Tensor) -> BackboneFeatures:
        skips = self.encoder(self._prepare(x))
        return {"bottleneck": skips[-1], "decoder": self.decoder(skips)}

    def forward_bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder only: what the image-level baselines pretrain."""
        return self.encoder(self._prepare(x))[-1]
