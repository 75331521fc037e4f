"""The validation table of a fine-tuning protocol grid (``experiment=protocol_grid``).

Grid runs evaluate on the validation split (``eval.split=val``) and never on the test set. A
run's grid point is read from its Hydra overrides: every override except the method, the round
and the experiment. Points are ranked by the mean validation Dice over methods (each method's
mean over rounds first, so every method weighs the same); the top row is the choice.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pscl.errors import DataError

NOT_GRID_KEYS = ("method", "data.label_seed", "experiment")


def grid_point(folder: Path) -> str:
    """The run's grid point: its Hydra overrides minus method, round and experiment, sorted.

    Raises :class:`~pscl.errors.DataError` naming ``.hydra/overrides.yaml`` when it cannot be
    read or is not a list of overrides: the report then lists that run as unreadable.
    """
    path = Path(folder) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return "(no overrides)"
    overrides = [o.lstrip("+~") for o in read_overrides(path)]
    kept = sorted(o for o in overrides if o.split("=", 1)[0] not in NOT_GRID_KEYS)
    return " ".join(kept) if kept else "(defaults)"


def read_overrides(path: Path) -> list[str]:
    """The override strings of a run's ``.hydra/overrides.yaml``, or a DataError naming the file."""
    from omegaconf import ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    fix = "the file was edited or damaged; restore it from the run's command line, or leave the run out"
    try:
        node = OmegaConf.load(path)
    # OmegaConf.load raises any of these for a file that is unreadable, not UTF-8 or not YAML
    except (OSError, ValueError, YAMLError, OmegaConfBaseException) as exc:
        raise DataError(f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})", path, fix) from None
    items = OmegaConf.to_container(node, resolve=False) if isinstance(node, ListConfig) else None
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise DataError("is not a list of overrides (`key=value` strings)", path, fix)
    return items


def grid_rows(records: Sequence[dict[str, Any]], order: Callable[[str], Any] = str) -> list[dict[str, Any]]:
    """``records``: ``{"point", "method", "label_seed", "dice"}`` -> one row per point, best first."""
    points: dict[str, dict[str, list[float]]] = {}
    for record in records:
        points.setdefault(record["point"], {}).setdefault(record["method"], []).append(float(record["dice"]))
    rows = []
    for point, methods in points.items():
        per_method = {m: statistics.fmean(v) for m, v in methods.items()}
        rows.append({"point": point, "per_method": per_method,
                     "rounds": {m: len(v) for m, v in methods.items()},
                     "mean": statistics.fmean(per_method.values())})
    rows.sort(key=lambda row: (-row["mean"], row["point"]))
    return rows


def grid_markdown(rows: Sequence[dict[str, Any]], order: Callable[[str], Any] = str) -> str:
    if not rows:
        return ""
    methods = sorted({m for row in rows for m in row["per_method"]}, key=order)
    lines = ["## Fine-tuning protocol grid (validation split; the test set is never opened)", "",
             "Validation Dice, each method's mean over its rounds; points ranked by the mean over methods.", "",
             "| grid point | mean | " + " | ".join(methods) + " |", "|---|---:|" + "---:|" * len(methods)]
    for rank, row in enumerate(rows):
        cells = " | ".join(f"{row['per_method'][m]:.3f}" if m in row["per_method"] else "-" for m in methods)
        mark = " **(chosen)**" if rank == 0 and not math.isnan(row["mean"]) else ""
        lines.append(f"| `{row['point']}`{mark} | {row['mean']:.3f} | {cells} |")
    return "\n".join(lines) + "\n"
