"""Reading a pool into patch features, leaving out the images that cannot be used."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pscl.select.pool import Pool, read_pool
from pscl.select.sources import Source


@dataclass(frozen=True)
class PoolFeatures:
    """``rows[k]`` (cells, F) are the patch features of ``ranked.candidates[k]``; ``skipped`` maps
    each left-out id to why (``unreadable``, ``smaller than one patch``)."""

    ranked: Pool
    rows: list[np.ndarray]
    skipped: dict[str, str]


def channel_statistics(pool: Pool, in_channels: int, warn: Callable[[str], None],
                       unreadable: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) over every pixel of the pool's readable images (one pass, float64 sums)."""
    sums, squares, count = np.zeros(in_channels), np.zeros(in_channels), 0
    for _, image in read_pool(pool, in_channels, warn, unreadable, "statistics"):
        pixels = image.reshape(-1, in_channels).astype(np.float64)
        sums, squares, count = sums + pixels.sum(axis=0), squares + np.square(pixels).sum(axis=0), count + len(pixels)
    mean = sums / max(count, 1)
    return mean, np.sqrt(np.maximum(squares / max(count, 1) - np.square(mean), 0.0))


def pool_features(pool: Pool, source: Source | None, patch: int, warn: Callable[[str], None]) -> PoolFeatures:
    """The patch features of every usable image of ``pool`` (``source`` None: read only, no features).

    A network standardised by the pool's statistics needs them first: one more pass over the pool.
    An unreadable image, or one smaller than a patch, is passed to ``warn`` and left out.
    """
    unreadable: set[str] = set()
    in_channels = source.in_channels if source is not None else 1
    stats = None
    if source is not None and source.needs_pool_statistics:
        stats = channel_statistics(pool, in_channels, warn, unreadable)
    rows: list[np.ndarray] = []
    small: set[str] = set()
    stage = "features" if source is not None else "reading"
    for position, image in read_pool(pool, in_channels, warn, unreadable, stage):
        candidate = pool.candidates[position]
        patch_rows = source.patch_rows(image, patch, stats) if source is not None else np.zeros((1, 0), np.float32)
        if len(patch_rows) == 0:
            small.add(candidate.id)
            warn(f"{candidate.path}: is {image.shape[1]}x{image.shape[0]} px, smaller than one {patch} px patch; it "
                 "is left out (a smaller --patch-size would keep it)")
            continue
        rows.append(patch_rows)
    skipped = {c.id: ("unreadable" if c.id in unreadable else "smaller than one patch")
               for c in pool.candidates if c.id in unreadable | small}
    return PoolFeatures(pool.without(set(skipped)), rows, skipped)
