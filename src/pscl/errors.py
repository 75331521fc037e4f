"""User-facing errors.

Every problem a user can fix (bad data folder, bad config value) raises :class:`PsclError` with a
message that names the file or key and says what to do. The command-line entry points print that
message without a traceback and exit non-zero; set ``PSCL_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

from pathlib import Path


class PsclError(Exception):
    """An error the user can fix; its message names the file or key and the fix."""


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
