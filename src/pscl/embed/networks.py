"""The networks of a run folder that ``pscl-embed`` maps, and their panel titles.

A run folder gives its pretrained network (``pretrain/pretrained.pt``, or else the last snapshot
in ``pretrain/snapshots/``) and its fine-tuned one (``model.pt``, or ``checkpoints/last.ckpt`` of
an older run). Weights are read without pickles (:func:`pscl.models.transfer.load_pretrained`,
:func:`pscl.models.model_file.load_trained_model`); the backbone is built only from the classes pscl
knows (:func:`pscl.models.registry.build_backbone_from_file`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pscl.errors import DataError
from pscl.models.base import SegmentationBackbone

RUN_FIX = "give a folder pscl-train wrote (e.g. logs/train/runs/<time>), holding model.pt or pretrain/pretrained.pt"
METRICS_FILE = "metrics.json"


@dataclass
class Run:
    """What a run folder holds that a map needs; ``config`` is {} when it has no ``.hydra/config.yaml``."""

    folder: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    backbone_config: dict[str, Any] | None
    pretrained: Path | None
    finetuned: bool

    @property
    def method(self) -> str:
        """The method, from metrics.json, else the config, else the folder name."""
        method = self.metrics.get("method")
        if not isinstance(method, str):
            node = self.config.get("method")
            method = node.get("name") if isinstance(node, dict) else None
        return method if isinstance(method, str) else self.folder.name

    @property
    def seed(self) -> int | None:
        """The run's seed (its random-init floor was built under it), if the config gives it as a number."""
        seed = self.config.get("seed")
        return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None

    @property
    def data_root(self) -> str | None:
        root = self.metrics.get("data_root")
        return root if isinstance(root, str) and root else None


@dataclass
class Network:
    """One panel's network: a unique name, its title, the backbone, and the input statistics it
    was trained with (None: those of the data folder, as pretraining used them)."""

    name: str
    title: str
    backbone: SegmentationBackbone
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    class_names: tuple[str, ...] = field(default_factory=tuple)


def last_pretrained(folder: Path) -> Path | None:
    """``pretrain/pretrained.pt``, or else the snapshot with the most steps in ``pretrain/snapshots/``."""
    final = folder / "pretrain" / "pretrained.pt"
    if final.is_file():
        return final
    snapshots = [p for p in (folder / "pretrain" / "snapshots").glob("*.pt") if p.is_file()]
    return max(snapshots, key=lambda p: (_snapshot_steps(p), p.name)) if snapshots else None


def _snapshot_steps(path: Path) -> int:
    """A snapshot's optimiser steps from its meta (-1 when unreadable: it sorts first)."""
    from pscl.models.transfer import read_meta

    try:
        steps = read_meta(path).get("steps")
    except DataError:
        return -1
    return int(steps) if isinstance(steps, int) and not isinstance(steps, bool) else -1


def read_metrics(path: Path) -> dict[str, Any]:
    """A run's ``metrics.json`` ({} when absent); unreadable JSON is a :class:`DataError`."""
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot be read as JSON ({exc})", path,
                        "restore the run's metrics.json or remove it") from None
    if not isinstance(record, dict):
        raise DataError("is not a run record (not a JSON object)", path, "restore the run's metrics.json or remove it")
    return record


def read_run(folder: Path) -> Run:
    """The run in ``folder``; a :class:`DataError` naming it when it is not a pscl run."""
    from pscl.models.model_file import MODEL_FILE, _run_config

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError("is not a folder" if folder.exists() else "does not exist", folder, RUN_FIX)
    pretrained = last_pretrained(folder)
    finetuned = (folder / MODEL_FILE).is_file() or (folder / "checkpoints" / "last.ckpt").is_file()
    if pretrained is None and not finetuned:
        raise DataError("is not a pscl run: it holds neither model.pt nor pretrain/pretrained.pt "
                        "(nor a snapshot in pretrain/snapshots/)", folder, RUN_FIX)
    config_file = folder / ".hydra" / "config.yaml"
    config, backbone_config = _run_config(config_file) if config_file.is_file() else ({}, None)
    return Run(folder, read_metrics(folder / METRICS_FILE), config, backbone_config, pretrained, finetuned)


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (a missing or damaged entry)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _dice_of(node: Any) -> float | None:
    return _number(node.get("dice")) if isinstance(node, dict) else None


def pretraining_facts(run: Run) -> tuple[int | None, float | None]:
    """(optimiser steps, probe Dice) of the run's pretrained weights, each None when not recorded."""
    from pscl.models.transfer import read_meta

    assert run.pretrained is not None
    snapshots = [p for p in run.metrics.get("snapshots") or [] if isinstance(p, dict)]
    if run.pretrained.name == "pretrained.pt":
        steps = snapshots[-1].get("steps") if snapshots else None  # the last snapshot is the final pretraining
        if steps is None:
            method = run.config.get("method")
            steps = method.get("pretrain_steps") if isinstance(method, dict) else None
        probe = run.metrics.get("probe")
        dice = _dice_of(probe) if isinstance(probe, dict) and probe.get("pretrained", True) else None
    else:
        steps = read_meta(run.pretrained).get("steps")
        dice = next((_dice_of(p.get("probe")) for p in snapshots if p.get("steps") == steps), None)
    steps = int(steps) if isinstance(steps, int) and not isinstance(steps, bool) else None
    return steps, dice


def panel_title(head: str, parts: Sequence[str]) -> str:
    """A panel title: ``head`` on the first line, the known facts joined on the second."""
    return head if not parts else f"{head}\n{' · '.join(parts)}"


def _build(run: Run, in_channels: int, num_classes: int, seed: int) -> SegmentationBackbone:
    """A fresh backbone of the run's config, initialised under ``seed`` without touching the global stream."""
    from pscl.models.registry import build_backbone_from_file

    backbone_config, where = backbone_config_of(run)
    fix = "restore the run's .hydra/config.yaml (its `backbone` section builds the network)"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_backbone_from_file(backbone_config, in_channels, num_classes, where, fix)


def backbone_config_of(run: Run) -> tuple[Mapping[str, Any], Path]:
    """The backbone config of the run and the file it is from: ``.hydra/config.yaml``, else the fine-tuned model's."""
    if run.backbone_config is not None:
        return run.backbone_config, run.folder / ".hydra" / "config.yaml"
    if run.finetuned:
        from pscl.models.model_file import load_trained_model

        model = load_trained_model(run.folder)
        return model.backbone_config, model.source or run.folder
    raise DataError("has no .hydra/config.yaml, so the network its pretrained weights belong to is unknown",
                    run.folder, "restore the run's .hydra/config.yaml")


def pretrained_network(run: Run, in_channels: int, num_classes: int, seed: int) -> Network:
    """The run's pretrained backbone (encoder and decoder weights loaded into a fresh one)."""
    from pscl.models.transfer import load_pretrained, transfer_weights

    assert run.pretrained is not None
    backbone = _build(run, in_channels, num_classes, seed)
    weights = load_pretrained(run.pretrained)
    try:
        transfer_weights(backbone, weights)
    except DataError as exc:  # its message names no file: name the weights that do not fit
        raise DataError(str(exc), run.pretrained, None) from None
    steps, dice = pretraining_facts(run)
    parts = [f"{steps} steps"] if steps is not None else []
    if dice is not None:
        parts.append(f"probe Dice {dice:.3f}")
    name = f"{run.method} pretrained"
    return Network(name, panel_title(name, parts), backbone)


def finetuned_network(run: Run) -> Network:
    """The run's fine-tuned model, with the statistics it was trained with; its test Dice in the title."""
    from pscl.models.model_file import load_trained_model

    model = load_trained_model(run.folder)
    supervised = run.method == "supervised"
    split = run.metrics.get("split") if isinstance(run.metrics.get("split"), str) else "test"
    dice = _dice_of(run.metrics.get(split))
    parts = [f"{split} Dice {dice:.3f}"] if dice is not None else []
    name = "supervised" if supervised else f"{run.method} fine-tuned"
    return Network(name, panel_title(name, parts), model.backbone, (model.mean, model.std), model.class_names)


def random_network(run: Run, in_channels: int, num_classes: int, seed: int) -> Network:
    """The run's backbone as initialised under ``seed``; its probe floor in the title when it is that network."""
    backbone = _build(run, in_channels, num_classes, seed)
    probe = run.metrics.get("probe")
    floor = _dice_of(probe.get("random_init")) if isinstance(probe, dict) else None
    parts = [f"probe Dice {floor:.3f}"] if floor is not None and seed == run.seed else []
    return Network("random init", panel_title("random init", parts), backbone)


def unique_names(networks: Sequence[Network], folders: Sequence[Path]) -> list[Network]:
    """The networks, each name made unique (the table tells panels apart by it): a repeated name
    gets its run folder's name, and a number if that is not enough."""
    counts: dict[str, int] = {}
    for network in networks:
        counts[network.name] = counts.get(network.name, 0) + 1
    seen: set[str] = set()
    for network, folder in zip(networks, folders):
        name = f"{network.name} [{folder.name}]" if counts[network.name] > 1 else network.name
        base, k = name, 2
        while name in seen:
            name, k = f"{base} #{k}", k + 1
        _, _, rest = network.title.partition("\n")
        network.title = panel_title(name, [rest] if rest else []) if name != network.name else network.title
        network.name = name
        seen.add(name)
    return list(networks)
