"""Writes that are whole or absent: a temporary file in the same folder, then a rename.

A reader (another run sharing the cache, or this run after a kill) sees either the old file or
the new one, never half of one. :func:`file_lock` serialises writers of the same cache entry.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _default_mode() -> int:
    """The permissions a plain ``open(..., "w")`` would give: 0o666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _replace_with(target: Path, write: Callable[[Path], object]) -> None:
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _default_mode())  # mkstemp makes 0600 files; outputs are shared like any other
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(target: Path | str, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    _replace_with(Path(target), lambda tmp: tmp.write_bytes(data))


def atomic_write_text(target: Path | str, text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    _replace_with(Path(target), lambda tmp: tmp.write_text(text))


def copy_atomic(source: Path | str, target: Path | str) -> None:
    """Copy ``source`` to ``target`` atomically."""
    _replace_with(Path(target), lambda tmp: shutil.copyfile(source, tmp))


@contextlib.contextmanager
def file_lock(path: Path | str) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed) for the ``with`` block.

    On a platform without ``fcntl`` the block runs unlocked: atomic renames still keep each file whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
