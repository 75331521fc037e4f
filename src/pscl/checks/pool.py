"""The pretraining pool checked before training: every image decodes and is at least a crop wide.

Without this, a corrupt file in ``unlabeled/`` or an image smaller than the crop fails only
when first drawn, possibly hours into pretraining. The image sizes found are remembered under
``<cache_dir>/checked/`` by the content hash of the pool, so a second run over the same files
reads each file's bytes once (to hash them) and decodes none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from pscl.errors import DataError
from pscl.integrity import atomic_write_text, content_hashes

log = logging.getLogger("pscl.checks")
PROGRESS_FROM = 50  # show a progress bar when decoding at least this many images


def _decode(paths: Sequence[Path], in_channels: int) -> list[list[int]]:
    from tqdm.auto import tqdm

    from pscl.data.io import read_image

    sizes = []
    for path in tqdm(paths, desc="checking pool images", unit="image", disable=len(paths) < PROGRESS_FROM,
                     leave=False):
        height, width = read_image(path, in_channels).shape[:2]
        sizes.append([int(height), int(width)])
    return sizes


def _remembered(record: Path | None) -> dict[str, list[int]]:
    if record is None or not record.is_file():
        return {}
    try:
        return dict(json.loads(record.read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def check_pool(paths: Sequence[Path], in_channels: int, crop_size: int | None, cache_dir: Path | str | None,
               known: dict[Path, tuple[int, int]] | None = None) -> dict[Path, tuple[int, int]]:
    """``{path: (height, width)}`` of the pool; raises :class:`DataError` naming the first file that
    does not decode or is smaller than ``crop_size``.

    ``known``: sizes of files already decoded (the annotated images). Sizes are remembered by the
    files' content hashes in ``<cache_dir>/checked/pool-<key>.json``.
    """
    paths = sorted(Path(p) for p in paths)
    started = time.perf_counter()
    hashes = [digest for _, digest in content_hashes(paths)]  # in the order of ``paths``; memoised per process
    key = hashlib.sha256(json.dumps([sorted(hashes), int(in_channels)]).encode()).hexdigest()[:16]
    record = Path(cache_dir).expanduser() / "checked" / f"pool-{key}.json" if cache_dir is not None else None
    by_hash = _remembered(record)
    for path, digest in zip(paths, hashes):
        if known and path in known and digest not in by_hash:
            by_hash[digest] = list(known[path])
    todo = [(p, d) for p, d in zip(paths, hashes) if d not in by_hash]
    if todo:
        for (_, digest), size in zip(todo, _decode([p for p, _ in todo], in_channels)):
            by_hash[digest] = size
        if record is not None:
            try:
                atomic_write_text(record, json.dumps(by_hash))
            except OSError as exc:
                log.warning("could not remember the pool check in %s (%s); the next run checks again", record, exc)
    sizes = {path: (int(by_hash[d][0]), int(by_hash[d][1])) for path, d in zip(paths, hashes)}
    if crop_size is not None:
        for path, (height, width) in sizes.items():
            if min(height, width) < int(crop_size):
                raise DataError(
                    f"is {width}x{height}, smaller than data.crop_size={crop_size}, so pretraining cannot crop it",
                    path, f"remove it from the pool, or set data.crop_size<={min(height, width)}")
    log.info("checked %d pool images in %.2f s (%d decoded, the rest known)", len(paths),
             time.perf_counter() - started, len(todo))
    return sizes
