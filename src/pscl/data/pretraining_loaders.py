"""The pretraining side of the data module: the pool, its two-view datasets and loaders (a mixin)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from pscl.data.datasets import ViewsDataset
from pscl.data.image_checks import check_pool
from pscl.data.setting_checks import check_pool_batch


class PretrainingLoaders:
    """Mixed into :class:`~pscl.data.datamodule.MicrographDataModule`, whose index, images read in
    :meth:`setup`, settings and ``_loader`` it uses; :meth:`use_pretraining` makes its
    ``train_dataloader`` serve what :meth:`pretrain_dataloader` builds."""

    def _group_index(self) -> dict[str, int]:
        return {g: k for k, g in enumerate(self.group_names)}

    def _pool_samples(self) -> list:
        self._require_setup()
        index = self.index
        assert index is not None
        return [index.samples[i] for i in index.train_ids] + list(index.unlabeled)

    def pretraining_pool(self) -> list[Path]:
        """Image files of the pretraining pool: every train image plus ``unlabeled/``."""
        return [s.image for s in self._pool_samples()]

    def unlabeled_dataset(self, views: Callable[..., dict]) -> ViewsDataset:
        """The pretraining pool: every train image (labels unused) plus ``unlabeled/``."""
        samples = self._pool_samples()
        groups = self._group_index()
        return ViewsDataset(
            [s.image for s in samples], [s.id for s in samples], [groups.get(s.group, -1) for s in samples],
            views, self.in_channels, cache=self._images, per_image=self.per_image,
        )

    def annotated_views_dataset(self, views: Callable[..., dict]) -> ViewsDataset:
        """This round's annotated images with their masks, for label-guided pretraining."""
        self._require_setup()
        index = self.index
        assert index is not None
        samples = [index.samples[i] for i in self.labeled_ids]
        groups = self._group_index()
        return ViewsDataset(
            [s.image for s in samples], [s.id for s in samples], [groups.get(s.group, -1) for s in samples],
            views, self.in_channels, cache=self._images, masks={i: self._masks[i] for i in self.labeled_ids},
            per_image=self.per_image,
        )

    def unlabeled_dataloader(self, views: Callable[..., dict]) -> DataLoader:
        dataset = self.unlabeled_dataset(views)
        batch_size = int(self.hparams.unlabeled_batch_size)
        check_pool_batch(batch_size, len(dataset))
        return self._loader(dataset, batch_size, shuffle=True, drop_last=True)

    def pretrain_dataloader(self, views: Callable[..., dict], annotated: bool = True) -> CombinedLoader:
        """Per step: ``"unlabeled"``, a batch of two-view items from the pool, and (``annotated``)
        ``"labeled"``, one two-view item of this round's annotated images with its mask (cycled)."""
        loaders = {"unlabeled": self.unlabeled_dataloader(views)}
        if annotated:
            loaders["labeled"] = self._loader(self.annotated_views_dataset(views), 1, shuffle=True)
        return CombinedLoader(loaders, mode="max_size_cycle")

    def use_pretraining(self, views: Callable[..., dict] | None, annotated: bool = True) -> None:
        """Make :meth:`train_dataloader` serve pretraining items built by ``views`` (None: fine-tuning);
        ``annotated=False`` for methods that never look at labels."""
        if views is not None and self._pretrain_views is None:
            self._check_pool()
        self._pretrain_views = views
        self._pretrain_annotated = annotated

    def _check_pool(self) -> None:
        """Decode (or recall by content hash) every pretraining pool image and compare it to the crop;
        called when a run is about to pretrain (:meth:`use_pretraining`), as only pretraining reads
        ``unlabeled/`` and the training images outside this round."""
        known = {self.index.samples[i].image: self._images[i].shape[:2] for i in self.index.train_ids}
        check_pool(self.pretraining_pool(), self.hparams.in_channels, self.hparams.crop_size, self.cache_dir, known)
