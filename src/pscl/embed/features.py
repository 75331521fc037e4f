"""Per-pixel features of a few test images, at pixels chosen per class (for ``pscl-embed``).

The pixels are chosen once from the masks (:func:`pick_pixels`) and every network is read at the
same pixels (:func:`pixel_features`), so the panels of a figure show the same points. Features
are the dense probe's (:func:`pscl.probe.features.dense_features`), so a map shows what the
probe fits on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pscl.errors import DataError
from pscl.models.base import SegmentationBackbone
from pscl.probe.features import dense_features

# the data settings of a run's config that decide its splits and its normalisation; each is passed
# only when the config gives it as a plain value (``normalisation`` is newer than some runs)
SPLIT_KEYS = ("layout", "in_channels", "split_seed", "test_fraction", "val_fraction", "normalisation")
NAMED_KEYS = ("layout", "normalisation")


@dataclass(frozen=True)
class PixelPicks:
    """Chosen pixels: which image, where in it (row-major flat index), and their class."""

    image: np.ndarray  # (P,) index into the image list
    flat: np.ndarray  # (P,) y * width + x
    label: np.ndarray  # (P,) class index

    def __len__(self) -> int:
        return int(self.label.shape[0])


@dataclass(frozen=True)
class TestImages:
    """The first test images of a data folder, normalised with the data's training statistics."""

    ids: tuple[str, ...]
    images: tuple[torch.Tensor, ...]  # (C, H, W) float32 each
    masks: tuple[np.ndarray, ...]  # (H, W) int64 each, 255 = ignore
    class_names: tuple[str, ...]
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    root: Path


def pick_pixels(masks: Sequence[np.ndarray], num_classes: int, per_class: int, seed: int) -> PixelPicks:
    """Up to ``per_class`` pixels of every class, drawn over all ``masks`` together with ``seed``.

    Ignored pixels (255) are never drawn; a class with fewer pixels gives all of them.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(int(seed))
    flat_masks = [np.asarray(m).ravel() for m in masks]
    owners, flats, labels = [], [], []
    for c in range(num_classes):
        found = [np.flatnonzero(m == c) for m in flat_masks]
        owner = np.concatenate([np.full(len(f), k, np.int64) for k, f in enumerate(found)] or [np.zeros(0, np.int64)])
        flat = np.concatenate(found or [np.zeros(0, np.int64)]).astype(np.int64)
        if len(flat) > per_class:
            chosen = np.sort(rng.choice(len(flat), per_class, replace=False))  # sorted: reads images in order
            owner, flat = owner[chosen], flat[chosen]
        owners.append(owner)
        flats.append(flat)
        labels.append(np.full(len(flat), c, np.int64))
    return PixelPicks(np.concatenate(owners), np.concatenate(flats), np.concatenate(labels))


@torch.no_grad()
def pixel_features(backbone: SegmentationBackbone, images: Sequence[torch.Tensor], picks: PixelPicks,
                   kind: str = "multiscale") -> np.ndarray:
    """(P, F) float32 features of ``backbone`` at ``picks``; ``images`` are normalised (C, H, W).

    The backbone runs in eval mode (BatchNorm with its running statistics, as the probe reads it)
    and is put back in the mode it had.
    """
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    rows: np.ndarray | None = None
    try:
        for k, image in enumerate(images):
            chosen = np.flatnonzero(picks.image == k)
            if len(chosen) == 0:
                continue
            maps = dense_features(backbone, image.unsqueeze(0).to(device), kind)[0].flatten(1)  # (F, H*W)
            where = torch.from_numpy(picks.flat[chosen]).to(maps.device)
            values = maps[:, where].T.cpu().numpy()
            if rows is None:
                rows = np.zeros((len(picks), values.shape[1]), np.float32)
            rows[chosen] = values
    finally:
        backbone.train(was_training)
    if rows is None:
        raise ValueError("no pixels were picked")
    return rows


def renormalise(image: torch.Tensor, source: tuple[Sequence[float], Sequence[float]],
                target: tuple[Sequence[float], Sequence[float]]) -> torch.Tensor:
    """An image normalised with ``source`` (mean, std) re-normalised with ``target`` (mean, std).

    A fine-tuned model carries the statistics it was trained with; on another data folder they
    differ from that folder's, and the model must see its own.
    """
    shape = (-1, 1, 1)
    s_mean, s_std = (torch.tensor(v, dtype=image.dtype).view(shape) for v in source)
    t_mean, t_std = (torch.tensor(v, dtype=image.dtype).view(shape) for v in target)
    return (image * s_std + s_mean - t_mean) / t_std


def split_settings(data_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The split and channel settings of a run's ``data`` config that are plain values.

    Anything else (an interpolation, a nested node) is left out, so the data module's default
    applies; nothing from the file is resolved or built.
    """
    settings: dict[str, Any] = {}
    for key in SPLIT_KEYS:
        value = (data_config or {}).get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)) or (key in NAMED_KEYS and isinstance(value, str) and "${" not in value):
            settings[key] = value
    return settings


def load_test_images(root: Path, settings: Mapping[str, Any], count: int) -> TestImages:
    """The first ``count`` test images of the data folder ``root``, split as ``settings`` say.

    They are normalised with the training images' mean and std, as the run normalised them.
    Raises :class:`DataError` when the folder cannot be read or its test split is empty.
    """
    from pscl.data.datamodule import MicrographDataModule

    # whole images, one annotated image: only the split and the statistics matter here
    datamodule = MicrographDataModule(root=root, crop_size=None, batch_size=1, num_labeled=1, label_seed=0,
                                      **dict(settings))
    datamodule.setup("test")
    assert datamodule.index is not None
    ids = tuple(datamodule.index.test_ids[:count])
    if not ids:
        raise DataError("has no test images", root, "give a data folder with a test split (splits.json or more images)")
    dataset = datamodule.whole_image_dataset(ids)
    items = [dataset[k] for k in range(len(ids))]  # indexed: the dataset cycles
    return TestImages(ids, tuple(item["image"].float() for item in items),
                      tuple(item["mask"].numpy().astype(np.int64) for item in items),
                      tuple(datamodule.class_names), datamodule.in_channels, tuple(datamodule.mean),
                      tuple(datamodule.std), Path(datamodule.root))
