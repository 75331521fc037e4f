"""The backbones pscl builds from a file's config (``model.pt``, a run's ``.hydra/config.yaml``).

Only the classes listed in :data:`BACKBONES`, named exactly, are built, and only after the
config passed :func:`pscl.integrity.configs.check_file_config`; the class is then called
directly, never through Hydra, so nothing in the file can choose another callable.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from pscl.errors import DataError, PsclError
from pscl.integrity.configs import check_file_config
from pscl.models.base import SegmentationBackbone


def _unet() -> type[SegmentationBackbone]:
    from pscl.models.unet import UNet

    return UNet


def _smp() -> type[SegmentationBackbone]:
    from pscl.models.smp_backbone import SmpBackbone

    return SmpBackbone


# exact class name -> the class (imported when needed)
BACKBONES: dict[str, Callable[[], type[SegmentationBackbone]]] = {
    "pscl.models.unet.UNet": _unet,
    "pscl.models.smp_backbone.SmpBackbone": _smp,
}
# set from the model file's own facts, never from its backbone config
_FROM_MODEL = ("in_channels", "num_classes")
# initial weights the model file's own weights replace: never read (or downloaded) again
_INITIAL_WEIGHTS = ("encoder_weights",)


def build_backbone_from_file(config: Mapping[str, Any], in_channels: int, num_classes: int, path: Path | str,
                             fix: str, device: str | torch.device = "cpu") -> SegmentationBackbone:
    """The backbone a file's ``config`` describes, freshly initialised, after checking the config.

    ``device="meta"`` builds it without allocating weights (to compare shapes with the file's
    tensors before spending memory on a size the file only claims). Raises
    :class:`~pscl.errors.DataError` naming ``path`` for a target outside :data:`BACKBONES`, a
    key the class does not take, or values it refuses.
    """
    target, settings = check_file_config(config, BACKBONES, path, "backbone_config", fix)
    backbone_class = BACKBONES[target]()
    settings = {k: (None if k in _INITIAL_WEIGHTS else v) for k, v in settings.items() if k not in _FROM_MODEL}
    accepted = set(inspect.signature(backbone_class).parameters) - set(_FROM_MODEL)
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise DataError(f"its backbone config has settings {unknown} that {target} does not take "
                        f"(it takes {sorted(accepted)})", path, fix)
    try:
        with torch.device(device):
            return backbone_class(in_channels=in_channels, num_classes=num_classes, **settings)
    except (PsclError, TypeError, ValueError, RuntimeError, OverflowError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataError(f"its backbone config cannot build a {target} ({first})", path, fix) from None
