"""User-facing errors and the one error path every command shares.

Every problem a user can fix (bad data folder, bad config value, a hostile or broken file)
raises :class:`PsclError` with a message that names the file or key and says what to do.
:func:`run_command` is how each console command (``pscl-train``, ``pscl-predict``,
``pscl-export``, ``pscl-report``, ``pscl-synth``, ``pscl-embed``, ``pscl-select``) turns that
into one message on stderr and its exit code, without a traceback; ``PSCL_DEBUG=1`` prints the
traceback as well.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

# exit codes shared by every pscl command
EXIT_OK, EXIT_CRASH, EXIT_USER_ERROR, EXIT_PARTIAL = 0, 1, 2, 3
EXIT_INTERRUPTED = 130
DEBUG_VARIABLE = "PSCL_DEBUG"


class PsclError(Exception):
    """An error the user can fix; its message names the file or key and the fix."""

    exit_code = EXIT_USER_ERROR


class DataError(PsclError):
    """A problem with a data folder or one of its files."""

    def __init__(self, problem: str, path: Path | str | None = None, fix: str | None = None) -> None:
        parts = []
        if path is not None:
            parts.append(f"{path}: ")
        parts.append(problem)
        if fix:
            parts.append(f"\n  fix: {fix}")
        super().__init__("".join(parts))
        self.path = Path(path) if path is not None else None


class ConfigError(PsclError):
    """A configuration value that cannot work."""

    def __init__(self, key: str, problem: str, fix: str | None = None) -> None:
        message = f"config `{key}`: {problem}"
        if fix:
            message += f"\n  fix: {fix}"
        super().__init__(message)
        self.key = key


def debugging() -> bool:
    """True when ``PSCL_DEBUG`` is set to anything but empty or 0: tracebacks are printed."""
    return os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")


def crash_message(prog: str, exc: BaseException) -> str:
    """The one line a crash (a bug, not a user error) gets, and how to report it."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return (f"{prog}: crashed: {what}\n  this is a bug in pscl, not in your input: rerun with "
            f"{DEBUG_VARIABLE}=1 for the traceback and report it")


def run_command(prog: str, body: Callable[[], int | None]) -> int:
    """Run a command's ``body`` and return its exit code, with pscl's one error path.

    A :class:`PsclError` prints ``<prog>: error: <message>`` and returns its ``exit_code`` (2,
    or 3 for a diverged training); any other exception prints one line saying it is a bug and
    returns 1; Ctrl-C returns 130. With ``PSCL_DEBUG=1`` the traceback is printed too.
    """
    try:
        code = body()
    except PsclError as exc:
        if debugging():
            traceback.print_exc()
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the last line of defence of a command
        if debugging():
            traceback.print_exc()
        print(crash_message(prog, exc), file=sys.stderr, flush=True)
        return EXIT_CRASH
    return EXIT_OK if code is None else int(code)


def run_parsed(prog: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None,
               body: Callable[[argparse.Namespace], int | None]) -> int:
    """Parse ``argv`` and run ``body(args)`` through :func:`run_command`; returns the exit code.

    A bad option is argparse's usage line and message with exit code 2, ``--help`` exit 0: as
    a return value, not ``SystemExit``, so callers (and tests) get the code either way.
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code is None else exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    return run_command(prog, lambda: body(args))
