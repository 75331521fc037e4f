"""``pscl-train``: the Hydra entry point, and :func:`train`, the plain function behind it.

``train(cfg)`` builds the data module, the backbone and the method's modules from a composed
config, trains, tests the final model (never a model selected on the test set), writes
``metrics.json`` in the run folder and returns the test metrics. Tests call it without the CLI.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import warnings  # noqa: E402

# Noise from library internals that a user can do nothing about.
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*Total length of `list` across ranks is zero.*")  # no val split
warnings.filterwarnings("ignore", message=".*passed in a `val_dataloader` but have no `validation_step`.*")

import hydra  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.errors import InstantiationException  # noqa: E402
from lightning.pytorch.utilities import rank_zero_only  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException  # noqa: E402

from pscl.errors import (  # noqa: E402
    EXIT_CRASH, EXIT_PARTIAL, EXIT_USER_ERROR, ConfigError, DataError, PsclError, crash_message, debugging)
from pscl.integrity import atomic_write_text  # noqa: E402
from pscl.runs.quoting import command_arg  # noqa: E402

if TYPE_CHECKING:  # the callbacks are imported where they are used, after the CLI has parsed its options
    from pscl.callbacks.snapshots import Snapshot

log = logging.getLogger("pscl.train")


class _DropAdvertising(logging.Filter):
    """Lightning advertises a cloud logger at every start; a user of an offline tool has no use for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertising())

OPTIMISED_METRIC = "dice"


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


def _instantiate_dict(section: DictConfig | None, **kwargs: Any) -> list[Any]:
    """Instantiate every entry of a ``{name: {_target_: ...}}`` section (loggers, callbacks)."""
    if not section:
        return []
    return [instantiate(entry, **kwargs) for entry in section.values()
            if isinstance(entry, DictConfig) and "_target_" in entry]


def build_trainer(cfg: DictConfig, **overrides: Any) -> pl.Trainer:
    """A Lightning trainer from ``cfg.trainer`` with the configured loggers and callbacks."""
    loggers = _instantiate_dict(cfg.get("logger"))
    callbacks = _instantiate_dict(cfg.get("callbacks"))
    return instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **overrides)


@dataclass
class Pretraining:
    """What a run fine-tunes from: the final pretrained weights, where they came from, and the
    snapshots of the pretraining-length study (``snapshot_epochs`` / ``snapshot_steps``):
    ``[(epoch, steps, file)]`` (:class:`pscl.callbacks.snapshots.Snapshot`), shortest first."""

    weights: dict[str, torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=lambda: {"reused": False, "key": None, "source": None})
    snapshots: list[Snapshot] = field(default_factory=list)


def pretrain_steps(cfg: DictConfig) -> int | None:
    """``method.pretrain_steps``: the pretraining length in optimiser steps (it wins over
    ``method.pretrain_epochs``), or None when the length is in epochs. Its range is a
    :data:`pscl.checks.config.CONFIG_RULES` rule."""
    steps = cfg.method.get("pretrain_steps")
    return None if steps is None else int(steps)


def pretraining_limits(cfg: DictConfig) -> dict[str, int]:
    """The pretraining trainer's length: exactly ``method.pretrain_steps`` optimiser steps whatever
    the pool size (``max_epochs=-1``), else ``method.pretrain_epochs`` epochs."""
    steps = pretrain_steps(cfg)
    if steps is not None:
        return {"max_epochs": -1, "max_steps": steps}
    return {"max_epochs": int(cfg.method.pretrain_epochs)}


def describe_length(cfg: DictConfig) -> str:
    """The pretraining length for the log, saying which setting won when steps are set."""
    steps = pretrain_steps(cfg)
    if steps is None:
        return f"{int(cfg.method.pretrain_epochs)} epochs"
    return f"{steps} steps (method.pretrain_steps; method.pretrain_epochs={cfg.method.pretrain_epochs} is not used)"


def _one_snapshot_kind(cfg: DictConfig) -> None:
    """A study counts either epochs or optimiser steps, never both."""
    if cfg.get("snapshot_epochs") and cfg.get("snapshot_steps"):
        raise ConfigError("snapshot_steps", f"cannot be combined with snapshot_epochs="
                          f"{list(cfg.snapshot_epochs)}: a pretraining-length study counts either epochs or steps",
                          "keep one of them, e.g. snapshot_epochs=[] (with method.pretrain_steps set)")


def snapshot_epochs(cfg: DictConfig) -> list[int]:
    """``snapshot_epochs`` checked, plus the final epoch; [] when no snapshot is asked for."""
    epochs = list(cfg.get("snapshot_epochs") or [])
    if not epochs:
        return []
    _one_snapshot_kind(cfg)
    budget = pretrain_steps(cfg)
    if budget is not None:  # the pretraining stops at a step count: the final epoch may never end
        raise ConfigError("snapshot_epochs", f"counts epochs, but method.pretrain_steps={budget} sets the "
                          "pretraining length in optimiser steps",
                          f"use snapshot_steps=[...] within [1, {budget}] instead, or method.pretrain_steps=null")
    final = int(cfg.method.pretrain_epochs)
    bad = [e for e in epochs if not isinstance(e, int) or not 1 <= e <= final]
    if bad:
        raise ConfigError("snapshot_epochs", f"must be whole epochs in [1, method.pretrain_epochs={final}], got {bad}",
                          f"e.g. snapshot_epochs=[{max(1, final // 10)},{max(1, final // 3)},{final}]")
    return sorted(set(epochs) | {final})


def snapshot_steps(cfg: DictConfig) -> list[int]:
    """``snapshot_steps`` checked, plus the final step (``method.pretrain_steps``); [] when none is asked for."""
    steps = list(cfg.get("snapshot_steps") or [])
    if not steps:
        return []
    _one_snapshot_kind(cfg)
    final = pretrain_steps(cfg)
    if final is None:
        whole = [s for s in steps if isinstance(s, int) and not isinstance(s, bool)]
        raise ConfigError("snapshot_steps", "counts optimiser steps, but method.pretrain_steps is null (the "
                          "pretraining length is in epochs)",
                          f"set method.pretrain_steps={max(whole, default=190)} (the total length), "
                          "or use snapshot_epochs")
    bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= final]
    if bad:
        raise ConfigError("snapshot_steps", f"must be whole optimiser steps in [1, method.pretrain_steps={final}], "
                          f"got {bad}", f"e.g. snapshot_steps=[{max(1, final // 10)},{max(1, final // 3)},{final}]")
    return sorted(set(steps) | {final})


def build_backbone(cfg: DictConfig, datamodule: Any) -> Any:
    """The configured backbone for this data's channels and classes (freshly initialised)."""
    return instantiate(cfg.backbone, in_channels=datamodule.in_channels, num_classes=datamodule.num_classes)


def _probe_settings(cfg: DictConfig) -> Any:
    from pscl.probe.evaluate import settings_from_config

    return settings_from_config(cfg.get("probe"))


def eval_split(cfg: DictConfig) -> str:
    """``eval.split``: ``test`` (report) or ``val`` (protocol selection: the test set is never opened)."""
    split = str((cfg.get("eval") or {}).get("split", "test"))
    if split not in ("test", "val"):
        raise ConfigError("eval.split", f"must be test or val, got {split!r}")
    return split


def _resuming(cfg: DictConfig) -> bool:
    """True when this run continues an interrupted one: ``resume=<run folder>``, or a SLURM job
    that was requeued (``SLURM_RESTART_COUNT`` >= 1) into the folder it ran in."""
    return bool(cfg.get("resume")) or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def _resume_checkpoint(cfg: DictConfig, checkpoint_dir: Path | None) -> Path | None:
    """The ``last.ckpt`` to continue a stage from, when resuming and one was saved.

    None if Lightning's SLURM plugin left an ``hpc_ckpt_*.ckpt`` (saved on the requeue signal,
    newer than ``last.ckpt``) beside the checkpoint folder: Lightning resumes from that itself.
    Either file is first read the safe way (:func:`check_resume_checkpoint`), so a truncated or
    hostile checkpoint is one message with a way out, never a traceback.
    """
    from pscl.callbacks.resume_checkpoint import LAST

    if not _resuming(cfg) or checkpoint_dir is None:
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
    from pscl.integrity import load_weights

    fix = (f"move it aside (e.g. `mv {command_arg(str(path))} {command_arg(str(path) + '.broken')}`) and resume "
           "again: the stage then starts over "
           "from its beginning in the same run folder (a finished pretraining is kept); or start a new run. "
           "Never load a checkpoint you do not trust")
    blob = load_weights(path, fix)
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        raise DataError("is not a Lightning checkpoint (it has no state_dict), so the stage cannot resume from it",
                        path, fix)


def _keep_earlier_logs(log_root: Path) -> None:
    """Before a resumed stage logs again: Lightning's CSV logger would overwrite ``csv/metrics.csv``,
    so the interrupted part is kept as ``csv/metrics.before_resume_<n>.csv`` (TensorBoard appends)."""
    metrics = log_root / "csv" / "metrics.csv"
    if metrics.is_file():
        parts = len(list(metrics.parent.glob("metrics.before_resume_*.csv")))
        os.replace(metrics, metrics.parent / f"metrics.before_resume_{parts + 1}.csv")


def pretrain(cfg: DictConfig, datamodule: Any, output_dir: Path) -> Pretraining:
    """Run the method's pretraining on this round's data; returns the transferable weights.

    Writes ``<run>/pretrain/pretrained.pt`` (encoder + decoder weights), the last pretraining
    checkpoint (with queues, for resuming), ``pretrain/snapshots/epoch_<e>.pt`` for every
    ``snapshot_epochs`` entry (``step_<s>.pt`` for every ``snapshot_steps`` entry), and the
    pretraining logs (with ``probe/dice`` every ``probe.every_n_epochs`` epochs). The length is
    ``method.pretrain_steps`` optimiser steps when set, else ``method.pretrain_epochs`` epochs.
    """
    from pscl.callbacks.divergence import StopOnDivergence
    from pscl.callbacks.probe import OnlineProbe
    from pscl.callbacks.random_state import RandomState
    from pscl.callbacks.resume_checkpoint import ResumeCheckpoint
    from pscl.callbacks.snapshots import PretrainSnapshots, StepSnapshots
    from pscl.transfer import save_pretrained

    stage_dir = output_dir / "pretrain"
    epochs, steps = snapshot_epochs(cfg), snapshot_steps(cfg)
    backbone = build_backbone(cfg, datamodule)
    module = instantiate(cfg.method.pretrain, backbone=backbone, num_classes=datamodule.num_classes)
    datamodule.use_pretraining(module.views(datamodule.mean, datamodule.std, datamodule.hparams.crop_size),
                               annotated=module.uses_labels)
    # only the progress bar of the configured callbacks applies: no predictions, own checkpoints
    every_n_epochs = int(OmegaConf.select(cfg, "checkpoint.pretrain_every_n_epochs", default=5))
    callbacks: list[Any] = [ResumeCheckpoint(stage_dir / "checkpoints", every_n_epochs),
                            StopOnDivergence("pretraining", stage_dir / "checkpoints"), RandomState()]
    by_epoch = PretrainSnapshots(epochs, stage_dir / "snapshots", {"method": cfg.method.name})
    by_step = StepSnapshots(steps, stage_dir / "snapshots", {"method": cfg.method.name})
    callbacks.extend(snapshots for snapshots, wanted in ((by_epoch, epochs), (by_step, steps)) if wanted)
    every = int((cfg.get("probe") or {}).get("every_n_epochs") or 0)
    if every < 0:
        raise ConfigError("probe.every_n_epochs", f"must be >= 0 (0 = no online probe), got {every}")
    if every:
        callbacks.append(OnlineProbe(every, _probe_settings(cfg), eval_split(cfg)))
    progress_bar = (cfg.get("callbacks") or {}).get("progress_bar")
    if progress_bar is not None:
        callbacks.append(instantiate(progress_bar))
    resume_from = _resume_checkpoint(cfg, stage_dir / "checkpoints")
    if resume_from is not None:
        _keep_earlier_logs(stage_dir)
    loggers = _instantiate_dict(cfg.get("logger"), save_dir=str(stage_dir))
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
    from pscl.pretrain_cache import cached_snapshots
    from pscl.transfer import load_pretrained

    weights_file = output_dir / "pretrain" / "pretrained.pt"
    if not _resuming(cfg) or not weights_file.is_file():
        return None
    snapshots = cached_snapshots(weights_file.parent, epochs, steps)  # the run folder has the cache entry's layout
    if snapshots is None:
        return None
    log.info("resuming: the pretraining in %s had finished; it is not redone", weights_file.parent)
    return Pretraining(load_pretrained(weights_file), {"reused": False, "key": None, "source": str(weights_file)},
                       snapshots)


def pretraining_identity(cfg: DictConfig, datamodule: Any) -> tuple[dict[str, Any], str, bool]:
    """``(config, key, uses labels)`` of this run's pretraining in the cache (pscl.pretrain_cache).

    A method whose sampling uses the annotated images (PSCL) keys on this round's actual ids
    (drawn, or named by ``data.labeled_ids``) and their masks; a label-free one on neither.
    """
    from pscl import pretrain_cache

    module_class = hydra.utils.get_class(cfg.method.pretrain._target_)
    labeled = list(datamodule.labeled_ids) if module_class.uses_labels else None
    label_files = datamodule.labeled_mask_files() if labeled else ()
    config = pretrain_cache.pretraining_config(cfg, datamodule.pretraining_pool(), labeled, snapshot_epochs(cfg),
                                               label_files, snapshot_steps(cfg))
    return config, pretrain_cache.pretraining_key(config), labeled is not None


def pretrain_or_reuse(cfg: DictConfig, datamodule: Any, output_dir: Path) -> Pretraining:
    """Pretrain, or load an earlier run's pretraining when its config is the same (pscl.pretrain_cache).

    A method whose sampling uses the annotated images (PSCL) is reused only by runs with the same
    annotated images; a label-free one by every round.
    """
    from pscl import pretrain_cache
    from pscl.data.labeled_ids import check_same_ids, describe_source
    from pscl.transfer import read_meta

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


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment described by ``cfg``; returns ``{"test": {...}, ...}`` and writes metrics.json.

    ``stage=both`` pretrains (if the method has a pretraining stage), fine-tunes and tests;
    ``stage=pretrain`` stops after pretraining; ``stage=finetune`` fine-tunes from
    ``pretrained_ckpt`` (or from scratch for ``method=supervised``). The run folder is marked
    ``RUNNING`` meanwhile and ends with ``metrics.json`` or ``FAILED`` (:mod:`pscl.runs.state`).
    """
    from pscl.runs import METRICS, read_state, run_markers

    output_dir = Path(cfg.paths.output_dir)
    state = read_state(output_dir) if _resuming(cfg) else None
    if state is not None and state.state == "finished":
        log.info("resume: %s had finished; nothing to do", output_dir)
        print(f"pscl: {output_dir} had finished (metrics.json); nothing to resume", flush=True)
        return json.loads((output_dir / METRICS).read_text())
    with run_markers(output_dir, enabled=rank_zero_only.rank == 0 and not cfg.trainer.get("fast_dev_run")):
        return _train(cfg, output_dir)


def _train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    from pscl.checks import check_batch_sizes, check_config
    from pscl.transfer import load_pretrained

    started = time.time()
    check_config(cfg)
    check_batch_sizes(cfg)
    stage = str(cfg.get("stage", "both"))
    if stage not in {"pretrain", "finetune", "both"}:
        raise ConfigError("stage", f"must be pretrain, finetune or both, got {stage!r}")
    has_pretraining = cfg.method.get("pretrain") is not None
    if stage == "pretrain" and not has_pretraining:
        raise ConfigError("stage", f"method={cfg.method.name} has no pretraining stage", "use stage=both")
    if stage == "finetune" and has_pretraining and not cfg.get("pretrained_ckpt"):
        raise ConfigError("pretrained_ckpt", f"stage=finetune with method={cfg.method.name} needs pretrained weights",
                          "add pretrained_ckpt=<run>/pretrain/pretrained.pt, or use stage=both")
    if cfg.get("print_config"):
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    log.info("memory allocator: %s (PSCL_ALLOCATOR; docs/performance.md)",
             os.environ.get("PSCL_ALLOCATOR_IN_EFFECT", "unchanged"))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    output_dir.mkdir(parents=True, exist_ok=True)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")

    pretraining = Pretraining()
    if cfg.get("pretrained_ckpt"):
        pretraining.weights = load_pretrained(cfg.pretrained_ckpt)
        pretraining.info["source"] = str(cfg.pretrained_ckpt)
    elif has_pretraining:
        pretraining = pretrain_or_reuse(cfg, datamodule, output_dir)
    split = eval_split(cfg)
    results: dict[str, Any] = {
        "method": cfg.method.name,
        "num_labeled": datamodule.num_labeled,
        "label_seed": datamodule.label_seed,
        "labeled_ids": list(datamodule.labeled_ids),
        "labeled_source": datamodule.labeled_source,
        "data_root": str(datamodule.root),
        "split": split,
        split: {},
        "pretraining": pretraining.info,
        "output_dir": str(output_dir),
    }
    if stage != "pretrain":
        probing = bool((cfg.get("eval") or {}).get("probe", False))
        floor = _random_init_probe(cfg, datamodule, split) if probing else None
        points = []
        for snapshot in pretraining.snapshots[:-1]:  # shorter pretrainings first; the final one last
            points.append(_snapshot_point(cfg, datamodule, snapshot, floor, output_dir))
        from pscl.predict.model import MODEL_FILE

        final = evaluate_weights(cfg, datamodule, pretraining.weights, floor, model_file=output_dir / MODEL_FILE)
        if pretraining.snapshots:
            epoch, steps, _ = pretraining.snapshots[-1]
            points.append({"epoch": epoch, "steps": steps, **final})
            results["snapshots"] = points
        results["test_history"] = final["history"]
        results["protocol"] = _protocol(cfg)
        results[split] = final[split]
        if probing:
            results["probe"] = final["probe"]
        results["transferred_keys"] = 0 if pretraining.weights is None else len(pretraining.weights)
    results["wall_time_s"] = round(time.time() - started, 1)
    if rank_zero_only.rank == 0 and not cfg.trainer.get("fast_dev_run"):
        atomic_write_text(output_dir / "metrics.json", json.dumps(results, indent=2))
    _print_summary(results, output_dir, cfg)
    return results


def _snapshot_point(cfg: DictConfig, datamodule: Any, snapshot: Snapshot, floor: dict[str, Any] | None,
                    output_dir: Path) -> dict[str, Any]:
    """Fine-tune (and probe) from one pretraining snapshot in ``<run>/from_snapshot/epoch_<e>/`` or
    ``<run>/from_snapshot/step_<s>/`` (the snapshot file's name); its result is kept there
    (``point.json``), so a resumed run does not redo it."""
    from pscl.transfer import load_pretrained

    folder = output_dir / "from_snapshot" / snapshot.path.stem
    done = folder / "point.json"
    if _resuming(cfg) and done.is_file():
        try:
            point = json.loads(done.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # a damaged record: that fine-tuning is redone
            log.warning("%s cannot be read (%s); the fine-tuning from the %s snapshot is redone", done, exc,
                        snapshot.label)
        else:
            if isinstance(point, dict) and isinstance(point.get(eval_split(cfg)), dict):
                log.info("resuming: the fine-tuning from the %s snapshot had finished", snapshot.label)
                return point
            log.warning("%s is not a snapshot point; the fine-tuning from the %s snapshot is redone", done,
                        snapshot.label)
    log.info("pretraining snapshot at %s: fine-tuning from it", snapshot.description)
    point = {"epoch": snapshot.epoch, "steps": snapshot.steps,
             **evaluate_weights(cfg, datamodule, load_pretrained(snapshot.path), floor, folder / "checkpoints")}
    if rank_zero_only.rank == 0 and not cfg.trainer.get("fast_dev_run"):
        atomic_write_text(done, json.dumps(point, indent=2))
    return point


def _random_init_probe(cfg: DictConfig, datamodule: Any, split: str) -> dict[str, Any]:
    """The probe's floor: the same probe on the backbone as initialised under ``seed``."""
    from pscl.probe.evaluate import random_init_probe

    return random_init_probe(lambda: build_backbone(cfg, datamodule), datamodule, _probe_settings(cfg), split,
                             seed=int(cfg.seed))


def probe_weights(cfg: DictConfig, datamodule: Any, weights: dict[str, torch.Tensor] | None,
                  floor: dict[str, Any]) -> dict[str, Any]:
    """The dense linear probe of ``weights`` (None: no pretraining, so the floor itself), with its floor."""
    from pscl.probe.evaluate import probe_backbone
    from pscl.transfer import transfer_weights

    if weights is None:
        values = dict(floor)
    else:
        with torch.random.fork_rng(devices=[]):  # building the backbone draws initial weights
            backbone = build_backbone(cfg, datamodule)
        transfer_weights(backbone, weights)
        values = probe_backbone(backbone, datamodule, _probe_settings(cfg), floor["split"])
    short = {k: values[k] for k in ("dice", "acc", "miou", "features", "split", "seconds")}
    return {**short, "pretrained": weights is not None,
            "random_init": {"dice": floor["dice"], "acc": floor["acc"]}}


def evaluate_weights(cfg: DictConfig, datamodule: Any, weights: dict[str, torch.Tensor] | None,
                     floor: dict[str, Any] | None, checkpoint_dir: Path | None = None,
                     model_file: Path | None = None) -> dict[str, Any]:
    """Fine-tune from ``weights`` (None: from scratch) and evaluate; probe them too when ``floor`` is given.

    Returns ``{<split>: metrics, "history": periodic test points, "probe": ...}``; fine-tuning is
    reseeded so that it draws the same random numbers whatever ran before. ``model_file``: where
    the fine-tuned model is saved for ``pscl-predict`` (:mod:`pscl.predict.model`).
    """
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    probe = probe_weights(cfg, datamodule, weights, floor) if floor is not None else None
    values = finetune(cfg, datamodule, weights, probe, checkpoint_dir, model_file)
    out = {eval_split(cfg): values, "history": values.pop("history", [])}
    if probe is not None:
        out["probe"] = probe
    return out


PROTOCOLS = ("final", "paper")


def _protocol(cfg: DictConfig) -> str:
    """``eval.protocol`` (default ``final``), checked."""
    protocol = str((cfg.get("eval") or {}).get("protocol", "final"))
    if protocol not in PROTOCOLS:
        raise ConfigError("eval.protocol", f"must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


def _periodic_test(cfg: DictConfig) -> list[Any]:
    """The PeriodicTest callback under ``eval.protocol=paper`` (none otherwise)."""
    from pscl.callbacks.periodic_test import PeriodicTest

    if _protocol(cfg) != "paper":
        return []
    every = cfg.eval.get("test_every_n_epochs") or max(1, int(cfg.trainer.max_epochs) // 5)
    if int(every) < 1:
        raise ConfigError("eval.test_every_n_epochs", f"must be >= 1, got {every}")
    return [PeriodicTest(int(every))]


def _log_hparams(trainer: pl.Trainer, cfg: DictConfig, datamodule: Any, test: dict[str, float],
                 probe: dict[str, Any] | None = None) -> None:
    """One row per run in TensorBoard's HParams view: method, labels, round -> Dice, ACC (and the probe's)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    params = {"method": str(cfg.method.name), "num_labeled": str(datamodule.num_labeled),
              "label_seed": datamodule.label_seed, "protocol": _protocol(cfg)}
    values = {"hparams/dice": test["dice"], "hparams/acc": test["acc"]}
    if probe is not None:
        values.update({"probe/dice": probe["dice"], "probe/acc": probe["acc"],
                       "probe/random_init_dice": probe["random_init"]["dice"]})
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(params, values)


CLASS_WEIGHT_CHOICES = ("data", "auto")


def class_weights(cfg: DictConfig, datamodule: Any) -> list[float] | None:
    """CE class weights of fine-tuning: ``finetune.class_weights=data`` takes ``data.class_weights``;
    ``auto`` computes them from this round's annotated pixels (inverse square-root frequency)."""
    from pscl.losses.segmentation import class_weights_from_counts

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
    from pscl.callbacks.divergence import StopOnDivergence
    from pscl.callbacks.random_state import RandomState
    from pscl.callbacks.resume_checkpoint import ResumeCheckpoint
    from pscl.transfer import transfer_weights

    split = eval_split(cfg)
    backbone = build_backbone(cfg, datamodule)
    if pretrained is not None:
        keys = transfer_weights(backbone, pretrained)
        log.info("fine-tuning from %d pretrained encoder/decoder tensors", len(keys))
    node = OmegaConf.to_container(cfg.finetune, resolve=True)
    node.pop("class_weights", None)
    if pretrained is None:  # warm-up concerns a pretrained encoder; a random one trains from the start
        node["encoder_warmup_epochs"] = 0
    model = instantiate(node, backbone=backbone, class_names=datamodule.class_names,
                        class_weights=class_weights(cfg, datamodule))
    # Without a val split there is nothing to validate on (the test set is never used for that);
    # while choosing a protocol the validation split is evaluated once, at the end.
    extra = {} if datamodule.index.val_ids and split == "test" else {"limit_val_batches": 0}
    if split == "val" and _protocol(cfg) == "paper":
        raise ConfigError("eval.protocol", "paper tests periodically on the test set, which eval.split=val never opens",
                          "use eval=default when choosing a protocol on the validation split")
    periodic = _periodic_test(cfg)
    if checkpoint_dir is None:
        configured = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
        checkpoint_dir = Path(configured) if configured else Path(cfg.paths.output_dir) / "checkpoints"
    checkpoint_dir = Path(checkpoint_dir)
    resume_from = _resume_checkpoint(cfg, checkpoint_dir)
    if resume_from is not None:
        _keep_earlier_logs(Path(cfg.paths.output_dir))
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
    from pscl.predict.model import save_model

    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # an interpolation that only resolves inside a Hydra job
        config = OmegaConf.to_container(cfg, resolve=False)
    return save_model(path, backbone, OmegaConf.to_container(cfg.backbone, resolve=True), datamodule.class_names,
                      datamodule.mean, datamodule.std, str(cfg.method.name), config,
                      normalisation=datamodule.normalisation)


# overrides a printed fine-tuning command sets itself, or that say where a run went or that it resumed
_NOT_CARRIED = ("stage", "pretrained_ckpt", "resume")


def _run_overrides(output_dir: Path) -> list[str] | None:
    """The overrides this run was started with (Hydra's task overrides); None outside a Hydra job."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    # a Hydra job that ran earlier in this process leaves its config behind: it must be this run's
    if Path(str(hydra_cfg.runtime.output_dir)).resolve() != Path(output_dir).resolve():
        return None
    return [str(override) for override in hydra_cfg.overrides.task]


def _carried(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key not in _NOT_CARRIED and not key.startswith("hydra.")


def finetune_command(output_dir: Path, cfg: DictConfig) -> str:
    """The ``pscl-train`` command that fine-tunes from this run's pretraining: the run's own overrides
    (so data, backbone and experiment match) with ``stage=finetune`` and ``pretrained_ckpt=`` set, and
    without the ones that placed or resumed it. Outside a Hydra job (``train(cfg)``) only the method
    is known."""
    overrides = _run_overrides(output_dir)
    # the run's overrides are already Hydra syntax as typed (e.g. data.root='/my data'): shell quoting only
    kept = ([command_arg(o) for o in overrides if _carried(o)] if overrides is not None
            else [command_arg(str(cfg.method.name), "method")])
    weights = output_dir / "pretrain" / "pretrained.pt"
    return " ".join(["pscl-train", *kept, command_arg("finetune", "stage"),
                     command_arg(str(weights), "pretrained_ckpt")])


def predict_command(output_dir: Path, data_root: str | None) -> str:
    """The ``pscl-predict`` command that applies this run's model to a folder of micrographs, each
    path quoted for the shell (its arguments are argparse's, not Hydra's)."""
    images = Path(data_root) / "images" if data_root and (Path(data_root) / "images").is_dir() else None
    image_arg = command_arg(str(images)) if images is not None else "<micrographs>"
    return " ".join(["pscl-predict", command_arg(str(output_dir)), image_arg, "--out",
                     command_arg(str(output_dir / "predict"))])


def _print_summary(results: dict[str, Any], output_dir: Path, cfg: DictConfig) -> None:
    split = results["split"]
    test = results[split]
    if rank_zero_only.rank != 0:
        return
    if not test:
        if (output_dir / "pretrain" / "pretrained.pt").is_file():
            note = ""
            if _run_overrides(output_dir) is None:  # train(cfg) called directly: only the method is known
                note = "\n  (add the other overrides this run was started with, e.g. data= and backbone=)"
            print(f"pscl: {results['method']} pretraining done; fine-tune with\n"
                  f"  {finetune_command(output_dir, cfg)}{note}", flush=True)
        return
    from pscl.data.labeled_ids import describe_source, seed_source

    source = describe_source(results.get("labeled_source") or seed_source(results["label_seed"]))
    lines = [
        f"pscl: {results['method']} with {results['num_labeled']} annotated image(s) "
        f"({source}: {', '.join(results['labeled_ids'][:5])})",
        f"  {split} Dice {test['dice']:.4f} (mean over foreground classes)   ACC {test['acc']:.4f}   mIoU {test['miou']:.4f}",
    ]
    if "probe" in results:
        probe = results["probe"]
        lines.append(f"  probe Dice {probe['dice']:.4f} (frozen network, linear per pixel; random init "
                     f"{probe['random_init']['dice']:.4f})")
    by_steps = bool(cfg.get("snapshot_steps"))
    for point in results.get("snapshots", [])[:-1]:
        probe_text = f"   probe Dice {point['probe']['dice']:.4f}" if "probe" in point else ""
        where = (f"step {point['steps']} (epoch {point['epoch']})" if by_steps
                 else f"epoch {point['epoch']} ({point['steps']} steps)")
        lines.append(f"  from pretraining {where}: {split} Dice {point[split]['dice']:.4f}{probe_text}")
    if "predictions" in (cfg.get("callbacks") or {}):
        lines.append(f"  predictions: {cfg.callbacks.predictions.dirpath}")
    if "tensorboard" in (cfg.get("logger") or {}):
        lines.append(f"  TensorBoard: tensorboard --logdir {output_dir}")
    from pscl.predict.model import MODEL_FILE

    if (output_dir / MODEL_FILE).is_file():
        lines.append(f"  apply it to new micrographs: {predict_command(output_dir, results.get('data_root'))}")
    lines.append(f"  run folder: {output_dir}   ({results['wall_time_s']} s)")
    print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------------------- CLI
_failed_runs: list[str] = []


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MissingMandatoryValue):
        key = getattr(exc, "full_key", "") or "?"
        return str(ConfigError(key, "is required but not set", f"add `{key}=...` to the command line"))
    if isinstance(exc, OmegaConfBaseException):
        return f"config error: {exc}"
    return str(exc)


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


# exit codes of pscl-train (pscl.errors): 0 done, 1 a crash (a bug: please report it), 2 a user
# error (bad data, config value, option or file), 3 the training diverged (non-finite loss or weights)
EXIT_DIVERGED = EXIT_PARTIAL
_task_started = False
# a resumed multirun's multirun.yaml as it was: Hydra's sweeper rewrites it, resume must not
_sweep_record: tuple[Path, bytes] | None = None


def _restore_sweep_record() -> None:
    """Put a resumed multirun's ``multirun.yaml`` back as it was before Hydra rewrote it."""
    if _sweep_record is None:
        return
    path, content = _sweep_record
    try:
        if not path.is_file() or path.read_bytes() != content:
            from pscl.integrity import atomic_write_bytes

            atomic_write_bytes(path, content)
    except OSError as exc:
        log.warning("could not restore %s (%s)", path, exc)


def _prepare_resumed_job(cfg: DictConfig) -> None:
    """Before a resumed job trains: its composed config may build pscl's own classes only (the
    overrides came from a file), and a job that never started gets its ``.hydra/`` record."""
    from pscl.integrity.configs import check_run_targets
    from pscl.runs.resume import write_run_record

    _restore_sweep_record()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    fix = "resume only runs that pscl wrote; start a new run instead"
    check_run_targets(OmegaConf.to_container(cfg, resolve=False), output_dir, fix)
    try:  # what Hydra will build is the resolved config: an interpolation may create nodes
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        resolved = None  # it fails the same way when built; nothing of it is built here
    if resolved is not None:
        check_run_targets(resolved, output_dir, fix)
    if HydraConfig.get().output_subdir is None:
        write_run_record(output_dir, cfg, list(HydraConfig.get().overrides.task))


def _refused_resume(exc: PsclError) -> float:
    """A resumed job whose saved config was refused: one message, nothing written to its folder."""
    if debugging():
        traceback.print_exc()
    print(f"pscl-train: error: {exc}", file=sys.stderr, flush=True)
    if _is_multirun():
        _failed_runs.append(str(HydraConfig.get().runtime.output_dir))
        return float("nan")
    sys.exit(int(exc.exit_code))


@hydra.main(version_base="1.3", config_path="pkg://pscl.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    """Run one job. A failure in a multirun is recorded in the job's folder and the sweep goes on."""
    from pscl.runs.state import FAILED, failure_line

    global _task_started
    _task_started = True
    failure: BaseException
    if _resuming(cfg) and cfg.get("resume"):
        try:
            _prepare_resumed_job(cfg)
        except PsclError as exc:  # a refused resume leaves the run folder as it was: no FAILED over its state
            return _refused_resume(exc)
    try:
        results = train(cfg)
        return float(results[results["split"]].get(OPTIMISED_METRIC, float("nan")))
    except PsclError as exc:  # a user error (2), or a diverged training (NonFiniteError: 3)
        failure, message, code = exc, _describe(exc), int(exc.exit_code)
    except OmegaConfBaseException as exc:
        failure, message, code = exc, _describe(exc), EXIT_USER_ERROR
    except Exception as exc:  # noqa: BLE001 - a crash of one job must not stop a sweep, nor print a traceback
        failure, message, code = exc, failure_line(exc), EXIT_CRASH
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    if not (output_dir / FAILED).is_file():  # failed before train() marked the folder
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(output_dir / FAILED, message + "\n\n" + traceback.format_exc())
        except OSError as exc:
            log.warning("could not write %s (%s)", output_dir / FAILED, exc)
    if debugging():
        traceback.print_exc()
    if code == EXIT_CRASH:
        print(crash_message("pscl-train", failure), file=sys.stderr, flush=True)
    else:
        print(f"pscl-train: error: {message}", file=sys.stderr, flush=True)
    if _is_multirun():
        _failed_runs.append(str(output_dir))
        log.error("run failed (%s): %s", output_dir, message)
        return float("nan")
    sys.exit(code)


def run_cli() -> int:
    """Run the Hydra app on ``sys.argv`` and return pscl-train's exit code (see EXIT_*).

    Hydra reports a bad option, an unknown config group or an unwritable run folder in one
    message and exits 1 before the task starts: those are user errors, so they return 2.
    """
    from pscl.checks.folders import check_log_folder
    from pscl.runs.resume import resume_argv

    global _task_started, _sweep_record
    _task_started = False
    _sweep_record = None
    _failed_runs.clear()
    try:
        resumed = resume_argv(sys.argv[1:])
        if resumed is not None:
            sys.argv = [sys.argv[0], *resumed]
            print(f"pscl-train: resuming with: {' '.join(resumed)}", file=sys.stderr, flush=True)
            sweep = next((a.split("=", 1)[1] for a in resumed if a.startswith("hydra.sweep.dir=")), None)
            if sweep is not None:
                from pscl.runs.quoting import unquote_value

                record = Path(unquote_value(sweep)) / "multirun.yaml"
                _sweep_record = (record, record.read_bytes())
        check_log_folder(sys.argv[1:])
    except PsclError as exc:
        if debugging():
            traceback.print_exc()
        print(f"pscl-train: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    try:
        _hydra_main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_CRASH)
        return EXIT_USER_ERROR if code == EXIT_CRASH and not _task_started else code
    finally:
        _restore_sweep_record()
    if _failed_runs:
        print(f"pscl-train: {len(_failed_runs)} run(s) failed; see FAILED in:\n  " + "\n  ".join(_failed_runs),
              file=sys.stderr)
        return EXIT_CRASH
    return 0


def main() -> None:
    """``pscl-train`` (via :func:`pscl.cli.train`) and ``python -m pscl.train``; exits non-zero if
    any job of a multirun failed."""
    from pscl.errors import run_command
    from pscl.perf import configure_allocator

    try:
        allocator = configure_allocator()  # may re-execute this command with mimalloc preloaded
    except ValueError as exc:
        print(f"pscl-train: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    os.environ["PSCL_ALLOCATOR_IN_EFFECT"] = allocator
    sys.exit(run_command("pscl-train", run_cli))


if __name__ == "__main__":
    main()
