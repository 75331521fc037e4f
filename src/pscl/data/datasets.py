"""Torch datasets over micrographs already indexed (and, for annotated ones, loaded)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pscl.data.io import read_image
from pscl.data.generator_states import generator_states, set_generator_states
from pscl.data.transforms import image_statistics, standardise, standardising_scale

#: the tensors of a pretraining item that are images (the views' contract, pscl.modules.pretrain_base)
VIEW_IMAGE_KEYS = ("x0", "x1")


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) float array -> (C, H, W) float tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()


class LabeledDataset(Dataset):
    """Annotated micrographs; ``length`` > number of images cycles them (each draw a new random crop).

    Items: ``image`` (C, H, W) float, ``mask`` (H, W) long (255 = ignore), ``id`` str. With
    ``per_image`` the transform does not normalise; each item is standardised here by the
    statistics of its whole image (``data.normalisation=per_image``).
    """

    def __init__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], ids: Sequence[str],
                 transform: Callable[..., dict], length: int | None = None, per_image: bool = False) -> None:
        if not (len(images) == len(masks) == len(ids)) or not images:
            raise ValueError("images, masks and ids must be non-empty and of equal length")
        self.images, self.masks, self.ids = list(images), list(masks), list(ids)
        self.transform = transform
        self.length = length if length is not None else len(images)
        # Statistics of the whole micrograph, not of the crop: a crop of a dark region stays dark
        # relative to its image, as at test time, where whole images (and pscl-predict's tiles,
        # cut after normalising) see the whole image's statistics; a crop's own statistics would
        # stretch a patch of one phase into the contrast of all of them.
        self.stats = [image_statistics(image) for image in self.images] if per_image else None

    def __len__(self) -> int:
        return self.length

    def reseed(self, seed: int) -> None:
        """Albumentations keeps its own random state, blind to global seeds: set it explicitly."""
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(int(seed) % 2**32)

    def random_state(self) -> Any:
        """The augmentation's generator states (a resumed run sets them back)."""
        return generator_states(self.transform)

    def set_random_state(self, state: Any) -> None:
        set_generator_states(self.transform, state)

    def __getitem__(self, index: int) -> dict:
        j = index % len(self.images)
        out = self.transform(image=self.images[j], mask=self.masks[j])
        image = out["image"]
        if self.stats is not None:  # after the jitter, with the statistics of the image before it
            image = standardise(image, *self.stats[j])
        return {
            "image": image_to_tensor(image),
            "mask": torch.from_numpy(np.ascontiguousarray(out["mask"])).long(),
            "id": self.ids[j],
        }


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give every worker its own, reproducible augmentation stream."""
    import random

    info = torch.utils.data.get_worker_info()
    seed = info.seed % 2**32  # base seed (from the torch RNG) + worker id
    random.seed(seed)
    np.random.seed(seed)
    if hasattr(info.dataset, "reseed"):
        info.dataset.reseed(seed)


class ViewsDataset(Dataset):
    """Micrographs for pretraining, read lazily (an unlabelled pool may not fit in memory).

    ``views`` turns one (H, W, C) image (and its (H, W) mask, when ``masks`` has one) into a dict
    of named tensors (e.g. two augmented views ``x0``, ``x1`` and their geometry); items add
    ``id`` and the ``group`` index (-1 if unknown).

    ``per_image`` (``data.normalisation=per_image``): the views were built with mean 0 and std 1,
    the data module's in that mode, so they hold jittered [0, 1] intensities; each view in
    :data:`VIEW_IMAGE_KEYS` is standardised here with the statistics of the whole image it was
    cut from, as fine-tuning crops are (:class:`LabeledDataset`).
    """

    def __init__(self, paths: Sequence[Path], ids: Sequence[str], group_index: Sequence[int],
                 views: Callable[..., dict], in_channels: int = 1,
                 cache: dict[str, np.ndarray] | None = None, masks: dict[str, np.ndarray] | None = None,
                 per_image: bool = False) -> None:
        self.paths, self.ids, self.group_index = list(paths), list(ids), list(group_index)
        self.views = views
        self.in_channels = in_channels
        self.cache = cache or {}
        self.masks = masks
        self.per_image = per_image

    def __len__(self) -> int:
        return len(self.paths)

    def reseed(self, seed: int) -> None:
        if hasattr(self.views, "reseed"):
            self.views.reseed(int(seed) % 2**32)

    def random_state(self) -> Any:
        """The views' generator states (a resumed run sets them back)."""
        return self.views.random_state() if hasattr(self.views, "random_state") else generator_states(self.views)

    def set_random_state(self, state: Any) -> None:
        if hasattr(self.views, "set_random_state"):
            self.views.set_random_state(state)
        else:
            set_generator_states(self.views, state)

    def __getitem__(self, index: int) -> dict:
        key = self.ids[index]
        image = self.cache.get(key)
        if image is None:
            image = read_image(self.paths[index], self.in_channels)
        item = dict(self.views(image, self.masks[key]) if self.masks is not None else self.views(image))
        if self.per_image:
            _standardise_views(item, image)
        item["id"] = key
        item["group"] = self.group_index[index]
        return item


def _standardise_views(item: dict, image: np.ndarray) -> None:
    """Standardise the (C, S, S) views of ``item`` in place with the whole ``image``'s statistics.

    Flips, crops, resizing and blur move or average pixels with weights that sum to 1, so they
    commute with this affine map; the brightness/contrast jitter came before it, on the [0, 1]
    intensities it clips to, and still varies the standardised views, as in fine-tuning.
    """
    mean, std = image_statistics(image)
    shift = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    scale = torch.as_tensor(standardising_scale(std), dtype=torch.float32).view(-1, 1, 1)
    for key in VIEW_IMAGE_KEYS:
        if key in item:
            item[key] = (item[key] - shift) * scale
