"""Which K images of a pool to annotate: ``coverage``, ``typical`` or ``random`` (pure functions).

Each strategy takes the pool in id order (sorted, so index order breaks every tie by id) and
returns :class:`Pick` s in rank order.

* :func:`coverage` - k-means over every patch of the pool into C clusters; a cluster's mass is
  the fraction of all patches in it, and an image covers a cluster when one of its patches lies
  in it. Greedily, each pick is the image that adds the most patch mass not yet covered, so a
  phase present in one image only is still picked once the common ones are covered. C is the
  median number of patches per image (at least 2K): one image can cover at most as many clusters
  as it has patches, and a phase split into more clusters than that would make every further
  image of it look new. Once every cluster is covered, coverage starts again (a second round).
* :func:`typical` - k-means over the images' mean patch features into K clusters; from each the
  image of highest typicality (TypiClust: the inverse mean distance to its nearest neighbours
  in its cluster); clusters ranked by size, largest first.
* :func:`random_picks` - :func:`pscl.data.splits.select_labeled`, so K images under seed S are
  exactly the images ``data.num_labeled=K data.label_seed=S`` trains on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pscl.data.labeled_ids import STRATEGIES  # one list for pscl-select and data.labeled_ids=select:...
from pscl.data.splits import select_labeled

# k-means restarts: fixed, so a seed decides the clustering
KMEANS_INIT = 4
# coverage fits its k-means on at most this many patches (a seeded draw) and assigns every patch
MAX_FIT_PATCHES = 20_000
# typicality: mean distance to this many nearest neighbours within the cluster (TypiClust)
NEIGHBOURS = 20


@dataclass(frozen=True)
class Pick:
    """One chosen image: its index in the pool, its score (None: the strategy gives none) and cluster."""

    index: int
    score: float | None
    cluster: int | None


def _kmeans(rows: np.ndarray, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), centres (C, F)) of a seeded k-means; fitted on a seeded draw of at most
    :data:`MAX_FIT_PATCHES` rows and then applied to all."""
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.default_rng(seed)
    fit = rows if len(rows) <= MAX_FIT_PATCHES else rows[np.sort(rng.choice(len(rows), MAX_FIT_PATCHES, False))]
    model = KMeans(n_clusters=clusters, n_init=KMEANS_INIT, random_state=seed)
    with warnings.catch_warnings():  # duplicate rows give fewer distinct clusters: handled by the callers
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(fit)
        labels = model.predict(rows) if fit is not rows else model.labels_
    return np.asarray(labels, np.int64), model.cluster_centers_


def coverage_clusters(patches_per_image: Sequence[int], budget: int) -> int:
    """C for :func:`coverage`: the median patches per image, at least 2K, at most all patches."""
    median = int(np.median(patches_per_image)) if len(patches_per_image) else 0
    return max(1, min(int(sum(patches_per_image)), max(2 * budget, median)))


def coverage(rows: np.ndarray, owners: np.ndarray, pool_size: int, budget: int, seed: int) -> list[Pick]:
    """``budget`` images whose patches cover the most patch mass (see the module docstring).

    ``rows`` (P, F) are the patch features, ``owners`` (P,) the image index of each patch. The
    score is the patch mass a pick newly covered (its round's gain); its cluster the one of which
    it newly covered the most.
    """
    clusters = coverage_clusters(np.bincount(owners, minlength=pool_size).tolist(), budget)
    labels, _ = _kmeans(np.asarray(rows, np.float64), clusters, seed)
    counts = np.bincount(labels, minlength=clusters)  # integer masses: exact ties, broken by id
    holds = np.zeros((pool_size, clusters), bool)
    holds[owners, labels] = True
    covered = np.zeros(clusters, bool)
    picks: list[Pick] = []
    chosen = np.zeros(pool_size, bool)
    for _ in range(budget):
        gains = np.where(chosen, -1, (holds & ~covered) @ counts)
        if gains.max() <= 0:  # everything is covered: a new round
            covered[:] = False
            gains = np.where(chosen, -1, holds @ counts)
        best = int(np.argmax(gains))
        new = holds[best] & ~covered
        main = int(np.argmax(np.where(new, counts, -1)))
        picks.append(Pick(best, float(gains[best]) / len(labels), main))
        covered |= holds[best]
        chosen[best] = True
    return picks


def typicality(rows: np.ndarray, neighbours: int = NEIGHBOURS) -> np.ndarray:
    """(N,) 1 / mean distance of each row to its ``neighbours`` nearest other rows (distances floored
    at 1e-12: duplicates are very typical, never infinite); NaN for a single row, which has none."""
    from scipy.spatial.distance import cdist

    count = len(rows)
    if count < 2:
        return np.full(count, np.nan)
    distances = cdist(rows, rows) if rows.shape[1] else np.zeros((count, count))
    np.fill_diagonal(distances, np.inf)
    k = min(neighbours, count - 1)
    nearest = np.partition(distances, k - 1, axis=1)[:, :k].mean(axis=1)
    return 1.0 / np.maximum(nearest, 1e-12)


def typical(image_rows: np.ndarray, budget: int, seed: int) -> list[Pick]:
    """From each of ``budget`` k-means clusters of the (N, F) image features its most typical image.

    Clusters are ranked by size (largest first; ties by their first id) and numbered by rank;
    the score is the pick's typicality (None for a cluster of one image). Should k-means find
    fewer distinct clusters (duplicate images), the most typical of the rest fill the budget.
    """
    rows = np.asarray(image_rows, np.float64)
    labels, _ = _kmeans(rows, budget, seed)
    members = [np.flatnonzero(labels == c) for c in range(budget)]
    order = sorted((m for m in members if len(m)), key=lambda m: (-len(m), int(m[0])))
    picks: list[Pick] = []
    for rank, member in enumerate(order):
        scores = typicality(rows[member])
        best = int(member[0]) if len(member) == 1 else int(member[int(np.nanargmax(scores))])
        score = None if len(member) == 1 else float(np.nanmax(scores))
        picks.append(Pick(best, score, rank))
    rest = np.setdiff1d(np.arange(len(rows)), [p.index for p in picks])
    if len(picks) < budget and len(rest):
        scores = typicality(rows)[rest]
        for j in np.argsort(-np.nan_to_num(scores, nan=-math.inf), kind="stable")[:budget - len(picks)]:
            cluster = next(k for k, m in enumerate(order) if rest[j] in m)
            picks.append(Pick(int(rest[j]), float(scores[j]), cluster))
    return picks


def random_picks(ids: Sequence[str], budget: int, seed: int,
                 presets: Mapping[tuple[int, int], Sequence[str]] | None = None) -> list[Pick]:
    """The ``budget`` images ``data.num_labeled=budget data.label_seed=seed`` trains on, in draw order."""
    where = {image_id: k for k, image_id in enumerate(ids)}
    return [Pick(where[image_id], None, None) for image_id in select_labeled(ids, budget, seed, presets)]
