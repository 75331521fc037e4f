"""One LightningDataModule for pretraining and fine-tuning on a micrograph data folder.

It indexes the folder (:mod:`pscl.data.index`), checks every annotated file once
(:mod:`pscl.data.image_checks`), picks the annotated subset of the round (``num_labeled``,
``label_seed``; or the ids ``labeled_ids`` names, :mod:`pscl.data.labeled_ids`) and serves

* ``train_dataloader`` - random crops of the annotated subset (fine-tuning / supervised);
* ``val_dataloader`` - whole images of the ``val`` split: the folder's own, or, with
  ``val_fraction`` > 0 and none defined, carved from the training images (never from test);
* ``test_dataloader`` - whole images of the ``test`` split (batch 1: sizes may differ). With
  ``eval_split="val"`` (protocol selection) the test images are never read and this raises;
* ``pretrain_dataloader`` - per step a batch of the pretraining pool (all train images plus
  ``unlabeled/``) and one annotated image with its mask; :meth:`use_pretraining` makes
  ``train_dataloader`` serve it (both in :mod:`pscl.data.pretraining_loaders`).

The data module knows nothing about methods: what a pretraining item holds is decided by the
``views`` callable a pretraining method hands to :meth:`unlabeled_dataloader`.

Intensities (``normalisation``): ``dataset`` standardises every image with the train images' mean
and std (:attr:`mean`, :attr:`std`); ``per_image`` standardises each image with its own, in every
loader, and :attr:`mean` / :attr:`std` are then 0 and 1, so whatever is built from them (the
pretraining views, ``model.pt``) adds nothing on top.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import CombinedLoader
import numpy as np
import torch
from torch.utils.data import DataLoader

from pscl.constants import IGNORE_INDEX, SINGLE_CROP_SIDE
from pscl.data.datasets import LabeledDataset, seed_worker
from pscl.data.image_checks import check_annotated_sides, check_crop_fits, check_single_crop_batches
from pscl.data.index import index_with_validation
from pscl.data.io import read_image, read_mask
from pscl.data.labeled_ids import Chooser, check_same_ids, choose_labeled, describe_source, read_choice, seed_source
from pscl.data.pretraining_loaders import PretrainingLoaders
from pscl.data.samples import DatasetIndex
from pscl.data.setting_checks import check_class_weights, check_settings, synthetic_spec
from pscl.data.splits import parse_num_labeled
from pscl.data.transforms import PER_IMAGE, check_normalisation, test_transform, train_transform
from pscl.errors import ConfigError

log = logging.getLogger(__name__)


class MicrographDataModule(PretrainingLoaders, pl.LightningDataModule):
    """Micrograph data for every stage; see the module docstring."""

    def __init__(
        self,
        root: str | Path | None = None,
        synthetic: Mapping[str, Any] | None = None,
        cache_dir: str | Path = "~/.cache/pscl",
        layout: str = "auto",
        in_channels: int = 1,
        num_labeled: int | str = 1,
        label_seed: int = 0,
        labeled_ids: str | Path | Sequence[str] | None = None,
        split_seed: int = 0,
        test_fraction: float = 0.2,
        val_fraction: float = 0.0,
        crop_size: int | None = 256,
        batch_size: int = 4,
        samples_per_epoch: int = 64,
        test_batch_size: int = 1,
        unlabeled_batch_size: int = 8,
        jitter: float = 0.1,
        num_workers: int = 0,
        pin_memory: bool = False,
        class_weights: Sequence[float] | None = None,
        eval_split: str = "test",
        normalisation: str = "dataset",
    ) -> None:
        super().__init__()
        check_settings(root, synthetic, in_channels, crop_size,
                       {"batch_size": batch_size, "samples_per_epoch": samples_per_epoch,
                        "test_batch_size": test_batch_size, "unlabeled_batch_size": unlabeled_batch_size},
                       eval_split, val_fraction)
        # fail early on a malformed value, and read a selection file before anything is indexed
        self._labeled_choice = read_choice(labeled_ids, num_labeled_is_all=parse_num_labeled(num_labeled) is None)
        #: how ``labeled_ids=select:<strategy>`` chooses (pscl.data.labeled_ids.Chooser); training sets it
        self.labeled_chooser: Chooser | None = None
        #: the smallest training side whose bottleneck is 2 px: a batch of one smaller crop cannot
        #: train BatchNorm (16 for pscl's UNet; training sets it for the configured backbone)
        self.single_crop_side: int = SINGLE_CROP_SIDE
        check_normalisation(normalisation)
        self.save_hyperparameters(logger=False)
        self.root = Path(root).expanduser() if root is not None else None
        self.synthetic = dict(synthetic) if synthetic is not None else None
        self.cache_dir = Path(cache_dir).expanduser()
        self.index: DatasetIndex | None = None
        self.labeled_ids: tuple[str, ...] = ()
        #: where :attr:`labeled_ids` came from (pscl.data.labeled_ids): the label_seed draw, a selection, a list
        self.labeled_source: dict[str, Any] = (seed_source(label_seed) if self._labeled_choice is None
                                               else dict(self._labeled_choice.source))
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()
        self._images: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}
        self._pretrain_views: Callable[..., dict] | None = None
        self._pretrain_annotated = True
        #: called once with the next training loader, right after it is built (pscl.training.checkpoint_rng)
        self.after_train_loader: Callable[[Any], None] | None = None

    # ---------------------------------------------------------------- preparation
    def prepare_data(self) -> None:
        """Generate the embedded synthetic dataset once (rank 0 only, cached on disk)."""
        if self.root is None:
            self.root = self._synthetic_root()

    def _synthetic_root(self) -> Path:
        """The cached synthetic dataset of ``data.synthetic``, generated on first use."""
        from pscl.data.synthetic import ensure_dataset

        return ensure_dataset(self.cache_dir, synthetic_spec(self.synthetic))

    def setup(self, stage: str | None = None) -> None:
        """Index and check the folder, load the annotated images, pick this round's labels."""
        if self.index is not None:
            return
        if self.root is None:
            self.root = self._synthetic_root()
        hp = self.hparams
        self.index, carved = index_with_validation(self.root, hp.layout, hp.split_seed, hp.test_fraction,
                                                   hp.val_fraction)
        self.labeled_ids = self._choose_labeled(carved)
        self._load_annotated()
        check_annotated_sides(self.index, self._images, self.labeled_ids, hp.crop_size)
        check_crop_fits(self.index, self._images, self.labeled_ids, hp.crop_size, hp.batch_size)
        self.mean, self.std = self._input_statistics()
        check_class_weights(hp.class_weights, self.class_names)
        log.info("data %s: %d train (%d annotated for this round, from %s: %s), %d val, %d test, "
                 "%d extra unlabelled",
                 self.root, len(self.index.train_ids), len(self.labeled_ids), describe_source(self.labeled_source),
                 ", ".join(self.labeled_ids[:5]), len(self.index.val_ids), len(self.index.test_ids),
                 len(self.index.unlabeled))

    def _choose_labeled(self, val_carved: bool) -> tuple[str, ...]:
        """This round's annotated ids (:func:`~pscl.data.labeled_ids.choose_labeled`); what a choice
        made in the run (``select:<strategy>``) found is added to :attr:`labeled_source`."""
        hp = self.hparams
        ids, facts = choose_labeled(self._labeled_choice, self.index, hp.num_labeled, hp.label_seed, self.root,
                                    val_carved, self.labeled_chooser)
        if facts:
            self.labeled_source.update(facts)
            log.info("data.labeled_ids=%s chose %s from %d training images", hp.labeled_ids, ", ".join(ids),
                     facts["pool_size"])
        elif self._labeled_choice is not None and parse_num_labeled(hp.num_labeled) != len(ids):
            log.info("data.labeled_ids names %d annotated image(s); data.num_labeled=%s and data.label_seed are "
                     "not used", len(ids), hp.num_labeled)
        return ids

    @property
    def label_seed(self) -> int:
        """The round's seed as runs record it: ``data.label_seed``, or the seed of a ``select:`` choice."""
        source = self.labeled_source
        if source.get("kind") == "selection" and source.get("file") is None and "seed" in source:
            return int(source["seed"])
        return int(self.hparams.label_seed)

    @property
    def num_labeled(self) -> int | str:
        """The round's size as runs record it: ``data.num_labeled`` as set (an int or ``all``), or
        with ``labeled_ids`` the number of ids it names."""
        if self._labeled_choice is None:
            return self.hparams.num_labeled
        self._require_setup()
        return len(self.labeled_ids)

    def _load_annotated(self) -> None:
        """Read every annotated image and mask once; all file problems surface here, before training."""
        assert self.index is not None
        used = set(self.index.train_ids) | set(self.index.val_ids)
        if self.hparams.eval_split == "test":  # protocol selection (eval.split=val) never reads a test image
            used |= set(self.index.test_ids)
        for sample_id in sorted(used):
            sample = self.index.samples[sample_id]
            image = read_image(sample.image, self.hparams.in_channels)
            assert sample.mask is not None
            mask = read_mask(sample.mask, self.num_classes, image.shape[:2], sample.image)
            self._images[sample_id], self._masks[sample_id] = image, mask

    def _input_statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The mean and std every input is normalised with: the train images' (``dataset``), or 0
        and 1 (``per_image``, where the datasets standardise each image with its own instead)."""
        assert self.index is not None
        if self.per_image:
            return (0.0,) * self.in_channels, (1.0,) * self.in_channels
        return self._intensity_stats(self.index.train_ids)

    def _intensity_stats(self, ids: Sequence[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std over the train images (labels are not used)."""
        stack = np.concatenate([self._images[i].reshape(-1, self._images[i].shape[-1]) for i in ids])
        mean, std = stack.mean(axis=0), stack.std(axis=0)
        return tuple(float(m) for m in mean), tuple(float(max(s, 1e-6)) for s in std)

    def labeled_pixel_counts(self) -> list[int]:
        """Annotated pixels per class over this round's annotated images (255 = ignore excluded)."""
        self._require_setup()
        counts = np.zeros(self.num_classes, np.int64)
        for sample_id in self.labeled_ids:
            mask = self._masks[sample_id]
            counts += np.bincount(mask[mask != IGNORE_INDEX].ravel(), minlength=self.num_classes)[: self.num_classes]
        return [int(c) for c in counts]

    def labeled_mask_files(self) -> list[Path]:
        """The mask files of this round's annotated images."""
        self._require_setup()
        index = self.index
        assert index is not None
        return [index.samples[i].mask for i in self.labeled_ids if index.samples[i].mask is not None]

    # ---------------------------------------------------------------- facts
    @property
    def class_names(self) -> tuple[str, ...]:
        self._require_setup()
        return self.index.class_names  # type: ignore[union-attr]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.hparams.in_channels)

    @property
    def normalisation(self) -> str:
        """``dataset`` or ``per_image`` (``data.normalisation``)."""
        return str(self.hparams.normalisation)

    @property
    def per_image(self) -> bool:
        return self.normalisation == PER_IMAGE

    @property
    def group_names(self) -> tuple[str, ...]:
        self._require_setup()
        return self.index.groups()  # type: ignore[union-attr]

    def _require_setup(self) -> None:
        if self.index is None:
            raise RuntimeError("call setup() first")

    # ---------------------------------------------------------------- loaders
    def _loader(self, dataset, batch_size: int, shuffle: bool, drop_last: bool = False) -> DataLoader:
        workers = int(self.hparams.num_workers)
        if shuffle and hasattr(dataset, "reseed"):  # evaluation loaders are not augmented: no draw
            # Reproducible under seed_everything, and different on every DDP rank.
            rank = self.trainer.global_rank if self.trainer is not None else 0
            dataset.reseed(int(torch.randint(0, 2**31 - 1, (1,))) + 7919 * rank)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                          num_workers=workers, pin_memory=bool(self.hparams.pin_memory),
                          persistent_workers=workers > 0, worker_init_fn=seed_worker if workers > 0 else None)

    def _training_side(self) -> int:
        """The shorter side of the crops fine-tuning trains on: data.crop_size, or with whole images
        (null) the smallest of this round's annotated images."""
        if self.hparams.crop_size is not None:
            return int(self.hparams.crop_size)
        return min(min(self._images[i].shape[:2]) for i in self.labeled_ids)

    def labeled_dataset(self) -> LabeledDataset:
        """Random crops of this round's annotated images, ``samples_per_epoch`` per epoch."""
        self._require_setup()
        hp = self.hparams
        ids = self.labeled_ids
        return LabeledDataset([self._images[i] for i in ids], [self._masks[i] for i in ids], ids,
                              train_transform(hp.crop_size, self.mean, self.std, hp.jitter,
                                              normalisation=self.normalisation),
                              length=max(int(hp.samples_per_epoch), len(ids)), per_image=self.per_image)

    def whole_image_dataset(self, ids: Sequence[str]) -> LabeledDataset:
        """Whole images with masks, normalised only."""
        self._require_setup()
        return LabeledDataset([self._images[i] for i in ids], [self._masks[i] for i in ids], list(ids),
                              test_transform(self.mean, self.std, self.normalisation), per_image=self.per_image)

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        if self._pretrain_views is not None:
            loader = self.pretrain_dataloader(self._pretrain_views, self._pretrain_annotated)
        else:
            dataset, batch_size = self.labeled_dataset(), int(self.hparams.batch_size)
            side = self._training_side()
            check_single_crop_batches(side, batch_size, self.hparams.crop_size, self.single_crop_side)
            # a last batch of one such crop would stop training; the next epoch draws new crops anyway
            drop_last = batch_size > 1 and len(dataset) % batch_size == 1 and side < self.single_crop_side
            loader = self._loader(dataset, batch_size, shuffle=True, drop_last=drop_last)
        if self.after_train_loader is not None:  # a resumed fit restores the random states here
            self.after_train_loader(loader)
            self.after_train_loader = None
        return loader

    def val_dataloader(self) -> DataLoader | list:
        self._require_setup()
        if not self.index.val_ids:  # type: ignore[union-attr]
            return []
        return self._loader(self.whole_image_dataset(self.index.val_ids), 1, shuffle=False)  # type: ignore[union-attr]

    def test_dataloader(self) -> DataLoader:
        self._require_setup()
        if self.hparams.eval_split != "test":
            raise ConfigError("eval.split", "is val: the test set is not opened while a protocol is being chosen",
                              "evaluate on the validation split, or set eval.split=test")
        return self._loader(self.whole_image_dataset(self.index.test_ids),  # type: ignore[union-attr]
                            int(self.hparams.test_batch_size), shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """Checkpointed facts: the round's annotated ids and the normalisation used in training."""
        return {"labeled_ids": list(self.labeled_ids), "mean": list(self.mean), "std": list(self.std),
                "normalisation": self.normalisation}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A resumed stage continues only on the annotated images it was trained on: a selection
        file edited since the run started is refused, not mixed into the checkpoint's training."""
        check_same_ids(state_dict.get("labeled_ids"), self.labeled_ids, "the checkpoint this stage resumes from",
                       self.labeled_source)
