"""The runs ``pscl-report`` reads: :class:`Run`, read from a run folder's files, and the values a
run reports under a protocol.

A finished run is read from its ``metrics.json``, checked field by field (:func:`run_from_record`);
a failed, unfinished or unreadable one keeps what its ``.hydra/config.yaml`` (or else its
unreadable ``metrics.json``) says about it and the reason it is not reported.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pscl.errors import DataError, PsclError
from pscl.reporting.grid import grid_point


@dataclass
class Run:
    """One run of a multirun, finished or failed."""

    folder: Path
    method: str
    num_labeled: str
    label_seed: int
    num_images: int | None = None  # annotated images actually used (len(labeled_ids))
    labeled_ids: list[str] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    protocol: str = "final"
    data_root: str | None = None
    error: str | None = None
    state: str = "finished"  # finished | failed | unfinished (pscl.runs.state)
    split: str = "test"  # val: a protocol-grid run (test holds its validation metrics)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    probe: dict[str, Any] | None = None
    point: str | None = None  # the grid point of a validation run (pscl.reporting.grid)
    # how labeled_ids were chosen: a pscl-select strategy, "list" (named by hand), None (data.label_seed)
    strategy: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


def _from_hydra_config(folder: Path) -> tuple[dict[str, Any], str]:
    """method / num_labeled / label_seed of a run from its ``.hydra/config.yaml`` (for failed runs),
    and why they are missing (``""`` if they are not); a damaged file costs the facts, not the report."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    path = folder / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}, ""
    try:
        cfg = OmegaConf.load(path)
        if not isinstance(cfg, DictConfig):
            return {}, f"its {path.relative_to(folder)} is not a mapping"
        facts = {"method": OmegaConf.select(cfg, "method.name", default="?"),
                 "num_labeled": OmegaConf.select(cfg, "data.num_labeled", default="?"),
                 "label_seed": OmegaConf.select(cfg, "data.label_seed", default=-1)}
    # OmegaConf raises any of these for a file that is unreadable, not UTF-8, not YAML, or whose
    # values do not resolve
    except (OSError, ValueError, YAMLError, OmegaConfBaseException) as exc:
        return {}, f"its {path.relative_to(folder)} cannot be read ({type(exc).__name__})"
    return facts, ""


class UnreadableRecord(ValueError):
    """A ``metrics.json`` whose fields are not what pscl-train writes; the message says which."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _need(record: dict[str, Any], key: str, kinds: tuple[type, ...], where: str = "") -> Any:
    """``record[key]`` if it is one of ``kinds`` (never a bool), else UnreadableRecord."""
    if key not in record:
        raise UnreadableRecord(f"no `{where}{key}`")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = " or ".join(dict.fromkeys("number" if k in (int, float) else k.__name__ for k in kinds))
        raise UnreadableRecord(f"`{where}{key}` is {str(value)[:40]!r}, not a {names}")
    return value


def _check_metrics(values: object, where: str, required: tuple[str, ...] = ("dice", "acc")) -> dict[str, Any]:
    """A mapping holding numbers for the ``required`` metrics and every per-class ``dice_*``."""
    if not isinstance(values, dict):
        raise UnreadableRecord(f"`{where}` is not a mapping of metrics")
    for key in required:
        _need(values, key, (int, float), f"{where}.")
    for key, value in values.items():
        if str(key).startswith("dice_") and not _is_number(value):
            raise UnreadableRecord(f"`{where}.{key}` is {str(value)[:40]!r}, not a number")
    return values


def _check_points(points: object, where: str, metrics: str | None = None) -> list[Any]:
    """A list of mappings (periodic test points, or snapshots with their ``metrics`` mapping)."""
    if points is None:
        return []
    if not isinstance(points, list) or not all(isinstance(point, dict) for point in points):
        raise UnreadableRecord(f"`{where}` is not a list of mappings")
    for k, point in enumerate(points):
        if metrics is None:
            _check_metrics(point, f"{where}[{k}]")
            continue
        _need(point, "epoch", (int,), f"{where}[{k}].")
        _need(point, "steps", (int, float), f"{where}[{k}].")
        _check_metrics(point.get(metrics), f"{where}[{k}].{metrics}", required=("dice",))  # what the study reads
        if "probe" in point:
            _check_probe(point["probe"], f"{where}[{k}].probe")
    return points


def _check_probe(probe: object, where: str) -> Any:
    if probe is None:
        return None
    if not isinstance(probe, dict):
        raise UnreadableRecord(f"`{where}` is not a mapping")
    _need(probe, "dice", (int, float), f"{where}.")
    floor = _need(probe, "random_init", (dict,), f"{where}.")
    _need(floor, "dice", (int, float), f"{where}.random_init.")
    return probe


def run_from_record(folder: Path, record: Any) -> Run | None:
    """The finished run ``record`` (a parsed ``metrics.json``) describes; None for a pretraining-only
    run (nothing to report). Raises UnreadableRecord naming the first field that is not right."""
    from pscl.runs.state import metrics_problem

    problem = metrics_problem(record)
    if problem is not None:
        raise UnreadableRecord(problem)
    split = record.get("split", "test")
    method = _need(record, "method", (str,))
    num_labeled = _need(record, "num_labeled", (int, str))
    label_seed = _need(record, "label_seed", (int,))
    if not record[split]:  # a pretraining-only run
        return None
    labeled_ids = record.get("labeled_ids") or []
    if not isinstance(labeled_ids, list) or not all(isinstance(i, str) for i in labeled_ids):
        raise UnreadableRecord("`labeled_ids` is not a list of image ids")
    protocol = record.get("protocol", "final")
    if protocol not in ("final", "paper"):
        raise UnreadableRecord(f"`protocol` is {str(protocol)[:40]!r}, not final or paper")
    data_root = record.get("data_root")
    if data_root is not None and not isinstance(data_root, str):
        raise UnreadableRecord("`data_root` is not a path")
    source = record.get("labeled_source")
    kind = source.get("kind") if isinstance(source, dict) else None
    strategy = source.get("strategy", "selection") if kind == "selection" else "list" if kind == "list" else None
    if strategy is not None and not isinstance(strategy, str):
        raise UnreadableRecord("`labeled_source.strategy` is not a name")
    return Run(folder, method, str(num_labeled), label_seed, num_images=len(labeled_ids) or None,
               labeled_ids=list(labeled_ids), test=_check_metrics(record[split], split),
               history=_check_points(record.get("test_history"), "test_history"), protocol=protocol,
               data_root=data_root, split=split,
               snapshots=_check_points(record.get("snapshots"), "snapshots", metrics=split),
               probe=_check_probe(record.get("probe"), "probe"), strategy=strategy)


def _facts_of_record(record: object) -> dict[str, Any]:
    """method / num_labeled / label_seed of an unreadable ``metrics.json``, those of the right type."""
    if not isinstance(record, dict):
        return {}
    kinds = {"method": (str,), "num_labeled": (int, str), "label_seed": (int,)}
    return {key: record[key] for key, kind in kinds.items()
            if isinstance(record.get(key), kind) and not isinstance(record.get(key), bool)}


def _not_reported(folder: Path, state: str, detail: str, record: object = None) -> Run:
    """A failed, unfinished or unreadable run, with what its Hydra config (or else its unreadable
    ``metrics.json``) says about it."""
    facts, problem = _from_hydra_config(folder)
    facts = {**_facts_of_record(record), **facts}
    seed = facts.get("label_seed", -1)
    return Run(folder, str(facts.get("method", "?")), str(facts.get("num_labeled", "?")),
               seed if isinstance(seed, int) and not isinstance(seed, bool) else -1,
               error="; ".join(text for text in (detail or state, problem) if text), state=state)


def _read_run(folder: Path) -> Run | None:
    """The run in ``folder`` whatever its files hold; None if it is not a run or has nothing to report."""
    from pscl.runs.state import METRICS, read_state

    state = read_state(folder)
    if state is None:
        return None
    if state.state != "finished":
        return _not_reported(folder, state.state, state.detail)
    record = None
    try:
        record = json.loads((folder / METRICS).read_bytes().decode("utf-8"))
        run = run_from_record(folder, record)
        if run is not None and run.split == "val":
            run.point = grid_point(folder)
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not JSON, or UnreadableRecord
        why = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return _not_reported(folder, "failed", f"unreadable {METRICS} ({why})", record)
    except PsclError as exc:  # the grid point's overrides file
        return _not_reported(folder, "failed", str(exc).splitlines()[0][:300], record)
    return run


def collect_runs(roots: Sequence[Path]) -> list[Run]:
    """Every run folder below ``roots``: finished (``metrics.json``), failed (``FAILED``, non-finite
    metrics, or files the report cannot read: listed by name with the reason) or unfinished
    (``RUNNING`` only: killed, or still running)."""
    from pscl.runs.state import FAILED, METRICS, RUNNING

    folders = sorted({p.parent for root in roots for name in (METRICS, FAILED, RUNNING)
                      for p in Path(root).rglob(name)})
    return [run for run in map(_read_run, folders) if run is not None]


def reported_values(run: Run, protocol: str) -> dict[str, float]:
    """The test values a run contributes under ``protocol`` (``final`` or ``paper``)."""
    if protocol == "final":
        return run.test
    if protocol == "paper":
        if not run.history:
            raise DataError("has no periodic test evaluations", run.folder,
                            "rerun it with eval=paper or report it with --protocol final")
        return max(run.history, key=lambda point: point["dice"])  # first best on ties
    raise ValueError(f"unknown protocol {protocol!r}; use final or paper")


def resolve_protocol(runs: Sequence[Run], protocol: str) -> str:
    """``auto`` -> the protocol the finished runs recorded (they must agree)."""
    if protocol != "auto":
        return protocol
    recorded = {r.protocol for r in runs if not r.failed}
    if len(recorded) > 1:
        raise DataError(f"the runs mix protocols {sorted(recorded)}", None, "pass --protocol final or paper")
    return recorded.pop() if recorded else "final"
