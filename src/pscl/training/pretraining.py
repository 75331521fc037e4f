"""The pretraining stage: the method's pretraining on this round's data, or an earlier one reused.

:func:`pretrain_or_reuse` takes, in this order, the run folder's own finished pretraining (when
resuming), a cache entry with the same pretraining config (:mod:`pscl.training.pretrain_cache`),
or pretrains (:func:`pretrain`) and stores the result in the cache. Either way it returns a
:class:`Pretraining`: the weights fine-tuning starts from, where they came from, and the
snapshots of a pretraining-length study.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from pscl.callbacks.resume_checkpoint import ResumeCheckpoint
from pscl.data.labeled_ids import check_same_ids, describe_source
from pscl.errors import ConfigError
from pscl.models.transfer import load_pretrained, read_meta, save_pretrained
from pscl.training import pretrain_cache
from pscl.training.build import (
    build_backbone, eval_split, instantiate, instantiate_section, keep_earlier_logs, probe_settings, resume_checkpoint,
    resuming)
from pscl.training.checkpoint_rng import RandomState
from pscl.training.online_probe import OnlineProbe
from pscl.training.pretrain_cache import Snapshot
from pscl.training.pretrain_snapshots import PretrainSnapshots
from pscl.training.pretraining_length import describe_length, pretraining_limits, snapshot_epochs, snapshot_steps
from pscl.training.stop_on_divergence import StopOnDivergence

log = logging.getLogger("pscl.train")  # training's log lines keep the name they had before pscl.training


@dataclass
class Pretraining:
    """What a run fine-tunes from: the final pretrained weights, where they came from, and the
    snapshots of the pretraining-length study (``snapshot_epochs`` / ``snapshot_steps``):
    ``[(epoch, steps, file)]`` (:class:`pscl.training.pretrain_cache.Snapshot`), shortest first."""

    weights: dict[str, torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=lambda: {"reused": False, "key": None, "source": None})
    snapshots: list[Snapshot] = field(default_factory=list)


def pretraining_callbacks(cfg: DictConfig, stage_dir: Path) -> list[Any]:
    """The configured ones (``pretrain_callbacks``: conf/callbacks/pretrain.yaml) with their
    checkpoints in ``<stage_dir>/checkpoints``, then the ones the stage always needs: the
    divergence stop and the random states of a resumed run."""
    callbacks = instantiate_section(cfg.get("pretrain_callbacks"))
    for callback in callbacks:
        if isinstance(callback, ResumeCheckpoint):
            callback.dirpath = stage_dir / "checkpoints"
    return [*callbacks, StopOnDivergence("pretraining", stage_dir / "checkpoints"), RandomState()]


def pretrain(cfg: DictConfig, datamodule: Any, output_dir: Path) -> Pretraining:
    """Run the method's pretraining on this round's data; returns the transferable weights.

    Writes ``<run>/pretrain/pretrained.pt`` (encoder + decoder weights), the last pretraining
    checkpoint (with queues, for resuming), ``pretrain/snapshots/epoch_<e>.pt`` for every
    ``snapshot_epochs`` entry (``step_<s>.pt`` for every ``snapshot_steps`` entry), and the
    pretraining logs (with ``probe/dice`` every ``probe.every_n_epochs`` epochs). The length is
    ``method.pretrain_steps`` optimiser steps when set, else ``method.pretrain_epochs`` epochs.
    """
    stage_dir = output_dir / "pretrain"
    epochs, steps = snapshot_epochs(cfg), snapshot_steps(cfg)
    backbone = build_backbone(cfg, datamodule)
    module = instantiate(cfg.method.pretrain, backbone=backbone, num_classes=datamodule.num_classes)
    datamodule.use_pretraining(module.views(datamodule.mean, datamodule.std, datamodule.hparams.crop_size),
                               annotated=module.uses_labels)
    callbacks = pretraining_callbacks(cfg, stage_dir)
    meta = {"method": cfg.method.name}
    by_epoch = PretrainSnapshots(epochs, stage_dir / "snapshots", meta, unit="epoch")
    by_step = PretrainSnapshots(steps, stage_dir / "snapshots", meta, unit="step")
    callbacks.extend(snapshots for snapshots, wanted in ((by_epoch, epochs), (by_step, steps)) if wanted)
    every = int((cfg.get("probe") or {}).get("every_n_epochs") or 0)
    if every < 0:
        raise ConfigError("probe.every_n_epochs", f"must be >= 0 (0 = no online probe), got {every}")
    if every:
        callbacks.append(OnlineProbe(every, probe_settings(cfg), eval_split(cfg)))
    resume_from = resume_checkpoint(cfg, stage_dir / "checkpoints")
    if resume_from is not None:
        keep_earlier_logs(stage_dir)
    loggers = instantiate_section(cfg.get("logger"), save_dir=str(stage_dir))
    trainer = instantiate(cfg.trainer, **pretraining_limits(cfg), logger=loggers or False,
                          callbacks=callbacks, limit_val_batches=0, default_root_dir=str(stage_dir))
    log.info("pretraining %s for %s", cfg.method.name, describe_length(cfg))
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    datamodule.use_pretraining(None)
    state = module.transferable_state_dict()
    if trainer.is_global_zero and not trainer.fast_dev_run:  # debug=fast_dev_run saves nothing
        save_pretrained(state, stage_dir / "pretrained.pt",
                        {"method": cfg.method.name, "labeled_ids": list(datamodule.labeled_ids)})
    saved = [*by_epoch.snapshots(), *by_step.snapshots()]  # one of them is empty
    return Pretraining(state, {"reused": False, "key": None, "source": str(stage_dir / "pretrained.pt")}, saved)


def _finished_pretraining(cfg: DictConfig, output_dir: Path, epochs: list[int],
                          steps: list[int]) -> Pretraining | None:
    """When resuming: the run folder's own finished pretraining (``pretrain/pretrained.pt`` and its
    snapshots), which is never redone; None if it did not finish."""
    weights_file = output_dir / "pretrain" / "pretrained.pt"
    if not resuming(cfg) or not weights_file.is_file():
        return None
    # the run folder has the cache entry's layout
    snapshots = pretrain_cache.cached_snapshots(weights_file.parent, epochs, steps)
    if snapshots is None:
        return None
    log.info("resuming: the pretraining in %s had finished; it is not redone", weights_file.parent)
    return Pretraining(load_pretrained(weights_file), {"reused": False, "key": None, "source": str(weights_file)},
                       snapshots)


def pretraining_identity(cfg: DictConfig, datamodule: Any) -> tuple[dict[str, Any], str, bool]:
    """``(config, key, uses labels)`` of this run's pretraining in the cache (:mod:`pscl.training.pretrain_cache`).

    A method whose sampling uses the annotated images (PSCL) keys on this round's actual ids
    (drawn, or named by ``data.labeled_ids``) and their masks; a label-free one on neither.
    """
    module_class = hydra.utils.get_class(cfg.method.pretrain._target_)
    labeled = list(datamodule.labeled_ids) if module_class.uses_labels else None
    label_files = datamodule.labeled_mask_files() if labeled else ()
    config = pretrain_cache.pretraining_config(cfg, datamodule.pretraining_pool(), labeled, snapshot_epochs(cfg),
                                               label_files, snapshot_steps(cfg))
    return config, pretrain_cache.pretraining_key(config), labeled is not None


def pretrain_or_reuse(cfg: DictConfig, datamodule: Any, output_dir: Path) -> Pretraining:
    """Pretrain, or load an earlier run's pretraining when its config is the same (:mod:`pscl.training.pretrain_cache`).

    A method whose sampling uses the annotated images (PSCL) is reused only by runs with the same
    annotated images; a label-free one by every round.
    """
    config, key, labeled = pretraining_identity(cfg, datamodule)
    epochs, steps = snapshot_epochs(cfg), snapshot_steps(cfg)
    folder = pretrain_cache.cache_folder(cfg.paths.cache_dir, cfg.method.name, key)
    finished = _finished_pretraining(cfg, output_dir, epochs, steps)
    if finished is not None:
        if labeled:  # its sampling used the annotated images of the run as it started
            check_same_ids(read_meta(finished.info["source"]).get("labeled_ids"), datamodule.labeled_ids,
                           f"the finished pretraining {finished.info['source']}", datamodule.labeled_source,
                           ordered=False)  # as the cache key: the same images in another order reuse it
        finished.info["key"] = key
        return finished
    cached = pretrain_cache.lookup(folder, epochs, steps) if cfg.get("reuse_pretraining", True) else None
    if cached is not None:
        log.info("reusing pretraining %s-%s from %s (same pretraining config and pool contents%s; "
                 "reuse_pretraining=false redoes it)", cfg.method.name, key, folder,
                 " and annotated images" if labeled else "")
        weights, snapshots = cached
        return Pretraining(weights, {"reused": True, "key": key, "source": str(folder / "pretrained.pt")}, snapshots)
    if labeled:
        log.info("pretraining %s for this round: its patch sampling uses the annotated images (%s)",
                 cfg.method.name, describe_source(datamodule.labeled_source))
    else:
        log.info("pretraining %s (config key %s; later runs with the same pretraining config reuse it)",
                 cfg.method.name, key)
    result = pretrain(cfg, datamodule, output_dir)
    result.info["key"] = key
    if rank_zero_only.rank == 0 and not cfg.trainer.get("fast_dev_run"):
        pretrain_cache.store(folder, output_dir / "pretrain" / "pretrained.pt", config,
                             [snapshot.path for snapshot in result.snapshots])
    return result
