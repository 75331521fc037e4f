"""Choosing from a pool: read its patch features, check the budget, apply a strategy.

Shared by ``pscl-select`` and by training (``data.labeled_ids=select:<strategy>``), so that both
choose the same images from the same pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pscl.errors import DataError
from pscl.select.pool import Pool
from pscl.select.sources import Source
from pscl.select.strategies import STRATEGIES, Pick

DEFAULT_PATCH = 64  # px per patch side


def choose(pool: Pool, source: Source | None, strategy: str, budget: int, seed: int, patch: int,
           warn: Callable[[str], None]) -> tuple[list[Pick], Pool, dict[str, Any]]:
    """Read the pool's features, check the budget against the images that could be read, and pick.

    Returns the picks (indices into the ranked pool: the images that could be read), that pool,
    and the facts for ``selection.json``. ``source`` None reads no features (``random``).
    """
    from pscl.select.extract import pool_features
    from pscl.select.strategies import coverage, coverage_clusters, random_picks, typical

    features = pool_features(pool, source, patch, warn)
    ranked = features.ranked
    if budget > len(ranked.candidates):
        left_out = ", ".join(list(features.skipped)[:5])
        raise DataError(f"only {len(ranked.candidates)} of its {len(pool.candidates)} images can be ranked "
                        f"({len(features.skipped)} left out: {left_out}), fewer than the budget {budget}; "
                        "nothing was written", pool.source,
                        f"choose {len(ranked.candidates)} images or fewer, or replace the images named above")
    facts: dict[str, Any] = {"pool_size": len(pool.candidates), "ranked": len(ranked.candidates),
                             "skipped": [{"image": c.id, "file": str(c.path), "why": features.skipped[c.id]}
                                         for c in pool.candidates if c.id in features.skipped]}
    rows = features.rows
    if strategy == "random":
        picks = random_picks(ranked.ids, budget, seed, ranked.presets)
    elif strategy == "typical":
        picks = typical(np.stack([r.mean(axis=0) for r in rows]), budget, seed)
        facts["clusters_fitted"] = budget
    elif strategy == "coverage":
        owners = np.concatenate([np.full(len(r), k, np.int64) for k, r in enumerate(rows)])
        picks = coverage(np.concatenate(rows), owners, len(rows), budget, seed)
        facts["clusters_fitted"] = coverage_clusters([len(r) for r in rows], budget)
        facts["patches"] = int(len(owners))
    else:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    return picks, ranked, facts


def choose_training_images(root: str, images: dict[str, Any], strategy: str, budget: int, seed: int,
                           presets: dict | None = None) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The ids training annotates under ``data.labeled_ids=select:<strategy>``: ``budget`` of
    ``images`` (train id -> image file) chosen on intensity features, as ``pscl-select <root>
    --strategy <strategy> --seed <seed> --features intensity`` chooses them; and the facts
    (scores, pool size) to record. An unreadable image is a :class:`DataError` here: training
    would need to read it anyway."""
    from pathlib import Path

    from pscl.select.pool import Candidate

    def refuse(message: str) -> None:
        raise DataError(message, None, "replace or remove the image, then run again")

    pool = Pool(root, tuple(Candidate(i, Path(images[i])) for i in sorted(images)), None, dict(presets or {}))
    if budget > len(pool.candidates):
        raise DataError(f"cannot choose {budget} of its {len(pool.candidates)} training images", root,
                        f"set data.num_labeled to {len(pool.candidates)} or fewer")
    source = None if strategy == "random" else Source("intensity")
    picks, ranked, facts = choose(pool, source, strategy, budget, seed, DEFAULT_PATCH, refuse)
    ids = tuple(ranked.candidates[pick.index].id for pick in picks)
    facts["scores"] = [None if pick.score is None else round(float(pick.score), 6) for pick in picks]
    return ids, facts
