"""The interface every segmentation backbone of pscl shares.

A backbone is ``encoder`` + ``decoder`` + ``classifier``. Pretraining methods read
:meth:`forward_features` (the bottleneck, at the backbone's :attr:`~SegmentationBackbone.stride`
(8 for pscl's UNet), for image-level losses and decoder maps at 1/4, 1/2 and 1/1 resolution for
patch-level losses); fine-tuning reads :meth:`forward` (logits).
Weights move from a pretrained model to a fine-tuned one by the ``encoder.`` and ``decoder.``
key prefixes, so heads and the classifier never travel (:data:`TRANSFER_PREFIXES`).
"""

from __future__ import annotations

from typing import TypedDict

import torch
from torch import nn

TRANSFER_PREFIXES: tuple[str, ...] = ("encoder.", "decoder.")


class BackboneFeatures(TypedDict):
    """``bottleneck`` (B, C_b, H/s, W/s) at the backbone's stride s (8 for pscl's UNet);
    ``decoder`` [(B, C_i, H/s_i, W/s_i) for s_i = 4, 2, 1]."""

    bottleneck: torch.Tensor
    decoder: list[torch.Tensor]


class SegmentationBackbone(nn.Module):
    """Base class: subclasses build ``encoder``, ``decoder``, ``classifier`` and set the channel facts."""

    encoder: nn.Module
    decoder: nn.Module
    classifier: nn.Module
    in_channels: int
    num_classes: int
    bottleneck_channels: int
    decoder_channels: tuple[int, ...]  # channels of the decoder maps at 1/4, 1/2, 1/1
    decoder_strides: tuple[int, ...] = (4, 2, 1)
    stride: int = 8  # the bottleneck's down-sampling: 8 for pscl's UNet, 2**encoder_depth for smp's

    def forward_features(self, x: torch.Tensor) -> BackboneFeatures:
        raise NotImplementedError

    def forward_bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The bottleneck grid (B, C_b, H/s, W/s) alone, s = :attr:`stride` (8 for pscl's UNet);
        subclasses may skip the decoder."""
        return self.forward_features(x)["bottleneck"]

    def classify(self, features: BackboneFeatures) -> torch.Tensor:
        """Per-pixel class logits (B, num_classes, H, W) from the finest decoder map."""
        return self.classifier(features["decoder"][-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> logits (B, num_classes, H, W)."""
        return self.classify(self.forward_features(x))

    def transferable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a pretrained model hands to a fine-tuned one (encoder and decoder)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(TRANSFER_PREFIXES)}
