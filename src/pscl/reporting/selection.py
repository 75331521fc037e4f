"""Does choosing what to annotate beat chance? The selection-study table and plot of ``pscl-report``.

A selection study (``experiment=selection_study``) fine-tunes each method on images chosen by a
strategy of ``pscl-select`` (coverage, typical: ``data.labeled_ids=select:<strategy>``) and on
random draws of the same budget (``select:random:<seed>``, the ``data.label_seed`` draws). Per
method and budget, the random draws give a reference distribution; each chosen set is placed in
it: its Dice, its percentile among the draws and its difference to their mean.

Records: ``{"method", "num_labeled", "dice", "strategy"}``, ``strategy`` None (or ``"random"``)
for a random draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pscl.reporting.breakdown import regime_order

from pscl.reporting.stats import mean_std

#: strategies whose runs are random draws (the reference), not choices
RANDOM = (None, "random")


def percentile_among(value: float, reference: Sequence[float]) -> float:
    """Percent of ``reference`` below ``value``, ties counted half (50 = the median draw)."""
    if not reference:
        return math.nan
    below = sum(1 for r in reference if r < value)
    ties = sum(1 for r in reference if r == value)
    return 100.0 * (below + 0.5 * ties) / len(reference)


def selection_rows(records: Sequence[Mapping[str, Any]],
                   order: Callable[[str], Any] = str) -> list[dict[str, Any]]:
    """One row per chosen set: method, budget, strategy, Dice, the draws' mean/std/count,
    the percentile among the draws and the difference to their mean (NaN with no draws)."""
    draws = reference_draws(records)
    rows = []
    for record in records:
        strategy = record.get("strategy")
        if strategy in RANDOM:
            continue
        key = (record["method"], str(record["num_labeled"]))
        reference = draws.get(key, [])
        mean, std = mean_std(reference)
        dice = float(record["dice"])
        rows.append({"method": key[0], "num_labeled": key[1], "strategy": str(strategy), "dice": dice,
                     "draws": len(reference), "draws_mean": mean,
                     "draws_std": std,
                     "draws_min": min(reference) if reference else math.nan,
                     "draws_max": max(reference) if reference else math.nan,
                     "percentile": percentile_among(dice, reference), "difference": dice - mean})
    rows.sort(key=lambda r: (order(r["method"]), regime_order(r["num_labeled"]), r["strategy"]))
    return rows


def reference_draws(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[float]]:
    """The random draws' Dice per (method, budget)."""
    draws: dict[tuple[str, str], list[float]] = {}
    for record in records:
        if record.get("strategy") in RANDOM:
            draws.setdefault((record["method"], str(record["num_labeled"])), []).append(float(record["dice"]))
    return draws


def _number(value: float, spec: str) -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def selection_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The table of chosen sets against the random draws, or ``""`` when nothing was chosen."""
    if not rows:
        return ""
    lines = ["## Choosing what to annotate", "",
             "Each chosen set (`pscl-select` strategy) against random draws of the same budget "
             "(`data.label_seed`), same method: its Dice, its percentile among the draws (ties count "
             "half) and its difference to their mean.", "",
             "| method | labels | strategy | Dice | random draws (mean ± std, min..max) | draws | percentile | "
             "difference |",
             "|---|---:|---|---:|---|---:|---:|---:|"]
    for r in rows:
        spread = (f"{_number(r['draws_mean'], '.3f')} ± {_number(r['draws_std'], '.3f')} "
                  f"({_number(r['draws_min'], '.3f')}..{_number(r['draws_max'], '.3f')})")
        lines.append(f"| {r['method']} | {r['num_labeled']} | {r['strategy']} | {r['dice']:.3f} | {spread} | "
                     f"{r['draws']} | {_number(r['percentile'], '.0f')} | {_number(r['difference'], '+.3f')} |")
    if any(r["draws"] < 10 for r in rows):
        lines += ["", "Fewer than 10 random draws for some rows: their percentile is coarse."]
    return "\n".join(lines) + "\n"


def plot_selection(records: Sequence[Mapping[str, Any]], path: Path, order: Callable[[str], Any] = str,
                   rows: Sequence[Mapping[str, Any]] | None = None) -> Path | None:
    """A strip plot per (method, budget): the random draws as dots, each chosen set as a marked point.
    ``rows``: :func:`selection_rows` of ``records`` when the caller has them. None when no run was
    chosen by a strategy."""
    rows = selection_rows(records, order) if rows is None else rows
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    draws = reference_draws(records)
    groups = sorted({(r["method"], r["num_labeled"]) for r in rows},
                    key=lambda g: (order(g[0]), regime_order(g[1])))
    strategies = sorted({r["strategy"] for r in rows})
    markers = dict(zip(strategies, "D^sv*Pp"))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(groups)), 3.6))
    colours = dict(zip(strategies, ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange")))
    labelled: set[str] = set()
    for x, group in enumerate(groups):
        values = draws.get(group, [])
        spread = [x - 0.1 + 0.2 * k / max(1, len(values) - 1) for k in range(len(values))]
        ax.scatter(spread, values, s=14, color="0.55", label="random draws" if x == 0 else None, zorder=2)
        for r in (r for r in rows if (r["method"], r["num_labeled"]) == group):
            first = r["strategy"] not in labelled
            labelled.add(r["strategy"])
            ax.scatter([x + 0.25], [r["dice"]], s=48, marker=markers.get(r["strategy"], "o"),
                       color=colours.get(r["strategy"], "black"), label=r["strategy"] if first else None, zorder=3)
    ax.set_xticks(range(len(groups)), [f"{m}\n{k} label{'s' if k != '1' else ''}" for m, k in groups], fontsize=8)
    ax.set_ylabel("test Dice")
    ax.set_title("chosen images against random draws", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
