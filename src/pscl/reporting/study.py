"""The pretraining-length study and the dense linear probe, for ``pscl-report``.

A run of ``experiment=pretrain_scaling`` records in ``metrics.json`` one point per pretraining
snapshot (``snapshots``: epoch, optimiser steps, fine-tuned Dice, probe Dice). These functions
pool the points over rounds (mean ± sample std per method and snapshot), draw
``pretraining_curve.png`` (fine-tuned and probe Dice against pretraining steps, the supervised
baseline and the random-init probe as reference lines), and tabulate the probe of every run
that recorded one (``eval.probe=true``) between its floor (random init) and its ceiling (the
supervised model's Dice on the same rounds).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    mean = statistics.fmean(values) if values else math.nan
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, std, len(values)


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if not math.isnan(std) else f"{mean:.3f}"


def snapshot_rows(records: Sequence[dict[str, Any]], order: Callable[[str], Any] = str) -> list[dict[str, Any]]:
    """One row per (method, snapshot epoch) over the rounds.

    ``records``: ``{"method", "label_seed", "snapshots": [{"epoch", "steps", "test": {...}, "probe"?: {...}}]}``.
    """
    pooled: dict[tuple[str, int], dict[str, list[float]]] = {}
    for record in records:
        for point in record.get("snapshots") or []:
            slot = pooled.setdefault((record["method"], int(point["epoch"])),
                                     {"steps": [], "dice": [], "probe": [], "floor": [], "seeds": []})
            slot["steps"].append(float(point["steps"]))
            slot["dice"].append(float(point["test"]["dice"]))
            slot["seeds"].append(record["label_seed"])
            if "probe" in point:
                slot["probe"].append(float(point["probe"]["dice"]))
                slot["floor"].append(float(point["probe"]["random_init"]["dice"]))
    rows = []
    for (method, epoch), slot in sorted(pooled.items(), key=lambda kv: (order(kv[0][0]), kv[0][1])):
        dice = _mean_std(slot["dice"])
        probe = _mean_std(slot["probe"])
        rows.append({"method": method, "epoch": epoch, "steps": round(statistics.fmean(slot["steps"])),
                     "rounds": dice[2], "label_seeds": sorted(slot["seeds"]),
                     "dice_mean": dice[0], "dice_std": dice[1], "probe_mean": probe[0], "probe_std": probe[1],
                     "floor_mean": _mean_std(slot["floor"])[0]})
    return rows


def snapshot_markdown(rows: Sequence[dict[str, Any]], baseline: tuple[float, float, int] | None) -> str:
    """The study as a Markdown table, with the supervised reference."""
    if not rows:
        return ""
    lines = ["## Pretraining length", "",
             "Fine-tuned test Dice and dense linear probe Dice after each pretraining snapshot "
             "(mean ± sample std over rounds).", ""]
    if baseline is not None and not math.isnan(baseline[0]):
        lines += [f"Supervised (no pretraining): {_fmt(baseline[0], baseline[1])} over {baseline[2]} round(s).", ""]
    lines += ["| method | epoch | steps | rounds | fine-tuned Dice | probe Dice | probe, random init |",
              "|---|---:|---:|---:|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['epoch']} | {row['steps']} | {row['rounds']} | "
                     f"{_fmt(row['dice_mean'], row['dice_std'])} | {_fmt(row['probe_mean'], row['probe_std'])} | "
                     f"{_fmt(row['floor_mean'], math.nan)} |")
    return "\n".join(lines) + "\n"


def style_dice_axis(ax: Any, xlabel: str, legend_size: int = 8, ticks: Sequence[float] = ()) -> None:
    """A log-x Dice axis with grid and legend, as every pscl-report curve has; ``ticks``: label
    exactly these x values (the measured points) instead of the log axis's own labels."""
    ax.set_xscale("log")
    if ticks:
        from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

        ax.xaxis.set_major_locator(FixedLocator(sorted(set(ticks))))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test Dice (foreground mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_pretraining_curve(rows: Sequence[dict[str, Any]], path: Path,
                           baseline: tuple[float, float, int] | None = None,
                           order: Callable[[str], Any] = str) -> Path | None:
    """Fine-tuned Dice (left) and probe Dice (right) against pretraining steps, per method, with
    error bars = sample std over rounds; supervised and the random-init probe as dashed lines."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    methods = sorted({row["method"] for row in rows}, key=order)
    for method in methods:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["steps"])
        steps = [r["steps"] for r in mine]
        for ax, key in ((left, "dice"), (right, "probe")):
            means = [r[f"{key}_mean"] for r in mine]
            if all(math.isnan(m) for m in means):
                continue
            errors = [0.0 if math.isnan(r[f"{key}_std"]) else r[f"{key}_std"] for r in mine]
            ax.errorbar(steps, means, yerr=errors, marker="o", capsize=3, label=method)
    if baseline is not None and not math.isnan(baseline[0]):
        for ax in (left, right):
            ax.axhline(baseline[0], color="black", linestyle="--", linewidth=1,
                       label=f"supervised ({baseline[2]} rounds)")
    floors = [r["floor_mean"] for r in rows if not math.isnan(r["floor_mean"])]
    if floors:
        right.axhline(statistics.fmean(floors), color="grey", linestyle=":", linewidth=1, label="probe, random init")
    left.set_title("fine-tuned")
    right.set_title("dense linear probe (frozen network)")
    for ax in (left, right):
        style_dice_axis(ax, "pretraining steps", legend_size=7, ticks=[r["steps"] for r in rows])
    return save_figure(fig, path)


def probe_rows(records: Sequence[dict[str, Any]], baseline: str = "supervised",
               order: Callable[[str], Any] = str) -> list[dict[str, Any]]:
    """Per method: probe Dice, its random-init floor and the fine-tuned Dice, over the runs that
    recorded a probe; the ceiling is the ``baseline`` method's fine-tuned Dice on the same rounds."""
    ceiling = {(r["num_labeled"], r["label_seed"]): r["test"]["dice"] for r in records if r["method"] == baseline}
    by_method: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        if record.get("probe"):
            by_method.setdefault((record["method"], record["num_labeled"]), []).append(record)
    rows = []
    for (method, regime), members in sorted(by_method.items(), key=lambda kv: (order(kv[0][0]), kv[0][1])):
        tops = [ceiling[(regime, r["label_seed"])] for r in members if (regime, r["label_seed"]) in ceiling]
        rows.append({"method": method, "num_labeled": regime, "rounds": len(members),
                     "probe": _mean_std([r["probe"]["dice"] for r in members]),
                     "floor": _mean_std([r["probe"]["random_init"]["dice"] for r in members]),
                     "finetuned": _mean_std([r["test"]["dice"] for r in members]),
                     "ceiling": _mean_std(tops)})
    return rows


def probe_markdown(rows: Sequence[dict[str, Any]], baseline: str = "supervised") -> str:
    if not rows:
        return ""
    lines = ["## Dense linear probe", "",
             "A per-pixel linear classifier on the frozen network's features, fitted on the annotated "
             f"image(s) of each round. Floor: the same probe on a randomly initialised network. Ceiling: "
             f"the fine-tuned Dice of `{baseline}` on the same rounds.", "",
             "| method | labels | rounds | probe Dice | floor (random init) | ceiling (supervised) | fine-tuned Dice |",
             "|---|---|---:|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['num_labeled']} | {row['rounds']} | {_fmt(*row['probe'][:2])} | "
                     f"{_fmt(*row['floor'][:2])} | {_fmt(*row['ceiling'][:2])} | {_fmt(*row['finetuned'][:2])} |")
    return "\n".join(lines) + "\n"
