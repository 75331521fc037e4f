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


def read_state(folder: Path) -> RunState | None:
    """The state of a run folder; None if it holds none of the three markers (not a run folder).

    ``metrics.json`` whose reported metrics are not finite (written before divergence was caught)
    counts as failed.
    """
    folder = Path(folder)
    failed, metrics, running = folder / FAILED, folder / METRICS, folder / RUNNING
    if failed.is_file():
        text = failed.read_text(errors="replace").strip()
        return RunState("failed", text.splitlines()[0] if text else "failed")
    if metrics.is_file():
        try:
            record = json.loads(metrics.read_text())
        except (OSError, ValueError) as exc:
            return RunState("failed", f"unreadable {METRICS} ({exc})")
        split = record.get("split", "test") if isinstance(record, dict) else "test"
        if isinstance(record, dict) and _non_finite(record.get(split, {})):
            return RunState("failed", f"non-finite {split} metrics (the training diverged)")
        return RunState("finished")
    if running.is_file():
        return RunState("unfinished", "RUNNING: still running, or killed; pscl-train resume=<this folder> continues it")
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
