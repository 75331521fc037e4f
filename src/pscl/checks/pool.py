"""The pretraining pool checked before pretraining: every image decodes, is within the pixel
limit and is at least a crop wide.

Without this, a corrupt file in ``unlabeled/`` or an image smaller than the crop fails only
when first drawn, possibly hours into pretraining. Only a run that pretrains checks the pool
(a supervised run never reads ``unlabeled/``). The image sizes found are remembered under
``<cache_dir>/checked/`` by the content hash of the pool, so a second run over the same files
reads each file's bytes once (to hash them) and decodes none.

:func:`check_image_side` is the one size rule for every image a stage reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from pscl.checks.config import CONFIG_RULES
from pscl.data.io import check_pixel_count
from pscl.errors import DataError
from pscl.integrity import atomic_write_text, content_hashes

log = logging.getLogger("pscl.checks")
PROGRESS_FROM = 50  # show a progress bar when decoding at least this many images


def smallest_crop() -> int:
    """The smallest ``data.crop_size`` the range check allows; also the least side the UNet takes
    (three halvings leave 1 px; a smaller image leaves none)."""
    return int(next(rule.low for rule in CONFIG_RULES if rule.key == "data.crop_size"))


def check_image_side(path: Path, height: int, width: int, crop_size: int | None, stage: str) -> None:
    """Refuse an image that ``stage`` (which reads it, e.g. ``pretraining``) cannot crop to
    ``crop_size``, or, for whole images (None), that is smaller than :func:`smallest_crop`."""
    smallest = smallest_crop()
    needed = smallest if crop_size is None else int(crop_size)
    side = min(int(height), int(width))
    if side >= needed:
        return
    if crop_size is None:
        problem = f"is {width}x{height}, smaller than {smallest} px, the least the network takes; {stage} reads it"
    else:
        problem = f"is {width}x{height}, smaller than data.crop_size={crop_size}, so {stage} cannot crop it"
    fix = f"remove it from {path.parent}/, or replace it with an image of at least {needed}x{needed} px"
    if side >= smallest:  # a smaller crop is allowed; below `smallest` the range check would refuse it
        fix += f", or set data.crop_size<={side}"
    else:
        fix += f" (data.crop_size cannot go below {smallest})"
    raise DataError(problem, path, fix)


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
    for path, (height, width) in sizes.items():
        # sizes remembered from a run under a higher PSCL_MAX_IMAGE_PIXELS are held to today's limit
        check_pixel_count(path, width, height)
        check_image_side(path, height, width, crop_size, "pretraining")
    log.info("checked %d pool images in %.2f s (%d decoded, the rest known)", len(paths),
             time.perf_counter() - started, len(todo))
    return sizes
