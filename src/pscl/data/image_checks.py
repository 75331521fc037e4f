"""Every image a stage reads, checked before training against what that stage needs.

* :func:`check_image_side` - the one size rule: an image a stage crops must hold the crop, and a
  whole image must be at least :data:`~pscl.constants.MIN_IMAGE_SIDE`, the least the network takes;
* :func:`check_annotated_sides`, :func:`check_crop_fits`, :func:`check_single_crop_batches` - the
  annotated images the data module loads, against the crop and the batch size;
* :func:`check_pool` - the pretraining pool: every image decodes, is within the pixel limit and is
  at least a crop wide.

Without the pool check, a corrupt file in ``unlabeled/`` or an image smaller than the crop fails
only when first drawn, possibly hours into pretraining. Only a run that pretrains checks the pool
(a supervised run never reads ``unlabeled/``). The image sizes found are remembered under
``<cache_dir>/checked/`` by the content hash of the pool, so a second run over the same files
reads each file's bytes once (to hash them) and decodes none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pscl.constants import MIN_IMAGE_SIDE, SINGLE_CROP_SIDE
from pscl.data.io import check_pixel_count
from pscl.data.samples import DatasetIndex
from pscl.errors import ConfigError, DataError
from pscl.integrity import atomic_write_text, content_hashes

# named as when this lived in pscl.checks, so that log lines and filters on it read as before
log = logging.getLogger("pscl.checks")
PROGRESS_FROM = 50  # show a progress bar when decoding at least this many images


def check_image_side(path: Path, height: int, width: int, crop_size: int | None, stage: str) -> None:
    """Refuse an image that ``stage`` (which reads it, e.g. ``pretraining``) cannot crop to
    ``crop_size``, or, for whole images (None), that is smaller than :data:`MIN_IMAGE_SIDE`."""
    needed = MIN_IMAGE_SIDE if crop_size is None else int(crop_size)
    side = min(int(height), int(width))
    if side >= needed:
        return
    if crop_size is None:
        problem = (f"is {width}x{height}, smaller than {MIN_IMAGE_SIDE} px, the least the network takes; "
                   f"{stage} reads it")
    else:
        problem = f"is {width}x{height}, smaller than data.crop_size={crop_size}, so {stage} cannot crop it"
    fix = f"remove it from {path.parent}/, or replace it with an image of at least {needed}x{needed} px"
    if side >= MIN_IMAGE_SIDE:  # a smaller crop is allowed; below MIN_IMAGE_SIDE the range check would refuse it
        fix += f", or set data.crop_size<={side}"
    else:
        fix += f" (data.crop_size cannot go below {MIN_IMAGE_SIDE})"
    raise DataError(problem, path, fix)


def check_annotated_sides(index: DatasetIndex, images: Mapping[str, np.ndarray], labeled_ids: Sequence[str],
                          crop_size: int | None) -> None:
    """Refuse an annotated image smaller than the network takes, naming the stage that reads it:
    fine-tuning (``labeled_ids``, cropped to ``crop_size``) and evaluation (the val and test images
    among the loaded ``images``, whole). Training images outside this round are read by
    pretraining only (:func:`check_pool`)."""
    evaluated = sorted(set(images) - set(index.train_ids))  # the val and test images loaded
    for ids, stage in ((labeled_ids, "fine-tuning"), (evaluated, "evaluation")):
        for sample_id in ids:
            height, width = images[sample_id].shape[:2]
            if min(height, width) < MIN_IMAGE_SIDE:  # larger ones are held to the crop by check_crop_fits
                crop = crop_size if stage == "fine-tuning" else None
                check_image_side(index.samples[sample_id].image, height, width, crop, stage)


def check_crop_fits(index: DatasetIndex, images: Mapping[str, np.ndarray], labeled_ids: Sequence[str],
                    crop_size: int | None, batch_size: int) -> None:
    """Refuse a ``crop_size`` larger than an annotated image, or whole images (None) of different
    sizes batched together."""
    if crop_size is None:
        shapes = {images[i].shape[:2] for i in labeled_ids}
        if len(shapes) > 1 and batch_size > 1:
            raise ConfigError("data.crop_size", "is null (whole images) but the annotated images differ in size",
                              "set data.crop_size to a size no larger than the smallest image, or data.batch_size=1")
        return
    for sample_id in labeled_ids:
        h, w = images[sample_id].shape[:2]
        if crop_size > min(h, w):
            raise ConfigError(
                "data.crop_size",
                f"{crop_size} is larger than the annotated image {index.samples[sample_id].image} ({w}x{h})",
                f"set data.crop_size<={min(h, w)} or data.crop_size=null to train on whole images",
            )


def check_single_crop_batches(side: int, batch_size: int, crop_size: int | None,
                              min_side: int = SINGLE_CROP_SIDE) -> None:
    """Refuse fine-tuning batches of one crop of ``side`` px so small that the bottleneck is 1x1 px:
    BatchNorm cannot train on a single value per channel. ``crop_size`` None: whole images.
    ``min_side``: the smallest side whose bottleneck is 2 px (16 for pscl's UNet; the training
    sets it for the configured backbone: :attr:`MicrographDataModule.single_crop_side`)."""
    if batch_size < 2 and side < min_side:
        what = f"data.crop_size={side}" if crop_size is not None else f"a whole image of {side} px"
        raise ConfigError("data.batch_size",
                          f"is {batch_size} but {what} leaves the network's bottleneck 1x1 px, and BatchNorm "
                          "cannot train on a single value per channel",
                          f"set data.batch_size=2 or more, or data.crop_size={min_side} or more")


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
