"""The per-pixel features a probe reads from a frozen backbone.

* ``full_resolution``: the finest decoder map (B, C_1, H, W), the classifier's own input;
* ``multiscale``: the bottleneck and the decoder maps at 1/4, 1/2 and 1/1, each upsampled
  (bilinear) to the input size and concatenated. It includes the bottleneck so that methods that
  pretrain only the encoder (SimCLR, MoCo, BYOL, DenseCL) are probed on what they trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pscl.models.base import SegmentationBackbone

FEATURE_CHOICES = ("multiscale", "full_resolution")


@torch.no_grad()
def dense_features(backbone: SegmentationBackbone, images: torch.Tensor, kind: str = "multiscale") -> torch.Tensor:
    """(B, C_in, H, W) images -> (B, F, H, W) float32 features of ``backbone`` as it is (no mode change)."""
    if kind not in FEATURE_CHOICES:
        raise ValueError(f"unknown probe features {kind!r}; use one of {FEATURE_CHOICES}")
    features = backbone.forward_features(images)
    finest = features["decoder"][-1].float()
    if kind == "full_resolution":
        return finest.contiguous()
    size = images.shape[-2:]
    maps = [features["bottleneck"], *features["decoder"][:-1]]
    upsampled = [F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False) for m in maps]
    return torch.cat([*upsampled, finest], dim=1).contiguous()
