"""The input normalisation a run trained with, in front of a network: the part both TorchScript
wrappers (pscl's UNet: :class:`pscl.predict.export.NormalisedUNet`; smp:
:class:`pscl.predict.export_smp.NormalisedSmp`) share. Subclasses define :meth:`network`."""

from __future__ import annotations

import torch
from torch import nn

from pscl.data.transforms import MIN_IMAGE_STD


class NormalisedNetwork(nn.Module):
    """``forward`` = (per-image standardisation, when the run used it) -> (x - mean) / std -> :meth:`network`.

    ``per_image``: each image is first standardised by its own per-channel mean and std (a
    constant channel becomes zeros), as :func:`pscl.data.transforms.standardise_image` does.
    :meth:`network` runs the network alone, for inputs normalised by the caller (e.g. tiles cut
    from a micrograph standardised as a whole).
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], per_image: bool = False) -> None:
        super().__init__()
        self.per_image = bool(per_image)
        self.min_std = float(MIN_IMAGE_STD)
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_image:
            x = self.standardise(x)
        return self.network((x - self.mean) / self.std)

    @torch.jit.export
    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Each (C, H, W) image of the batch by its own per-channel mean and population std."""
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).square().mean(dim=(2, 3), keepdim=True).sqrt()
        # a constant channel: zeros, as in training (a floor alone would amplify rounding noise)
        scale = torch.where(std >= self.min_std, 1.0 / std.clamp_min(self.min_std), torch.zeros_like(std))
        return (x - mean) * scale

    @torch.jit.export
    def network(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
