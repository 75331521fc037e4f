"""Two closer looks at a multirun than the mean ± std table, for ``pscl-report``.

* **Paired rounds.** Round ``k`` of every method uses the same annotated image(s), so each method
  can be compared with a baseline (``supervised``) round by round: the Dice of each round, the
  mean difference from the baseline, in how many rounds the method is better, and a paired
  bootstrap 95 % interval of the mean difference (:mod:`pscl.reporting.stats`). The spread
  between rounds often exceeds the spread between methods; pairing removes it.
* **Test images by group.** When the data folder assigns groups (``meta.csv``), the Dice of
  each saved test prediction is split by whether the test image shares a group with the
  annotated image(s). It shows whether a model generalises beyond the kind of micrograph it was
  annotated on.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from pscl.constants import IGNORE_INDEX
from pscl.dice import class_dice, dice_counts, foreground_dice
from pscl.reporting.stats import BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, paired_bootstrap_ci


def regime_order(regime: str) -> tuple[int, int | str]:
    """Label regimes by number of annotated images, named regimes (``all``) last."""
    return (0, int(regime)) if regime.isdigit() else (1, regime)


class RoundScore(NamedTuple):
    """The Dice one run reports: its method, label regime and round."""

    method: str
    regime: str
    seed: int
    dice: float


class ImageScore(NamedTuple):
    """The foreground Dice of one saved test prediction of one run."""

    method: str
    regime: str
    seed: int
    image: str
    image_group: str | None
    annotated_groups: tuple[str, ...]
    dice: float

    @property
    def same_group(self) -> bool | None:
        """Whether the test image shares a group with an annotated image (None if unknown)."""
        if self.image_group is None or not self.annotated_groups:
            return None
        return self.image_group in self.annotated_groups


def paired_rows(scores: Sequence[RoundScore], baseline: str, order: Callable[[str], Any] = str,
                bootstrap_seed: int = 0, resamples: int = BOOTSTRAP_RESAMPLES) -> list[dict[str, Any]]:
    """Per (regime, method): Dice by round and the differences from ``baseline`` in the same rounds.

    Only regimes in which the baseline ran are returned; a round the baseline lacks is left out of
    the differences. ``ci`` is the paired bootstrap interval of the mean difference (``None`` for
    the baseline itself and for fewer than 2 paired rounds).
    """
    by_key: dict[tuple[str, str], dict[int, float]] = {}
    for score in scores:
        by_key.setdefault((score.regime, score.method), {})[score.seed] = score.dice
    rows = []
    for regime in sorted({regime for regime, _ in by_key}, key=regime_order):
        reference = by_key.get((regime, baseline))
        if reference is None:
            continue
        methods = sorted((m for r, m in by_key if r == regime), key=lambda m: (m != baseline, order(m)))
        for method in methods:
            dice = by_key[(regime, method)]
            differences = [dice[s] - reference[s] for s in sorted(dice) if s in reference]
            rows.append({
                "regime": regime, "method": method, "dice_by_round": dict(sorted(dice.items())),
                "mean_difference": statistics.fmean(differences) if differences and method != baseline else math.nan,
                "rounds_better": sum(d > 0 for d in differences), "rounds_paired": len(differences),
                "ci": None if method == baseline else paired_bootstrap_ci(differences, resamples, bootstrap_seed),
            })
    return rows


def paired_markdown(rows: Sequence[dict[str, Any]], baseline: str, bootstrap_seed: int = 0,
                    resamples: int = BOOTSTRAP_RESAMPLES) -> str:
    """The paired-rounds table as Markdown (empty when the baseline did not run); ``bootstrap_seed``
    and ``resamples`` are those :func:`paired_rows` used, named under the table."""
    if not rows:
        return ""
    seeds = sorted({s for row in rows for s in row["dice_by_round"]})
    level = f"{BOOTSTRAP_LEVEL:.0%}".replace("%", " %")
    lines = [f"Dice of each round, and the difference from `{baseline}` on the same annotated image(s):", "",
             "| method | labels | " + " | ".join(f"round {s}" for s in seeds)
             + f" | mean difference vs {baseline} | rounds better | {level} CI of the difference |",
             "|---|---|" + "---:|" * (len(seeds) + 3)]
    for row in rows:
        cells = " | ".join(f"{row['dice_by_round'][s]:.3f}" if s in row["dice_by_round"] else "-" for s in seeds)
        if row["method"] == baseline:
            tail = "- | - | -"
        else:
            tail = (f"{row['mean_difference']:+.3f} | {row['rounds_better']} / {row['rounds_paired']} | "
                    f"{format_interval(row.get('ci'))}")
        lines.append(f"| {row['method']} | {row['regime']} | {cells} | {tail} |")
    lines += ["", f"CI: paired bootstrap percentile interval of the mean difference ({resamples:,} "
              f"resamples of the paired rounds, seed {bootstrap_seed}); – with fewer than 2 paired rounds. With "
              "a handful of rounds it is narrower than its nominal level: an interval that excludes 0 is a "
              "hint, not a significance test."]
    return "\n".join(lines) + "\n"


def format_interval(interval: tuple[float, float] | None) -> str:
    """``[low, high]`` with signs, or ``–`` when there is no interval."""
    if interval is None:
        return "–"
    return f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def image_dice(prediction: np.ndarray, truth: np.ndarray, num_classes: int,
               ignore_index: int = IGNORE_INDEX) -> float:
    """Mean Dice over the foreground classes (1 ..) of one image.

    Pixels labelled ``ignore_index`` are left out; a class absent from both the prediction and the
    ground truth is left out of the mean. NaN when no foreground class is present at all. In
    float32, as the runs' own Dice (:mod:`pscl.metrics`).
    """
    import torch

    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {truth.shape} differ in size")
    counts = dice_counts(prediction, truth, num_classes, ignore_index)
    return foreground_dice(class_dice(*(torch.from_numpy(count) for count in counts)))


def group_rows(scores: Iterable[ImageScore], order: Callable[[str], Any] = str) -> list[dict[str, Any]]:
    """Per (regime, method): mean per-image Dice on test images of the annotated group(s) and of others.

    Empty when no image has a known group or all test images share one group.
    """
    scores = [s for s in scores if s.same_group is not None and not math.isnan(s.dice)]
    if len({s.image_group for s in scores}) < 2:
        return []
    keys = sorted({(s.regime, s.method) for s in scores}, key=lambda k: (regime_order(k[0]), order(k[1])))
    rows = []
    for regime, method in keys:
        mine = [s for s in scores if (s.regime, s.method) == (regime, method)]
        same = [s.dice for s in mine if s.same_group]
        other = [s.dice for s in mine if not s.same_group]
        rows.append({"regime": regime, "method": method,
                     "same_group": statistics.fmean(same) if same else math.nan, "same_count": len(same),
                     "other_group": statistics.fmean(other) if other else math.nan, "other_count": len(other)})
    return rows


def group_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The by-group table as Markdown (empty when there is nothing to split)."""
    if not rows:
        return ""

    def cell(value: float, count: int) -> str:
        return "-" if math.isnan(value) else f"{value:.3f} ({count})"

    lines = ["Dice per test image (final model, mean over foreground classes present), by whether the test "
             "image shares a group (`meta.csv`) with the annotated image(s); in brackets the number of "
             "(run, image) pairs:", "",
             "| method | labels | same group | other groups |", "|---|---|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['regime']} | {cell(row['same_group'], row['same_count'])} | "
                     f"{cell(row['other_group'], row['other_count'])} |")
    return "\n".join(lines) + "\n"
