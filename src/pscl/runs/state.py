"""Every run folder ends in exactly one of three states, written by :func:`run_markers`:

* ``metrics.json``: finished;
* ``FAILED``: stopped by an error (its first line says which; the rest is the traceback);
* ``RUNNING``: started and not ended - still running, or killed (``kill -9``, OOM, preemption),
  which no code of the run can record. ``pscl-train resume=<folder>`` continues it.

``pscl-report`` reads the state of every folder and lists the failed and unfinished ones by name.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import socket
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pscl.errors import PsclError
from pscl.integrity import atomic_write_text

METRICS = "metrics.json"
FAILED = "FAILED"
RUNNING = "RUNNING"
PREVIOUS_METRICS = "metrics.previous.json"


@dataclass(frozen=True)
class RunState:
    """``state`` is ``finished``, ``failed`` or ``unfinished``; ``detail`` the first line of why."""

    state: str
    detail: str = ""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _non_finite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_non_finite(v) for v in value)
    return False


def metrics_problem(record: object) -> str | None:
    """Why a parsed ``metrics.json`` is not one pscl-train writes (its outline only), or None.

    The outline: a JSON object whose ``split`` (default ``test``) names a mapping of metrics.
    :mod:`pscl.reporting.run_records` checks the fields it reads on top of this.
    """
    if not isinstance(record, dict):
        return f"not a JSON object but a {type(record).__name__}"
    split = record.get("split", "test")
    if not isinstance(split, str):
        return f"`split` is {split!r}, not a name"
    if not isinstance(record.get(split), dict):
        return f"no `{split}` metrics (a mapping of metric names to values)"
    return None


def _read_failed(path: Path) -> RunState:
    text = path.read_text(errors="replace").strip()
    return RunState("failed", text.splitlines()[0] if text else "failed")


def _read_metrics(path: Path) -> RunState:
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8 or not JSON
        return RunState("failed", f"unreadable {METRICS} ({_one_line(exc)})")
    problem = metrics_problem(record)
    if problem is not None:
        return RunState("failed", f"unreadable {METRICS} ({problem})")
    split = record.get("split", "test")
    if _non_finite(record[split]):
        return RunState("failed", f"non-finite {split} metrics (the training diverged)")
    return RunState("finished")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def read_state(folder: Path) -> RunState | None:
    """The state of a run folder; None if it holds none of the three markers (not a run folder).

    ``metrics.json`` that cannot be read, is not of pscl-train's outline (:func:`metrics_problem`),
    or whose reported metrics are not finite (written before divergence was caught) counts as
    failed, with the reason as its detail: a broken run folder is reported, never a crash.
    """
    folder = Path(folder)
    failed, metrics, running = folder / FAILED, folder / METRICS, folder / RUNNING
    try:
        if failed.is_file():
            return _read_failed(failed)
        if metrics.is_file():
            return _read_metrics(metrics)
        if running.is_file():
            return RunState("unfinished",
                            "RUNNING: still running, or killed; pscl-train resume=<this folder> continues it")
    except OSError as exc:  # a marker that exists but cannot be read (permissions, I/O error)
        return RunState("failed", f"unreadable run folder ({_one_line(exc)})")
    return None


def failure_line(exc: BaseException) -> str:
    """The first line FAILED gets: a user error's own message, otherwise the exception type too."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, PsclError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _describe_running() -> str:
    return json.dumps({"started": _now(), "pid": os.getpid(), "host": socket.gethostname()})


@contextlib.contextmanager
def run_markers(folder: Path, enabled: bool = True) -> Iterator[None]:
    """Mark ``folder`` RUNNING for the ``with`` block; on an error write FAILED (message + traceback).

    A stale ``FAILED`` of an earlier run in the same folder is removed and an earlier
    ``metrics.json`` kept as ``metrics.previous.json``. The block writes ``metrics.json`` itself;
    on a clean exit ``RUNNING`` goes. An interrupt (Ctrl-C, SystemExit) leaves ``RUNNING``, as a
    kill does. ``enabled=False`` (ranks other than 0) does nothing.
    """
    folder = Path(folder)
    if not enabled:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FAILED).unlink(missing_ok=True)
    if (folder / METRICS).is_file():
        os.replace(folder / METRICS, folder / PREVIOUS_METRICS)
    atomic_write_text(folder / RUNNING, _describe_running() + "\n")
    try:
        yield
    except Exception as exc:
        message = failure_line(exc)
        atomic_write_text(folder / FAILED, f"{message}\n\n{traceback.format_exc()}")
        (folder / RUNNING).unlink(missing_ok=True)
        raise
    (folder / RUNNING).unlink(missing_ok=True)
