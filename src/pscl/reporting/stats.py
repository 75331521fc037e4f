"""Small pure statistics behind ``pscl-report``'s tables and comparisons.

* :func:`mean_std` and :func:`format_mean_std` - the mean and sample standard deviation over
  rounds, and how every table writes them;
* :func:`paired_bootstrap_ci` - a percentile bootstrap interval of the mean of paired differences
  (a method's Dice minus the baseline's, round by round);
* :func:`gap_recovered` - the fraction of the gap between the baseline with few labels and with all
  labels that a method closes.

The module is named ``stats`` rather than ``statistics`` so that it never shadows the standard
library module of that name, which it and the other reporting modules use.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_LEVEL = 0.95


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1) of ``values``; NaN for the mean of none and for
    the standard deviation of fewer than two."""
    mean = statistics.fmean(values) if values else math.nan
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, std


def format_mean_std(mean: float, std: float) -> str:
    """``mean ± std`` to three decimals, the mean alone when ``std`` is NaN, ``-`` when ``mean`` is."""
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if not math.isnan(std) else f"{mean:.3f}"


def paired_bootstrap_ci(differences: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                        level: float = BOOTSTRAP_LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``differences``; None for fewer than 2.

    Each resample draws ``len(differences)`` differences with replacement; the interval holds the
    central ``level`` of the resampled means. The same ``seed`` gives the same interval. With a
    handful of rounds the interval is narrower than its nominal level: read it as a description of
    the spread of the rounds, not as a test.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be 1 or more, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    values = np.asarray(differences, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"differences must be a flat sequence, got shape {values.shape}")
    if values.size < 2:  # one pair resamples to itself: no spread to speak of
        return None
    if not np.isfinite(values).all():
        raise ValueError("differences must be finite numbers")
    rng = np.random.default_rng(seed)
    # one index matrix for all resamples: pairs are rounds (a few to a few dozen), so resamples x
    # pairs indices stay small and the whole bootstrap is one vectorised gather
    picks = rng.integers(0, values.size, size=(resamples, values.size))
    means = values[picks].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def gap_recovered(method_dice: float, supervised_low: float, supervised_high: float) -> float | None:
    """Fraction of the supervised gap a method recovers, or None when there is no gap.

    ``(method_dice - supervised_low) / (supervised_high - supervised_low)``, where the supervised
    Dice are those with the fewest and with the most annotated images. 0 means no better than
    supervised training with the fewest labels, 1 as good as supervised training with the most.
    A negative value is meaningful: the method is below supervised training with the fewest labels
    (its pretraining hurt); above 1 it beats supervised training with the most labels. When the
    supervised Dice does not rise with the labels (``supervised_high <= supervised_low``) the
    fraction is undefined: None, never a division by zero or by a negative gap. Non-finite inputs
    also give None.
    """
    if not all(np.isfinite(v) for v in (method_dice, supervised_low, supervised_high)):
        return None
    gap = supervised_high - supervised_low
    if gap <= 0:
        return None
    return (method_dice - supervised_low) / gap
