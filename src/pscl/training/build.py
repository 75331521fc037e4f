"""From a composed config to the objects a stage runs, and the checkpoint a stage resumes from.

Instantiation lets a user error through unwrapped; the trainer gets the configured loggers and
callbacks. A stage resumes (``resume=<run folder>``, or a requeued SLURM job) from its
``last.ckpt`` after reading it the safe way, and keeps the interrupted part of its CSV log.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from pscl.callbacks.resume_checkpoint import LAST
from pscl.errors import ConfigError, DataError, PsclError
from pscl.integrity import load_weights
from pscl.probe.evaluate import ProbeSettings, settings_from_config
from pscl.runs.quoting import command_arg

log = logging.getLogger("pscl.train")  # training's log lines keep the name they had before pscl.training


def instantiate(config: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that lets a user error (:class:`PsclError`) through unwrapped.

    Config values arrive as plain lists and dicts (``_convert_="all"``), so the hyperparameters
    Lightning stores in checkpoints load with ``weights_only=True``.
    """
    try:
        return hydra.utils.instantiate(config, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, PsclError):
            raise cause from None
        raise


def instantiate_section(section: DictConfig | None, **kwargs: Any) -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` section (loggers, callbacks)."""
    if not section:
        return []
    return [instantiate(entry, **kwargs) for entry in section.values()
            if isinstance(entry, DictConfig) and "_target_" in entry]


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    """A Lightning trainer from ``cfg.trainer`` with the configured loggers and callbacks."""
    loggers = instantiate_section(cfg.get("logger"))
    callbacks = instantiate_section(cfg.get("callbacks"))
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **overrides)


def build_backbone(cfg: DictConfig, datamodule: Any) -> Any:
    """The configured backbone for this data's channels and classes (freshly initialised).

    A setting the backbone class does not take (e.g. the UNet's ``checkpoint_blocks`` left by a
    recipe under ``backbone=smp``) is a :class:`ConfigError` naming it."""
    try:
        return instantiate(cfg.backbone, in_channels=datamodule.in_channels, num_classes=datamodule.num_classes)
    except InstantiationException as exc:
        cause = exc.__cause__
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(cause)) if isinstance(cause, TypeError) \
            else None
        if unexpected is None:
            raise
        key = unexpected.group(1)
        raise ConfigError(f"backbone.{key}", f"is not a setting of {cfg.backbone.get('_target_')}",
                          f"remove it with ~backbone.{key} (a recipe written for another backbone may set it)") from None


def probe_settings(cfg: DictConfig) -> ProbeSettings:
    """The dense linear probe's settings (``probe``)."""
    return settings_from_config(cfg.get("probe"))


def build_datamodule(cfg: DictConfig) -> Any:
    """The configured data module (``data``), told which split a run evaluates on (``eval.split``):
    the data config does not read ``eval``, the training hands it over."""
    return instantiate(cfg.data, eval_split=eval_split(cfg))


def eval_split(cfg: DictConfig) -> str:
    """``eval.split``: ``test`` (report) or ``val`` (protocol selection: the test set is never opened)."""
    split = str((cfg.get("eval") or {}).get("split", "test"))
    if split not in ("test", "val"):
        raise ConfigError("eval.split", f"must be test or val, got {split!r}")
    return split


def resuming(cfg: DictConfig) -> bool:
    """True when this run continues an interrupted one: ``resume=<run folder>``, or a SLURM job
    that was requeued (``SLURM_RESTART_COUNT`` >= 1) into the folder it ran in."""
    return bool(cfg.get("resume")) or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def resume_checkpoint(cfg: DictConfig, checkpoint_dir: Path | None) -> Path | None:
    """The ``last.ckpt`` to continue a stage from, when resuming and one was saved.

    None if Lightning's SLURM plugin left an ``hpc_ckpt_*.ckpt`` (saved on the requeue signal,
    newer than ``last.ckpt``) beside the checkpoint folder: Lightning resumes from that itself.
    Either file is first read the safe way (:func:`check_resume_checkpoint`), so a truncated or
    hostile checkpoint is one message with a way out, never a traceback.
    """
    if not resuming(cfg) or checkpoint_dir is None:
        return None
    requeue = sorted(checkpoint_dir.parent.glob("hpc_ckpt_*.ckpt"))
    if requeue:
        newest = max(requeue, key=lambda p: int(p.stem.rsplit("_", 1)[-1]) if p.stem.rsplit("_", 1)[-1].isdigit() else -1)
        check_resume_checkpoint(newest)
        log.info("resuming from Lightning's SLURM checkpoint in %s", checkpoint_dir.parent)
        return None
    if not (checkpoint_dir / LAST).is_file():
        return None
    check_resume_checkpoint(checkpoint_dir / LAST)
    log.info("resuming from %s", checkpoint_dir / LAST)
    return checkpoint_dir / LAST


def check_resume_checkpoint(path: Path) -> None:
    """Raise :class:`~pscl.errors.DataError` if the checkpoint a stage would resume from cannot be read
    without running code (truncated, not a checkpoint, or needing a pickle); the fix says how to go on."""
    fix = (f"move it aside (e.g. `mv {command_arg(str(path))} {command_arg(str(path) + '.broken')}`) and resume "
           "again: the stage then starts over "
           "from its beginning in the same run folder (a finished pretraining is kept); or start a new run. "
           "Never load a checkpoint you do not trust")
    blob = load_weights(path, fix)
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        raise DataError("is not a Lightning checkpoint (it has no state_dict), so the stage cannot resume from it",
                        path, fix)


def keep_earlier_logs(log_root: Path) -> None:
    """Before a resumed stage logs again: Lightning's CSV logger would overwrite ``csv/metrics.csv``,
    so the interrupted part is kept as ``csv/metrics.before_resume_<n>.csv`` (TensorBoard appends)."""
    metrics = log_root / "csv" / "metrics.csv"
    if metrics.is_file():
        parts = len(list(metrics.parent.glob("metrics.before_resume_*.csv")))
        os.replace(metrics, metrics.parent / f"metrics.before_resume_{parts + 1}.csv")
