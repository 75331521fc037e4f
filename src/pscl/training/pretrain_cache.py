"""Reuse of label-free pretraining across rounds (``reuse_pretraining``, on by default).

An image-level method (SimCLR, MoCo, BYOL, DenseCL) never looks at the annotated images, so its
pretraining depends only on its own configuration and the unlabelled pool: five label rounds can
share one pretraining. :func:`pretraining_key` hashes everything that shapes it - the method's
pretraining node and length (its epochs, or ``method.pretrain_steps`` when set), the backbone,
the seed, the data settings that define the pool and its views (not the label selection or
fine-tuning settings), the trainer settings that change the computation, the SHA-256 of every
pool file (and, for PSCL, of the annotated masks; for a backbone that starts from a local
``backbone.encoder_weights`` file, of that file), and the pscl version. Weights are stored under
``<cache_dir>/pretrained/<method>-<key>/``. PSCL, whose sampling uses the annotated images, also
hashes their ids - the round's actual ids, however chosen (``data.label_seed`` or
``data.labeled_ids``), as a set: it is reused only by runs that annotate the same images (e.g. the
points of a protocol grid), and a selection never reuses a pretraining made for another one. The snapshots of a pretraining-length study (``snapshot_epochs`` or ``snapshot_steps``) are
stored beside the weights and are part of the key.

An entry can be trusted only as far as it checks out: its files are written atomically under a
lock, ``entry.json`` (the SHA-256 of each weights file) last, and :func:`lookup` reuses an entry
only if every hash matches and the weights load without a pickle and are finite. Anything else
is reported, moved aside to ``<entry>.broken-<UTC time>`` (kept for inspection, never loaded
again) and pretrained again, and the new pretraining takes its place: the cache repairs itself
instead of warning on every later run. A healthy entry is never replaced (write-once). A cache
that cannot be written costs the reuse, not the run.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf

import pscl
from pscl.errors import PsclError
from pscl.integrity import atomic_write_text, content_hashes, copy_atomic, file_lock, hash_file
from pscl.models.smp_backbone import encoder_weights_path
from pscl.models.transfer import load_pretrained, read_meta

log = logging.getLogger("pscl.pretrain_cache")
ENTRY_FILE = "entry.json"
EPOCH_PREFIX = "epoch"
STEP_PREFIX = "step"


class Snapshot(NamedTuple):
    """One snapshot: the epoch it ends or fell in (None if unknown), the optimiser steps so far, its file."""

    epoch: int | None
    steps: int
    path: Path

    @property
    def by_steps(self) -> bool:
        """True for a ``snapshot_steps`` snapshot (``step_<s>.pt``)."""
        return self.path.stem.startswith(f"{STEP_PREFIX}_")

    @property
    def label(self) -> str:
        """How a log line names it, e.g. ``step 190`` or ``epoch 3``."""
        return f"step {self.steps}" if self.by_steps else f"epoch {self.epoch}"

    @property
    def description(self) -> str:
        """The label with the other count, e.g. ``step 190 (epoch 10)`` or ``epoch 3 (57 steps)``."""
        if self.by_steps:
            return f"step {self.steps} (epoch {self.epoch})"
        return f"epoch {self.epoch} ({self.steps} steps)"


# An entry and a run's pretrain/ folder share one layout: pretrained.pt, and snapshots/ with these names
def snapshot_path(dirpath: Path, epoch: int) -> Path:
    return Path(dirpath) / f"{EPOCH_PREFIX}_{int(epoch):04d}.pt"


def step_snapshot_path(dirpath: Path, step: int) -> Path:
    return Path(dirpath) / f"{STEP_PREFIX}_{int(step):04d}.pt"

# what a reusable entry yields: the weights, and (epoch, steps, file) of each snapshot
Found = tuple[dict, list[Snapshot]]

# data settings that choose or feed the labelled images / fine-tuning only, or say where files live
# (the labelled ids themselves enter the key of the methods that use them: pretraining_config)
NOT_PRETRAINING_DATA_KEYS = frozenset({
    "num_labeled", "label_seed", "labeled_ids", "batch_size", "samples_per_epoch", "test_batch_size", "num_workers",
    "pin_memory", "class_weights", "jitter", "cache_dir", "eval_split",
})
# trainer settings that change what pretraining computes
PRETRAINING_TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "deterministic",
                            "limit_train_batches", "accumulate_grad_batches", "gradient_clip_val", "fast_dev_run")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _data_entry(cfg: DictConfig) -> dict[str, Any]:
    """The data settings that shape pretraining. ``normalisation`` changes the views, so it is
    one; at its default (``dataset``, what every run used before it existed) it is left out, so
    the keys of the entries already in a cache stay what they were."""
    data = {k: v for k, v in _plain(cfg.data).items() if k not in NOT_PRETRAINING_DATA_KEYS}
    if data.get("normalisation") == "dataset":
        del data["normalisation"]
    return data


def _length_entry(cfg: DictConfig) -> dict[str, int]:
    """``{"pretrain_steps": n}`` when the length is set in optimiser steps (it wins over the epochs,
    which then change nothing), else ``{"pretrain_epochs": n}``: the key of an epoch-length
    pretraining is the one it always had."""
    steps = cfg.method.get("pretrain_steps")
    if steps is not None:
        return {"pretrain_steps": int(steps)}
    return {"pretrain_epochs": int(cfg.method.pretrain_epochs)}


def _encoder_weights_entry(cfg: DictConfig) -> dict[str, str]:
    """``{"encoder_weights_sha256": ...}`` when the backbone starts from a local weights file
    (``backbone.encoder_weights``, not ``null`` or ``imagenet``): a file changed under the same name
    then gives another key. Empty otherwise (the key of every other pretraining stays what it was);
    a missing file is left to the backbone, which names it."""
    path = encoder_weights_path(cfg.backbone.get("encoder_weights"))
    return {} if path is None else {"encoder_weights_sha256": hash_file(path)}


def pretraining_config(cfg: DictConfig, pool: Sequence[Path], labeled_ids: Sequence[str] | None = None,
                       snapshot_epochs: Sequence[int] = (), label_files: Sequence[Path] = (),
                       snapshot_steps: Sequence[int] = ()) -> dict[str, Any]:
    """The part of ``cfg`` (plus the pool's contents) that determines the pretrained weights.

    ``labeled_ids``: the annotated images, for methods whose pretraining uses them, with
    ``label_files`` their masks (hashed too); ``snapshot_epochs`` / ``snapshot_steps``: the epochs
    or optimiser steps whose weights are kept too. They enter only when given.
    """
    data = _data_entry(cfg)
    trainer = _plain(cfg.trainer)
    extra: dict[str, Any] = {}
    if labeled_ids is not None:
        extra["labeled_ids"] = sorted(labeled_ids)
    if snapshot_epochs:
        extra["snapshot_epochs"] = sorted(int(e) for e in snapshot_epochs)
    if snapshot_steps:
        extra["snapshot_steps"] = sorted(int(s) for s in snapshot_steps)
    if label_files:
        extra["label_files"] = content_hashes(label_files)
    extra.update(_encoder_weights_entry(cfg))
    started = time.perf_counter()
    pool_hashes = content_hashes(pool)
    log.debug("hashed %d pool files in %.2f s", len(pool_hashes), time.perf_counter() - started)
    return {
        **extra,
        "method": cfg.method.name,
        "pretrain": _plain(cfg.method.pretrain),
        **_length_entry(cfg),
        "backbone": _plain(cfg.backbone),
        "seed": int(cfg.seed),
        "data": data,
        "trainer": {k: trainer.get(k) for k in PRETRAINING_TRAINER_KEYS},
        "pool": pool_hashes,
        "pscl_version": pscl.__version__,
    }


def pretraining_key(config: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of ``config``."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_folder(cache_dir: str | Path, method: str, key: str) -> Path:
    return Path(cache_dir).expanduser() / "pretrained" / f"{method}-{key}"


def _entry_files(folder: Path) -> list[Path]:
    return [folder / "pretrained.pt", *sorted((folder / "snapshots").glob("*.pt"))]


def _lock(folder: Path) -> Path:
    """The lock file that serialises writing, checking and moving the entry ``folder``."""
    return folder.parent / f".{folder.name}.lock"


def store(folder: Path, weights_file: Path, config: dict[str, Any], snapshots: Sequence[Path] = ()) -> Path | None:
    """Copy a finished ``pretrained.pt`` (and its snapshot files) into ``folder``; None if it could not.

    Under a lock, each file is copied atomically, then ``entry.json`` records their SHA-256: an
    entry without it is unfinished and never reused. A healthy entry another run completed
    meanwhile is kept as it is (write-once); one that fails its checks is moved aside first
    (:func:`move_aside`), so the cache repairs itself. A cache that cannot be written logs a
    warning and the run goes on.
    """
    try:
        with file_lock(_lock(folder)):
            if folder.exists():
                found, problem = _check(folder, ())
                if found is not None:
                    return folder / "pretrained.pt"
                _warn_moved(folder, problem, move_aside(folder), "this run's pretraining takes its place")
            folder.mkdir(parents=True)
            atomic_write_text(folder / "config.json", json.dumps(config, indent=2, sort_keys=True, default=str))
            for snapshot in snapshots:
                copy_atomic(Path(snapshot), folder / "snapshots" / Path(snapshot).name)
            copy_atomic(weights_file, folder / "pretrained.pt")
            hashes = {str(p.relative_to(folder)): hash_file(p) for p in _entry_files(folder)}
            atomic_write_text(folder / ENTRY_FILE, json.dumps({"sha256": hashes}, indent=2, sort_keys=True))
    except OSError as exc:
        log.warning("could not store the pretraining in the cache (%s); this run goes on, later runs will "
                    "pretrain again (set paths.cache_dir or PSCL_CACHE_DIR to a writable folder)", exc)
        return None
    return folder / "pretrained.pt"


def verify(folder: Path) -> str | None:
    """None if the entry in ``folder`` is whole and unchanged; otherwise why it cannot be reused."""
    entry = folder / ENTRY_FILE
    if not (folder / "pretrained.pt").is_file():
        return "no pretrained.pt"
    if not entry.is_file():
        return f"no {ENTRY_FILE} (an unfinished or older entry)"
    try:
        recorded = json.loads(entry.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {ENTRY_FILE} ({exc})"
    if not isinstance(recorded, dict):
        return f"unreadable {ENTRY_FILE} (its sha256 is not a mapping of files to hashes)"
    present = {str(p.relative_to(folder)) for p in _entry_files(folder)}
    if set(recorded) != present:
        return f"its files ({sorted(present)}) are not the recorded ones ({sorted(recorded)})"
    for name, digest in sorted(recorded.items()):
        if hash_file(folder / name) != digest:
            return f"{name} changed since it was stored (content hash differs)"
    return None


def _check(folder: Path, epochs: Sequence[int], steps: Sequence[int] = ()) -> tuple[Found | None, str]:
    """``((weights, snapshots), "")`` if the entry passes every check - hashes, the snapshots of
    ``epochs`` / ``steps``, a safe load, finite weights - else ``(None, why not)``."""
    problem = verify(folder)
    if problem is not None:
        return None, problem
    snapshots = cached_snapshots(folder, epochs, steps)
    if snapshots is None:
        return None, "a snapshot is missing"
    try:
        return (load_pretrained(folder / "pretrained.pt"), snapshots), ""
    except PsclError as exc:  # a pickle refused unrun, an unreadable file, non-finite weights
        return None, str(exc).splitlines()[0]


def move_aside(folder: Path) -> Path:
    """Rename the entry ``folder`` to ``<folder>.broken-<UTC time>`` (kept for inspection); the caller
    holds its lock. Returns the new name."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = folder.with_name(f"{folder.name}.broken-{stamp}")
    number = 1
    while target.exists():  # two repairs within a second
        target = folder.with_name(f"{folder.name}.broken-{stamp}-{number}")
        number += 1
    os.replace(folder, target)
    return target


def _warn_moved(folder: Path, problem: str, aside: Path, then: str) -> None:
    log.warning("cached pretraining %s is not reused: %s; moved it aside to %s (kept for inspection); %s",
                folder, problem, aside, then)


def lookup(folder: Path, epochs: Sequence[int], steps: Sequence[int] = ()) -> Found | None:
    """The cached weights and snapshots of ``epochs`` / ``steps`` if the entry checks out; None otherwise.

    An entry that fails a check is moved aside (with a warning naming both folders) so that this
    run's pretraining can take its place; the checks are redone under the entry's lock first, so an
    entry a concurrent run has just completed is reused, never moved.
    """
    if not folder.exists():
        return None
    found, problem = _check(folder, epochs, steps)
    if found is not None:
        return found
    try:
        with file_lock(_lock(folder)):
            if not folder.exists():  # a concurrent run moved it aside meanwhile
                return None
            found, problem = _check(folder, epochs, steps)
            if found is not None:
                return found
            _warn_moved(folder, problem, move_aside(folder),
                        "pretraining again, and this run's pretraining will take its place")
    except OSError as exc:  # a read-only cache: the entry stays, this run pretrains
        log.warning("cached pretraining %s is not reused: %s; it could not be moved aside (%s); pretraining "
                    "again", folder, problem, exc)
    return None


def cached_snapshots(folder: Path, epochs: Sequence[int], steps: Sequence[int] = ()) -> list[Snapshot] | None:
    """The snapshots of ``epochs`` (``epoch_<e>.pt``) and ``steps`` (``step_<s>.pt``) in
    ``<folder>/snapshots``, shortest first; None if one is missing or unreadable."""
    found = []
    for epoch in sorted(epochs):
        path = snapshot_path(folder / "snapshots", epoch)
        meta = _snapshot_meta(path)
        if meta is None:
            return None
        found.append(Snapshot(int(epoch), _meta_int(meta, "steps", -1), path))
    for step in sorted(steps):
        path = step_snapshot_path(folder / "snapshots", step)
        meta = _snapshot_meta(path)
        if meta is None or _meta_int(meta, "steps", -1) != int(step):  # not the snapshot of that step
            return None
        epoch = meta.get("epoch")
        found.append(Snapshot(epoch if isinstance(epoch, int) else None, int(step), path))
    return found


def _snapshot_meta(path: Path) -> dict | None:
    """The meta of the snapshot file ``path``; None if it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return read_meta(path)
    except PsclError:
        return None


def _meta_int(meta: dict, key: str, default: int) -> int:
    """``meta[key]`` as an int; ``default`` if absent or not a number (a foreign or older file)."""
    try:
        return int(meta.get(key, default))
    except (TypeError, ValueError):
        return default
