"""Content hashes, streamed in 1 MiB blocks so memory stays flat whatever the file size."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

BLOCK = 1 << 20


def hash_file(path: Path | str) -> str:
    """SHA-256 hex digest of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def hash_files(paths: Iterable[Path | str]) -> dict[str, str]:
    """``{file name: SHA-256}`` of every file (names must be unique, as in a pool folder)."""
    return {Path(p).name: hash_file(p) for p in sorted(Path(p) for p in paths)}
