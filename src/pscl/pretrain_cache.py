"""Reuse of label-free pretraining across rounds (``reuse_pretraining``, on by default).

An image-level method (SimCLR, MoCo, BYOL, DenseCL) never looks at the annotated images, so its
pretraining depends only on its own configuration and the unlabelled pool: five label rounds can
share one pretraining. :func:`pretraining_key` hashes everything that shapes it - the method's
pretraining node and epochs, the backbone, the seed, the data settings that define the pool and
its views (not the label selection or fine-tuning settings), the trainer settings that change
the computation, the pool's file names and sizes, and the pscl version. Weights are stored under
``<cache_dir>/pretrained/<method>-<key>/``; PSCL, whose sampling uses the labels, is never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import pscl

# data settings that choose or feed the labelled images / fine-tuning only, or say where files live
NOT_PRETRAINING_DATA_KEYS = frozenset({
    "num_labeled", "label_seed", "batch_size", "samples_per_epoch", "test_batch_size", "num_workers",
    "pin_memory", "class_weights", "jitter", "cache_dir",
})
# trainer settings that change what pretraining computes
PRETRAINING_TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "deterministic",
                            "limit_train_batches", "accumulate_grad_batches", "gradient_clip_val", "fast_dev_run")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def pretraining_config(cfg: DictConfig, pool: Sequence[Path]) -> dict[str, Any]:
    """The part of ``cfg`` (plus the pool's files) that determines the pretrained weights."""
    data = {k: v for k, v in _plain(cfg.data).items() if k not in NOT_PRETRAINING_DATA_KEYS}
    trainer = _plain(cfg.trainer)
    return {
        "method": cfg.method.name,
        "pretrain": _plain(cfg.method.pretrain),
        "pretrain_epochs": int(cfg.method.pretrain_epochs),
        "backbone": _plain(cfg.backbone),
        "seed": int(cfg.seed),
        "data": data,
        "trainer": {k: trainer.get(k) for k in PRETRAINING_TRAINER_KEYS},
        "pool": [[p.name, p.stat().st_size] for p in sorted(Path(p) for p in pool)],
        "pscl_version": pscl.__version__,
    }


def pretraining_key(config: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of ``config``."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_folder(cache_dir: str | Path, method: str, key: str) -> Path:
    return Path(cache_dir).expanduser() / "pretrained" / f"{method}-{key}"


def store(folder: Path, weights_file: Path, config: dict[str, Any]) -> Path:
    """Copy a finished ``pretrained.pt`` into ``folder`` atomically (with the hashed config beside it).

    Concurrent runs with the same key may both store; the last rename wins and both files are equal.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(weights_file, tmp)
        os.replace(tmp, folder / "pretrained.pt")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return folder / "pretrained.pt"
