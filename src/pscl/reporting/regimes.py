"""The label-regimes table of ``pscl-report``: Dice per method and number of annotated images, and
the fraction of the baseline's gap each method recovers.

The gap is the rise of the baseline (``supervised``) from the fewest annotated images of the
multirun to the most (``all``): a method that recovers 0.5 of it with one label is halfway between
supervised training with one label and with all of them (:func:`pscl.reporting.stats.gap_recovered`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pscl.reporting.stats import gap_recovered

# a named regime (``all``) whose image count no run recorded sorts after every numbered one
_UNKNOWN_SIZE = 10**9


@dataclass
class RegimeTable:
    """Mean Dice per (method, regime) and, when it can be computed, the gap each recovers."""

    regimes: list[str]  # fewest annotated images first
    methods: list[str]
    dice: dict[tuple[str, str], float]  # (method, regime) -> mean Dice over its finished rounds
    gap: dict[tuple[str, str], float | None] | None  # None: the column is left out (``note`` says why)
    baseline_low: float | None = None  # the baseline's Dice at regimes[0]
    baseline_high: float | None = None  # ... and at regimes[-1]
    note: str = ""


def regime_size(regime: str, num_images: int | None) -> int:
    """The number of annotated images of a regime: its number, else the images its runs used."""
    if regime.isdigit():
        return int(regime)
    return num_images or _UNKNOWN_SIZE


def regime_table(rows: Sequence[Mapping[str, Any]], baseline: str,
                 order: Callable[[str], Any] = str) -> RegimeTable | None:
    """The label-regimes table of the summary ``rows`` (``pscl.reporting.tables.summarize``), or
    None when fewer than two regimes have a finished round."""
    done = [row for row in rows if row["rounds"] and not math.isnan(row["dice_mean"])]
    sizes: dict[str, int] = {}
    for row in done:
        size = regime_size(row["num_labeled"], row.get("num_images"))
        sizes[row["num_labeled"]] = min(size, sizes.get(row["num_labeled"], size))
    if len(sizes) < 2:
        return None
    regimes = sorted(sizes, key=lambda regime: (sizes[regime], regime))
    methods = sorted({row["method"] for row in done}, key=lambda m: (m != baseline, order(m)))
    dice = {(row["method"], row["num_labeled"]): float(row["dice_mean"]) for row in done}
    low, high = dice.get((baseline, regimes[0])), dice.get((baseline, regimes[-1]))
    table = RegimeTable(regimes, methods, dice, gap=None, baseline_low=low, baseline_high=high,
                        note=_unpaired_note(done, baseline))
    missing = [regime for regime, value in ((regimes[0], low), (regimes[-1], high)) if value is None]
    if missing:
        table.note += (f"Gap recovered is not shown: `{baseline}` has no finished round with "
                       + " or ".join(f"{regime} label(s)" for regime in missing)
                       + f"; it needs `{baseline}` at the fewest and at the most annotated images.")
        return table
    assert low is not None and high is not None  # for the type checker: neither is missing
    table.gap = {key: gap_recovered(value, low, high) for key, value in dice.items()}
    if high <= low:
        table.note += (f"–: undefined. `{baseline}` with {regimes[-1]} label(s) ({high:.3f}) is not above "
                       f"`{baseline}` with {regimes[0]} ({low:.3f}): there is no gap to recover.")
    return table


def _unpaired_note(rows: Sequence[Mapping[str, Any]], baseline: str) -> str:
    """A warning when, in some regime, a method's rounds (label seeds) are not the baseline's: its
    mean and gap are then over other annotated images ("" when every regime is paired)."""
    seeds = {(row["method"], row["num_labeled"]): sorted(row.get("label_seeds") or []) for row in rows}
    odd = sorted(f"`{method}` at {regime} (rounds {_seed_list(mine)} vs {_seed_list(seeds[(baseline, regime)])})"
                 for (method, regime), mine in seeds.items()
                 if method != baseline and (baseline, regime) in seeds and mine != seeds[(baseline, regime)])
    if not odd:
        return ""
    return ("Not paired: " + "; ".join(odd) + f". These means are over other annotated images than `{baseline}`'s, "
            "and the annotated image moves Dice more than the method; the paired table below compares round by "
            "round. ")


def _seed_list(seeds: Sequence[int]) -> str:
    return ", ".join(str(seed) for seed in seeds) or "none"


def regime_markdown(table: RegimeTable | None, baseline: str) -> str:
    """The label-regimes table as Markdown (empty for None)."""
    if table is None:
        return ""
    first, last = table.regimes[0], table.regimes[-1]
    with_gap = table.gap is not None
    intro = "Label regimes: mean Dice over the rounds"
    if with_gap:
        intro += (f", and the fraction of `{baseline}`'s gap each method recovers: (Dice − `{baseline}` at "
                  f"{first}) / (`{baseline}` at {last} − `{baseline}` at {first}) = (Dice − "
                  f"{table.baseline_low:.3f}) / ({table.baseline_high:.3f} − {table.baseline_low:.3f}). "
                  f"0: no better than `{baseline}` with {first} label(s); 1: as good as `{baseline}` with "
                  f"{last} label(s); below 0: worse than `{baseline}` with {first}.")
    else:
        intro += "."
    header = "| method | " + " | ".join(
        f"Dice ({regime}) | gap recovered ({regime})" if with_gap else f"Dice ({regime})" for regime in table.regimes)
    align = "|---|" + ("---:|---:|" if with_gap else "---:|") * len(table.regimes)
    lines = [intro, "", header + " |", align]
    for method in table.methods:
        cells = []
        for regime in table.regimes:
            value = table.dice.get((method, regime))
            cells.append("-" if value is None else f"{value:.3f}")
            if table.gap is not None:
                cells.append("-" if value is None else _fraction(table.gap.get((method, regime))))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if table.note:
        lines += ["", table.note.strip()]
    return "\n".join(lines) + "\n"


def _fraction(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
