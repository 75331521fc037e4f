"""Checks of the data module's settings (``data.*``, ``eval.split``): each failure a ConfigError naming the setting."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pscl.constants import MIN_IMAGE_SIDE
from pscl.errors import ConfigError


def check_settings(root: str | Path | None, synthetic: Mapping[str, Any] | None, in_channels: int,
                   crop_size: int | None, sizes: Mapping[str, int], eval_split: str, val_fraction: float) -> None:
    """Refuse a malformed constructor setting before anything is read; ``sizes`` maps each
    ``data.*`` batch size and ``samples_per_epoch`` to its value (each must be >= 1)."""
    if root is None and synthetic is None:
        raise ConfigError("data.root", "no data folder given", "set data.root=/path/to/folder or use data=synthetic")
    if in_channels not in (1, 3):
        raise ConfigError("data.in_channels", f"must be 1 or 3, got {in_channels}")
    if crop_size is not None and int(crop_size) < MIN_IMAGE_SIDE:
        raise ConfigError("data.crop_size",
                          f"must be >= {MIN_IMAGE_SIDE} pixels or null (whole image), got {crop_size}")
    for key, value in sizes.items():
        if int(value) < 1:
            raise ConfigError(f"data.{key}", f"must be >= 1, got {value}")
    if eval_split not in ("test", "val"):
        raise ConfigError("eval.split", f"must be test or val, got {eval_split!r}")
    if eval_split == "val" and not float(val_fraction) > 0:
        raise ConfigError("data.val_fraction", "is 0 but runs evaluate on the validation split (eval.split=val)",
                          "set data.val_fraction (e.g. 0.2) to carve a validation split from the training images")


def synthetic_spec(synthetic: Mapping[str, Any] | None):
    """``data.synthetic`` as a :class:`~pscl.data.synthetic.SyntheticSpec` (None: the defaults);
    an unknown key, or a value the generator rejects, is a ConfigError."""
    from pscl.data.synthetic import SyntheticSpec

    spec_kwargs = {k: tuple(v) if k == "counts" else v for k, v in (synthetic or {}).items()}
    try:
        return SyntheticSpec(**spec_kwargs)
    except (TypeError, ValueError) as exc:  # unknown key, or a value the generator rejects
        raise ConfigError("data.synthetic", str(exc), "valid keys: counts, size, seed, test_fraction") from None


def check_class_weights(class_weights: Sequence[float] | None, class_names: Sequence[str]) -> None:
    """``data.class_weights`` gives one weight per class of the dataset, or is None."""
    if class_weights is not None and len(class_weights) != len(class_names):
        raise ConfigError("data.class_weights",
                          f"lists {len(class_weights)} weights but the dataset has {len(class_names)} classes "
                          f"({', '.join(class_names)})",
                          "give one weight per class, or null for equal weights")


def check_pool_batch(batch_size: int, pool_size: int) -> None:
    """The pretraining pool fills at least one batch of ``data.unlabeled_batch_size``."""
    if pool_size < batch_size:
        raise ConfigError("data.unlabeled_batch_size",
                          f"is {batch_size} but the pretraining pool holds only {pool_size} images",
                          f"set data.unlabeled_batch_size<={pool_size} or add images to <root>/unlabeled/")
