"""What a pretrained network is worth: fine-tuned from, and probed (the snapshot study included).

:func:`evaluate_weights` fine-tunes from one set of pretrained weights (reseeded, so it draws the
same random numbers whatever ran before) and, with ``eval.probe=true``, fits the dense linear
probe on them beside its floor (:func:`random_init_probe`). :func:`finetune_from_snapshot` does
that for each snapshot of a pretraining-length study, in its own folder, once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from pscl.integrity import atomic_write_text
from pscl.models.transfer import load_pretrained, transfer_weights
from pscl.probe.evaluate import probe_backbone
from pscl.probe.evaluate import random_init_probe as probe_random_init
from pscl.training.build import build_backbone, eval_split, probe_settings, resuming
from pscl.training.finetuning import finetune
from pscl.training.pretrain_cache import Snapshot

log = logging.getLogger("pscl.train")  # training's log lines keep the name they had before pscl.training


def random_init_probe(cfg: DictConfig, datamodule: Any, split: str) -> dict[str, Any]:
    """The probe's floor: the same probe on the backbone as initialised under ``seed``."""
    return probe_random_init(lambda: build_backbone(cfg, datamodule), datamodule, probe_settings(cfg), split,
                             seed=int(cfg.seed))


def probe_weights(cfg: DictConfig, datamodule: Any, weights: dict[str, torch.Tensor] | None,
                  floor: dict[str, Any]) -> dict[str, Any]:
    """The dense linear probe of ``weights`` (None: no pretraining, so the floor itself), with its floor."""
    if weights is None:
        values = dict(floor)
    else:
        with torch.random.fork_rng(devices=[]):  # building the backbone draws initial weights
            backbone = build_backbone(cfg, datamodule)
        transfer_weights(backbone, weights)
        values = probe_backbone(backbone, datamodule, probe_settings(cfg), floor["split"])
    short = {k: values[k] for k in ("dice", "acc", "miou", "features", "split", "seconds")}
    return {**short, "pretrained": weights is not None,
            "random_init": {"dice": floor["dice"], "acc": floor["acc"]}}


def evaluate_weights(cfg: DictConfig, datamodule: Any, weights: dict[str, torch.Tensor] | None,
                     floor: dict[str, Any] | None, checkpoint_dir: Path | None = None,
                     model_file: Path | None = None) -> dict[str, Any]:
    """Fine-tune from ``weights`` (None: from scratch) and evaluate; probe them too when ``floor`` is given.

    Returns ``{<split>: metrics, "history": periodic test points, "probe": ...}``; fine-tuning is
    reseeded so that it draws the same random numbers whatever ran before. ``model_file``: where
    the fine-tuned model is saved for ``pscl-predict`` (:mod:`pscl.models.model_file`).
    """
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    probe = probe_weights(cfg, datamodule, weights, floor) if floor is not None else None
    values = finetune(cfg, datamodule, weights, probe, checkpoint_dir, model_file)
    out = {eval_split(cfg): values, "history": values.pop("history", [])}
    if probe is not None:
        out["probe"] = probe
    return out


def finetune_from_snapshot(cfg: DictConfig, datamodule: Any, snapshot: Snapshot, floor: dict[str, Any] | None,
                           output_dir: Path) -> dict[str, Any]:
    """Fine-tune (and probe) from one pretraining snapshot in ``<run>/from_snapshot/epoch_<e>/`` or
    ``<run>/from_snapshot/step_<s>/`` (the snapshot file's name); its result is kept there
    (``point.json``), so a resumed run does not redo it."""
    folder = output_dir / "from_snapshot" / snapshot.path.stem
    done = folder / "point.json"
    if resuming(cfg) and done.is_file():
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
