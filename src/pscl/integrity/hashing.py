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


_MEMO: dict[tuple[str, int, int], str] = {}


def content_hashes(paths: Iterable[Path | str]) -> list[list[str]]:
    """``[[name, sha256]]`` of ``paths`` (sorted); each file is hashed once per process while its
    path, size and modification time stay the same."""
    out = []
    for path in sorted(Path(p) for p in paths):
        stat = path.stat()
        memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if memo not in _MEMO:
            _MEMO[memo] = hash_file(path)
        out.append([path.name, _MEMO[memo]])
    return out
