"""The 2-D map of per-pixel features: standardise, PCA to ~30 dimensions, then t-SNE (pure functions).

PCA first is the usual recipe: it removes the noise dimensions that slow t-SNE and blur its
neighbourhoods. Everything is seeded, so the same features and seed give the same map.
"""

from __future__ import annotations

import numpy as np

PCA_DIMS = 30
PERPLEXITY = 30.0
# t-SNE needs a few neighbours per point; below this a map says nothing
MIN_POINTS = 5


def standardise(rows: np.ndarray) -> np.ndarray:
    """Every feature to zero mean and unit variance over the rows; a constant feature becomes 0.

    The multiscale features concatenate maps of very different scales (bottleneck, decoder);
    unscaled, the largest would decide every distance.
    """
    rows = np.asarray(rows, dtype=np.float64)
    std = rows.std(axis=0)
    return (rows - rows.mean(axis=0)) / np.where(std > 1e-12, std, 1.0)


def reduce_pca(rows: np.ndarray, dims: int = PCA_DIMS) -> np.ndarray:
    """``rows`` (N, F) projected on their first ``dims`` principal components (fewer if N or F is smaller).

    The full SVD solver is used: it draws no random numbers, so the result depends on the rows alone.
    """
    from sklearn.decomposition import PCA

    keep = max(1, min(int(dims), rows.shape[0], rows.shape[1]))
    reduced = PCA(n_components=keep, svd_solver="full").fit_transform(rows)
    if reduced.shape[1] < 2:  # t-SNE's PCA initialisation needs two columns
        reduced = np.pad(reduced, ((0, 0), (0, 2 - reduced.shape[1])))
    return reduced


def tsne_2d(rows: np.ndarray, seed: int, perplexity: float = PERPLEXITY) -> np.ndarray:
    """A seeded 2-D t-SNE of ``rows``; the perplexity is capped at (N - 1) / 3 for small N."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    count = rows.shape[0]
    if count < MIN_POINTS:
        raise ValueError(f"a 2-D map needs at least {MIN_POINTS} points, got {count}")
    chosen = min(float(perplexity), (count - 1) / 3.0)
    tsne = TSNE(n_components=2, perplexity=chosen, init="pca", learning_rate="auto", random_state=int(seed))
    # torch and scikit-learn each bring an OpenMP runtime; together their idle threads spin against
    # each other and t-SNE becomes ~100x slower. One thread is fast for a few thousand points.
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(rows).astype(np.float32)


def embed_2d(rows: np.ndarray, seed: int, dims: int = PCA_DIMS, perplexity: float = PERPLEXITY) -> np.ndarray:
    """(N, F) features -> (N, 2) map: standardised, PCA to ``dims``, then t-SNE seeded with ``seed``."""
    return tsne_2d(reduce_pca(standardise(rows), dims), seed, perplexity)
