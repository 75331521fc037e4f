"""The fine-tuning stage: train the segmentation network on the annotated images, then test it.

:func:`finetune` starts from pretrained encoder/decoder weights (or from scratch), fits with the
configured callbacks plus the ones the stage needs (divergence stop, random states, the paper's
periodic test), saves ``model.pt`` for ``pscl-predict`` (:mod:`pscl.models.model_file`) and tests
the final model once, on ``eval.split`` (never a model selected on the test set).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pscl.callbacks.resume_checkpoint import ResumeCheckpoint
from pscl.errors import ConfigError
from pscl.losses.ce_dice import class_weights_from_counts
from pscl.models.model_file import save_model
from pscl.models.transfer import transfer_weights
from pscl.training.build import (
    build_backbone, build_trainer, eval_split, instantiate, keep_earlier_logs, resume_checkpoint)
from pscl.training.checkpoint_rng import RandomState
from pscl.training.periodic_test import PeriodicTest
from pscl.training.stop_on_divergence import StopOnDivergence

log = logging.getLogger("pscl.train")  # training's log lines keep the name they had before pscl.training

PROTOCOLS = ("final", "paper")
CLASS_WEIGHT_CHOICES = ("data", "auto")


def protocol(cfg: DictConfig) -> str:
    """``eval.protocol`` (default ``final``), checked."""
    chosen = str((cfg.get("eval") or {}).get("protocol", "final"))
    if chosen not in PROTOCOLS:
        raise ConfigError("eval.protocol", f"must be one of {PROTOCOLS}, got {chosen!r}")
    return chosen


def _periodic_test(cfg: DictConfig) -> list[Any]:
    """The PeriodicTest callback under ``eval.protocol=paper`` (none otherwise)."""
    if protocol(cfg) != "paper":
        return []
    every = cfg.eval.get("test_every_n_epochs") or max(1, int(cfg.trainer.max_epochs) // 5)
    if int(every) < 1:
        raise ConfigError("eval.test_every_n_epochs", f"must be >= 1, got {every}")
    return [PeriodicTest(int(every))]


def _log_hparams(trainer: pl.Trainer, cfg: DictConfig, datamodule: Any, test: dict[str, float],
                 probe: dict[str, Any] | None = None) -> None:
    """One row per run in TensorBoard's HParams view: method, labels, round -> Dice, ACC (and the probe's)."""
    params = {"method": str(cfg.method.name), "num_labeled": str(datamodule.num_labeled),
              "label_seed": datamodule.label_seed, "protocol": protocol(cfg)}
    values = {"hparams/dice": test["dice"], "hparams/acc": test["acc"]}
    if probe is not None:
        values.update({"probe/dice": probe["dice"], "probe/acc": probe["acc"],
                       "probe/random_init_dice": probe["random_init"]["dice"]})
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, values)


def class_weights(cfg: DictConfig, datamodule: Any) -> list[float] | None:
    """CE class weights of fine-tuning: ``finetune.class_weights=data`` takes ``data.class_weights``;
    ``auto`` computes them from this round's annotated pixels (inverse square-root frequency)."""
    choice = str(cfg.finetune.get("class_weights", "data"))
    if choice not in CLASS_WEIGHT_CHOICES:
        raise ConfigError("finetune.class_weights", f"must be one of {CLASS_WEIGHT_CHOICES}, got {choice!r}")
    if choice == "data":
        configured = cfg.data.get("class_weights")
        return None if configured is None else [float(w) for w in configured]
    try:
        weights = class_weights_from_counts(datamodule.labeled_pixel_counts())
    except ValueError:
        raise ConfigError("finetune.class_weights",
                          f"is auto but the annotated images ({', '.join(datamodule.labeled_ids[:5])}) have no "
                          "labelled pixel", "annotate them, or set finetune.class_weights=data") from None
    log.info("class weights from the annotated pixels: %s", weights)
    return weights


def finetune(cfg: DictConfig, datamodule: Any, pretrained: dict[str, torch.Tensor] | None,
             probe: dict[str, Any] | None = None, checkpoint_dir: Path | None = None,
             model_file: Path | None = None) -> dict[str, Any]:
    """Fine-tune (or train from scratch) and evaluate the final model on ``eval.split``.

    Returns the final metrics plus ``history``: the periodic test points (eval.protocol=paper).
    ``probe`` (the probe of the same weights) is logged beside them in TensorBoard.
    ``checkpoint_dir`` replaces the configured checkpoint folder (the fine-tunings from the
    snapshots of a pretraining-length study each get their own); when resuming, fit continues
    from its ``last.ckpt``. ``model_file``: where the fine-tuned model is saved (rank 0).
    """
    split = eval_split(cfg)
    backbone = build_backbone(cfg, datamodule)
    if pretrained is not None:
        keys = transfer_weights(backbone, pretrained)
        log.info("fine-tuning from %d pretrained encoder/decoder tensors", len(keys))
    node = OmegaConf.to_container(cfg.finetune.module, resolve=True)
    if pretrained is None:  # warm-up concerns a pretrained encoder; a random one trains from the start
        node["encoder_warmup_epochs"] = 0
    model = instantiate(node, backbone=backbone, class_names=datamodule.class_names,
                        class_weights=class_weights(cfg, datamodule))
    # Without a val split there is nothing to validate on (the test set is never used for that);
    # while choosing a protocol the validation split is evaluated once, at the end.
    extra = {} if datamodule.index.val_ids and split == "test" else {"limit_val_batches": 0}
    if split == "val" and protocol(cfg) == "paper":
        raise ConfigError("eval.protocol", "paper tests periodically on the test set, which eval.split=val never opens",
                          "use eval=default when choosing a protocol on the validation split")
    periodic = _periodic_test(cfg)
    if checkpoint_dir is None:
        configured = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
        checkpoint_dir = Path(configured) if configured else Path(cfg.paths.output_dir) / "checkpoints"
    checkpoint_dir = Path(checkpoint_dir)
    resume_from = resume_checkpoint(cfg, checkpoint_dir)
    if resume_from is not None:
        keep_earlier_logs(Path(cfg.paths.output_dir))
    # Lightning's own files (a SLURM requeue checkpoint) go beside this fine-tuning's checkpoints
    trainer = build_trainer(cfg, default_root_dir=str(checkpoint_dir.parent), **extra)
    saver = next((c for c in trainer.callbacks if isinstance(c, ResumeCheckpoint)), None)
    if saver is not None:
        saver.dirpath = checkpoint_dir
    trainer.callbacks.extend([*periodic, StopOnDivergence("fine-tuning", checkpoint_dir), RandomState()])
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    if model_file is not None and trainer.is_global_zero and not trainer.fast_dev_run:
        save_run_model(cfg, datamodule, model.backbone, model_file)
    if trainer.world_size > 1:
        # A distributed sampler pads the test set with repeats; test once, on one device, instead.
        # The process group goes first, or the metrics would wait for ranks that have left.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if not trainer.is_global_zero:
            return {}
        trainer = build_trainer(cfg, devices=1, num_nodes=1, strategy="auto")
    if split == "test":
        trainer.test(model, datamodule=datamodule, verbose=False)
    else:
        trainer.test(model, dataloaders=datamodule.val_dataloader(), verbose=False)
    if model.test_results:
        _log_hparams(trainer, cfg, datamodule, model.test_results, probe)
    return {**model.test_results, "history": list(model.test_history)}


def save_run_model(cfg: DictConfig, datamodule: Any, backbone: Any, path: Path) -> Path:
    """``model.pt``: the fine-tuned backbone with its normalisation, classes, method and config."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # an interpolation that only resolves inside a Hydra job
        config = OmegaConf.to_container(cfg, resolve=False)
    return save_model(path, backbone, OmegaConf.to_container(cfg.backbone, resolve=True), datamodule.class_names,
                      datamodule.mean, datamodule.std, str(cfg.method.name), config,
                      normalisation=datamodule.normalisation)
