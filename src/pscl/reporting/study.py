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

from pscl.reporting.plots import save_figure, style_dice_axis
from pscl.reporting.stats import format_mean_std, mean_std


def snapshot_rows(records: Sequence[dict[str, Any]], order: Callable[[str], Any] = str) -> list[dict[str, Any]]:
    """One row per (method, pretraining steps) over the rounds.

    Points are pooled by optimiser steps, the length the curve is drawn against: the same amount of
    pretraining whatever the epoch a round counted (a step snapshot written after a resume by
    pscl before 2026-12-07 says one epoch less). ``epoch`` is the one epoch of the pooled points,
    or ``"a–b"`` when they differ.

    ``records``: ``{"method", "label_seed", "snapshots": [{"epoch", "steps", "test": {...}, "probe"?: {...}}]}``.
    """
    pooled: dict[tuple[str, int], dict[str, list[float]]] = {}
    for record in records:
        for point in record.get("snapshots") or []:
            slot = pooled.setdefault((record["method"], int(point["steps"])),
                                     {"epochs": [], "dice": [], "probe": [], "floor": [], "seeds": []})
            slot["epochs"].append(int(point["epoch"]))
            slot["dice"].append(float(point["test"]["dice"]))
            slot["seeds"].append(record["label_seed"])
            if "probe" in point:
                slot["probe"].append(float(point["probe"]["dice"]))
                slot["floor"].append(float(point["probe"]["random_init"]["dice"]))
    rows = []
    for (method, steps), slot in sorted(pooled.items(), key=lambda kv: (order(kv[0][0]), kv[0][1])):
        dice_mean, dice_std = mean_std(slot["dice"])
        probe_mean, probe_std = mean_std(slot["probe"])
        low, high = min(slot["epochs"]), max(slot["epochs"])
        rows.append({"method": method, "epoch": low if low == high else f"{low}–{high}", "steps": steps,
                     "rounds": len(slot["dice"]), "label_seeds": sorted(slot["seeds"]),
                     "dice_mean": dice_mean, "dice_std": dice_std, "probe_mean": probe_mean, "probe_std": probe_std,
                     "floor_mean": mean_std(slot["floor"])[0]})
    return rows


def snapshot_markdown(rows: Sequence[dict[str, Any]], baseline: tuple[float, float, int] | None) -> str:
    """The study as a Markdown table, with the supervised reference."""
    if not rows:
        return ""
    lines = ["## Pretraining length", "",
             "Fine-tuned test Dice and dense linear probe Dice after each pretraining snapshot "
             "(mean ± sample std over rounds).", ""]
    if baseline is not None and not math.isnan(baseline[0]):
        lines += [f"Supervised (no pretraining): {format_mean_std(baseline[0], baseline[1])} "
                  f"over {baseline[2]} round(s).", ""]
    lines += ["| method | epoch | steps | rounds | fine-tuned Dice | probe Dice | probe, random init |",
              "|---|---:|---:|---:|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['epoch']} | {row['steps']} | {row['rounds']} | "
                     f"{format_mean_std(row['dice_mean'], row['dice_std'])} | "
                     f"{format_mean_std(row['probe_mean'], row['probe_std'])} | "
                     f"{format_mean_std(row['floor_mean'], math.nan)} |")
    return "\n".join(lines) + "\n"


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
                     "probe": mean_std([r["probe"]["dice"] for r in members]),
                     "floor": mean_std([r["probe"]["random_init"]["dice"] for r in members]),
                     "finetuned": mean_std([r["test"]["dice"] for r in members]),
                     "ceiling": mean_std(tops)})
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
        lines.append(f"| {row['method']} | {row['num_labeled']} | {row['rounds']} | {format_mean_std(*row['probe'])} | "
                     f"{format_mean_std(*row['floor'])} | {format_mean_std(*row['ceiling'])} | "
                     f"{format_mean_std(*row['finetuned'])} |")
    return "\n".join(lines) + "\n"
