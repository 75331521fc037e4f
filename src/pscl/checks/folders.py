"""The run folder's parent checked before Hydra starts, so an unwritable log directory is one
clear line (exit 2) instead of Hydra's traceback when it creates the run folder."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pscl.errors import ConfigError
from pscl.runs.quoting import unquote_value

# where the run folder goes, most specific first (conf/hydra/default.yaml, conf/paths/default.yaml)
FOLDER_OVERRIDES = ("hydra.run.dir", "hydra.sweep.dir", "paths.log_dir", "log_dir")


def _nearest_existing(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def log_folder(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[str, Path]:
    """``(the key that sets it, the folder)`` a run of ``argv`` will create its run folder in."""
    for key in FOLDER_OVERRIDES:
        for arg in argv:
            if arg.lstrip("+").startswith(f"{key}="):
                value = unquote_value(arg.split("=", 1)[1])  # resume= writes odd paths Hydra-quoted
                if "${" not in value:
                    return key, Path(value)
    if environ.get("PSCL_LOG_DIR"):
        return "PSCL_LOG_DIR", Path(environ["PSCL_LOG_DIR"])
    return "log_dir", Path("logs")


def check_log_folder(argv: Sequence[str], environ: Mapping[str, str] = os.environ) -> None:
    """Raise :class:`ConfigError` if the run folder cannot be created (a file in the way, no permission)."""
    key, folder = log_folder(argv, environ)
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise ConfigError(key, f"run folders go under {folder}, but {existing} is a file, not a folder",
                          "point log_dir (or PSCL_LOG_DIR) at a writable folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(key, f"run folders go under {folder}, but {existing} is not writable",
                          "point log_dir (or PSCL_LOG_DIR) at a writable folder")
