"""Reuse of label-free pretraining across rounds (``reuse_pretraining``, on by default).

An image-level method (SimCLR, MoCo, BYOL, DenseCL) never looks at the annotated images, so its
pretraining depends only on its own configuration and the unlabelled pool: five label rounds can
share one pretraining. :func:`pretraining_key` hashes everything that shapes it - the method's
pretraining node and epochs, the backbone, the seed, the data settings that define the pool and
its views (not the label selection or fine-tuning settings), the trainer settings that change
the computation, the pool's file names and sizes, and the pscl version. Weights are stored under
``<cache_dir>/pretrained/<method>-<key>/``. PSCL, whose sampling uses the annotated images, also
hashes their ids: it is reused only by runs of the same round (e.g. the points of a protocol
grid). The snapshots of a pretraining-length study (``snapshot_epochs``) are stored beside the
weights and are part of the key.
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
    "pin_memory", "class_weights", "jitter", "cache_dir", "eval_split",
})
# trainer settings that change what pretraining computes
PRETRAINING_TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "deterministic",
                            "limit_train_batches", "accumulate_grad_batches", "gradient_clip_val", "fast_dev_run")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def pretraining_config(cfg: DictConfig, pool: Sequence[Path], labeled_ids: Sequence[str] | None = None,
                       snapshot_epochs: Sequence[int] = ()) -> dict[str, Any]:
    """The part of ``cfg`` (plus the pool's files) that determines the pretrained weights.

    ``labeled_ids``: the annotated images, for methods whose pretraining uses them;
    ``snapshot_epochs``: the epochs whose weights are kept too. Both enter only when given, so
    the keys of earlier label-free pretrainings stay valid.
    """
    data = {k: v for k, v in _plain(cfg.data).items() if k not in NOT_PRETRAINING_DATA_KEYS}
    trainer = _plain(cfg.trainer)
    extra: dict[str, Any] = {}
    if labeled_ids is not None:
        extra["labeled_ids"] = sorted(labeled_ids)
    if snapshot_epochs:
        extra["snapshot_epochs"] = sorted(int(e) for e in snapshot_epochs)
    return {
        **extra,
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


def _copy_atomic(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def store(folder: Path, weights_file: Path, config: dict[str, Any], snapshots: Sequence[Path] = ()) -> Path:
    """Copy a finished ``pretrained.pt`` (and its snapshot files) into ``folder`` atomically, with
    the hashed config beside it.

    The snapshots go first and ``pretrained.pt`` last, so an entry with ``pretrained.pt`` is whole.
    Concurrent runs with the same key may both store; the last rename wins and both files are equal.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    for snapshot in snapshots:
        (folder / "snapshots").mkdir(exist_ok=True)
        _copy_atomic(Path(snapshot), folder / "snapshots" / Path(snapshot).name)
    _copy_atomic(weights_file, folder / "pretrained.pt")
    return folder / "pretrained.pt"


def cached_snapshots(folder: Path, epochs: Sequence[int]) -> list[tuple[int, int, Path]] | None:
    """``[(epoch, steps, file)]`` of the cached snapshots of ``epochs``; None if one is missing."""
    from pscl.callbacks.snapshots import snapshot_path
    from pscl.transfer import read_meta

    found = []
    for epoch in sorted(epochs):
        path = snapshot_path(folder / "snapshots", epoch)
        if not path.is_file():
            return None
        found.append((int(epoch), int(read_meta(path).get("steps", -1)), path))
    return found
