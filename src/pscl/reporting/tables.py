"""The results tables of ``pscl-report``: one row per method and label regime, as Markdown
(``results.md``) and CSV (``results.csv``, ``runs.csv``), in the paper's method order."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from pscl.reporting.run_records import Run, reported_values
from pscl.reporting.stats import format_mean_std, mean_std

# the paper's order: no pretraining, image-level methods, then PSCL
METHOD_ORDER = ("supervised", "simclr", "moco", "byol", "densecl", "pscl_moco", "pscl_simclr")


def regime_key(run: Run) -> tuple[int, str]:
    """Regimes in order of the number of annotated images (``all`` last when its size is unknown)."""
    if run.num_labeled.isdigit():
        return int(run.num_labeled), run.num_labeled
    return run.num_images or 10**9, run.num_labeled


def method_key(method: str) -> tuple[int, str]:
    """Methods in the paper's order (:data:`METHOD_ORDER`), any other after them by name."""
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def summarize(runs: Sequence[Run], protocol: str) -> list[dict[str, Any]]:
    """One row per (method, label regime), in the paper's method order."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.method, run.num_labeled), []).append(run)
    rows = []
    for (method, regime), members in sorted(groups.items(), key=lambda kv: (regime_key(kv[1][0]), method_key(kv[0][0]))):
        done = sorted((r for r in members if not r.failed), key=lambda r: r.label_seed)
        values = [reported_values(r, protocol) for r in done]
        dice_mean, dice_std = mean_std([v["dice"] for v in values])
        acc_mean, acc_std = mean_std([v["acc"] for v in values])
        foreground = [k for k in (values[0] if values else {}) if k.startswith("dice_")][1:]
        # a class's mean only over every round: a run whose metrics lack it (an older pscl) leaves it out
        class_keys = [k for k in foreground if all(k in v for v in values)]
        rows.append({
            "method": method, "num_labeled": regime,
            "num_images": done[0].num_images if done else None,
            "rounds": len(done), "label_seeds": [r.label_seed for r in done],
            "dice_mean": dice_mean, "dice_std": dice_std, "acc_mean": acc_mean, "acc_std": acc_std,
            "class_dice": {k[len("dice_"):]: statistics.fmean(v[k] for v in values) for k in class_keys},
            "failed": [str(r.folder) for r in members if r.state == "failed"],
            "unfinished": [str(r.folder) for r in members if r.state == "unfinished"],
            "protocol": protocol,
        })
    return rows


def markdown(rows: Sequence[dict[str, Any]], runs: Sequence[Run], protocol: str) -> str:
    """The results table as Markdown, with the protocol, the std convention and failed runs."""
    classes = list(dict.fromkeys(c for row in rows for c in row["class_dice"]))
    what = ("final model of each run (no selection on the test set)" if protocol == "final" else
            "best of the periodic test evaluations of each run (the authors' protocol: selection on the test set)")
    lines = [f"Protocol: **{protocol}** - {what}. Mean ± sample standard deviation (n - 1) over rounds "
             "(different annotated images, `data.label_seed`); Dice = mean over foreground classes.", "",
             "| method | labels | rounds | Dice | ACC | " + " | ".join(f"Dice {c}" for c in classes) + " |",
             "|---|---|---:|---|---|" + "---:|" * len(classes)]
    for row in rows:
        per_class = " | ".join(f"{row['class_dice'][c]:.3f}" if c in row["class_dice"] else "-" for c in classes)
        counts = [f"{len(row[k])} {k}" for k in ("failed", "unfinished") if row.get(k)]
        failed = f" ({', '.join(counts)})" if counts else ""
        lines.append(f"| {row['method']} | {row['num_labeled']} | {row['rounds']}{failed} | "
                     f"{format_mean_std(row['dice_mean'], row['dice_std'])} | "
                     f"{format_mean_std(row['acc_mean'], row['acc_std'])} | {per_class} |")
    failed_runs = [r for r in runs if r.failed]
    if failed_runs:
        lines += ["", "Failed and unfinished runs (not in the means):", ""]
        lines += [f"* {r.state}: {r.method}, labels {r.num_labeled}, round {r.label_seed}: `{r.folder}` - {r.error}"
                  for r in failed_runs]
    return "\n".join(lines) + "\n"


def write_csvs(out: Path, rows: Sequence[dict[str, Any]], runs: Sequence[Run], protocol: str,
               gap: dict[tuple[str, str], float | None] | None = None) -> None:
    """``results.csv`` and ``runs.csv``; ``gap`` (method, regime) -> gap recovered adds its column
    (empty where it is undefined), left out when the report cannot compute it."""
    classes = list(dict.fromkeys(c for row in rows for c in row["class_dice"]))
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "num_labeled", "rounds", "failed", "unfinished", "dice_mean", "dice_std", "acc_mean", "acc_std",
                         *[f"dice_{c}" for c in classes], "protocol", "std", *(["gap_recovered"] if gap is not None else [])])
        for row in rows:
            # appended last so that readers of the older columns by position are not disturbed
            recovered = [] if gap is None else [gap.get((row["method"], row["num_labeled"]))]
            writer.writerow([row["method"], row["num_labeled"], row["rounds"], len(row["failed"]), len(row["unfinished"]),
                             row["dice_mean"], row["dice_std"], row["acc_mean"], row["acc_std"],
                             *[row["class_dice"].get(c, "") for c in classes], protocol, "sample (n-1)",
                             *["" if value is None else value for value in recovered]])
    with open(out / "runs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "num_labeled", "label_seed", "dice", "acc", *[f"dice_{c}" for c in classes],
                         "epoch", "status", "folder"])
        for run in sorted(runs, key=lambda r: (method_key(r.method), r.num_labeled, r.label_seed)):
            if run.failed:
                writer.writerow([run.method, run.num_labeled, run.label_seed, "", "", *[""] * len(classes), "",
                                 run.state, run.folder])
                continue
            values = reported_values(run, protocol)
            writer.writerow([run.method, run.num_labeled, run.label_seed, values["dice"], values["acc"],
                             *[values.get(f"dice_{c}", "") for c in classes], values.get("epoch", "final"),
                             "ok", run.folder])


def reported_regimes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The label regimes with at least one finished round (a failed run's ``?`` is none)."""
    return sorted({row["num_labeled"] for row in rows if row["rounds"]})


def label_efficiency_note(rows: Sequence[dict[str, Any]]) -> str:
    """Why ``label_efficiency.png`` is absent when only one label regime ran (``""`` otherwise)."""
    regimes = reported_regimes(rows)
    if len(regimes) != 1:
        return ""
    return (f"`label_efficiency.png` is not drawn: every run used the same label regime "
            f"(data.num_labeled={regimes[0]}); it needs two or more, e.g. "
            "`pscl-train -m ... data.num_labeled=1,5,all`.\n")


def same_images_note(runs: Sequence[Run]) -> str:
    """A note naming each (method, regime) whose finished rounds all annotate the same images (``all``,
    or ids named by hand): there ``data.label_seed`` selects nothing, so with a fixed seed the rounds
    repeat one run, and their ± and interval measure no spread between annotated images (``""`` if none)."""
    images: dict[tuple[str, str], list[frozenset[str]]] = {}
    for run in runs:
        if not run.failed and run.labeled_ids:
            images.setdefault((run.method, run.num_labeled), []).append(frozenset(run.labeled_ids))
    same = [f"`{method}` at {regime} ({len(sets)} runs)" for (method, regime), sets in images.items()
            if len(sets) > 1 and len(set(sets)) == 1]
    if not same:
        return ""
    return ("Rounds that annotate the same images: " + ", ".join(same) + ". `data.label_seed` selects nothing "
            "there, so these runs repeat one round (identical when the run's seed is fixed): their ± and "
            "interval say nothing about the spread between annotated images.\n")


def repeated_rounds(runs: Sequence[Run]) -> list[tuple[str, str, int, list[Path]]]:
    """(method, regime, round, folders) for every round that more than one finished run reports.

    That happens when a sweep varies another setting (``method.finetune_encoder_lr=1e-4,1e-3``) or
    the same multirun is passed twice: the table would pool different experiments as rounds.
    """
    folders: dict[tuple[str, str, int], list[Path]] = {}
    for run in runs:
        if not run.failed:
            folders.setdefault((run.method, run.num_labeled, run.label_seed), []).append(run.folder)
    return [(m, r, s, f) for (m, r, s), f in folders.items() if len(f) > 1]


def repeated_rounds_warning(repeats: Sequence[tuple[str, str, int, list[Path]]]) -> str:
    """A Markdown warning naming the rounds reported twice, or ``""``."""
    if not repeats:
        return ""
    lines = ["**Warning:** some rounds are reported by several runs, and the table pools them as if "
             "they were further rounds. These runs probably differ in another setting. Report each "
             "setting from its own multirun, or pass `pscl-report` the run folders of one setting:", ""]
    lines += [f"* {m}, labels {r}, round {s}: " + ", ".join(f"`{f}`" for f in folders) for m, r, s, folders in repeats]
    return "\n".join(lines) + "\n"


def baseline_stats(runs: Sequence[Run], baseline: str, protocol: str,
                   rounds: Collection[tuple[str, int]] | None = None) -> tuple[float, float, int] | None:
    """The ``baseline`` method's Dice over its finished rounds: mean, sample std and rounds (None: no round).

    ``rounds``: only these (label regime, label seed) pairs - the rounds a comparison is made on, so
    that extra baseline rounds or other label regimes in the same report do not shift the reference."""
    values = [reported_values(r, protocol)["dice"] for r in runs if r.method == baseline and not r.failed
              and (rounds is None or (r.num_labeled, r.label_seed) in rounds)]
    if not values:
        return None
    mean, std = mean_std(values)
    return mean, std, len(values)
