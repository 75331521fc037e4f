"""Loading ``.pt`` / ``.ckpt`` files without running a pickle.

:func:`load_weights` is the one place pscl reads a checkpoint. It always passes
``weights_only=True``, so a file can hold tensors, numbers, strings and containers of them, and
nothing that executes on load. A file that needs more (a pickled object, a crafted payload) is
refused with a message naming it; nothing it holds has run.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from pscl.errors import DataError


class UnsafeCheckpointError(DataError):
    """A checkpoint that can only be read by running a pickle: refused, never executed."""


def load_weights(path: Path | str, fix: str | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with clear errors.

    Raises :class:`DataError` if the file is missing or unreadable and :class:`UnsafeCheckpointError`
    if reading it would run code; ``fix`` is the advice printed with either.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError("checkpoint not found", path, fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpointError(
            f"refused: loading it would run code from its pickle ({first_line[:160]}); nothing in it was run",
            path, fix or "use a checkpoint written by pscl; never load a file you do not trust") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        raise DataError(f"cannot be read as a checkpoint ({type(exc).__name__}: {str(exc)[:160]})", path, fix) from None
