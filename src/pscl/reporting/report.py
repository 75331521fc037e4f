"""``pscl-report``: the results table of one or more multiruns, with plots.

Reads every run folder below the given directories (``metrics.json``, or ``FAILED`` for a run
that crashed) and writes, into the first directory (or ``--out``), and nowhere else, the files
below. A run whose files it cannot read (a damaged or foreign ``metrics.json``,
``.hydra/config.yaml`` or ``.hydra/overrides.yaml``) is listed by name as failed, with the reason,
and the others are reported; a damaged prediction image is left out with a note.

* ``runs.csv`` - one line per run (method, labels, round, Dice, ACC, per-class Dice, folder);
* ``results.csv`` and ``results.md`` - per method and label regime: Dice and ACC as mean ± sample
  standard deviation (n - 1) over the rounds, per-class Dice means, the number of rounds, the
  protocol, and the failed runs; with several label regimes also the fraction of the baseline's
  gap (fewest to most annotated images) each method recovers (:mod:`pscl.reporting.regimes`);
* ``label_efficiency.png`` - Dice against the number of annotated images, one line per method,
  error bars = the standard deviation (only when several regimes ran);
* ``gallery.png`` - image | ground truth | each method's prediction, for a few test images;
* ``per_image.csv`` - the Dice of each saved test prediction, with the test image's group and the
  annotated images' groups (``meta.csv``);
* ``pretraining_curve.png`` - for runs of ``experiment=pretrain_scaling``: fine-tuned and probe
  Dice against pretraining steps (:mod:`pscl.reporting.study`); ``results.md`` gets its table and,
  for runs with ``eval.probe=true``, the probe between its floor and ceiling;
* for runs that evaluated on the validation split (``experiment=protocol_grid``), ``results.md``
  holds the grid's validation table instead (:mod:`pscl.reporting.grid`).

``results.md`` also pairs each method's rounds with the baseline's (``--baseline``, default
``supervised``), with a paired bootstrap 95 % interval of the mean difference (``--bootstrap-seed``),
and, when the test images fall into several groups, splits the per-image Dice by
whether the test image shares a group with the annotated image(s); see :mod:`pscl.reporting.breakdown`.

Protocols: ``final`` reports each run's final model; ``paper`` the best Dice of the periodic test
evaluations of a run (recorded with ``eval=paper``) and the ACC at that point. ``auto`` (default)
uses what the runs recorded.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pscl.reporting.breakdown import (
    ImageScore,
    RoundScore,
    group_markdown,
    group_rows,
    image_dice,
    paired_markdown,
    paired_rows,
)
from pscl.errors import DataError, PsclError, run_command
from pscl.reporting.grid import grid_markdown, grid_point, grid_rows
from pscl.reporting.regimes import regime_markdown, regime_table
from pscl.reporting.selection import RANDOM, plot_selection, selection_markdown, selection_rows
from pscl.reporting.study import (
    plot_pretraining_curve,
    probe_markdown,
    probe_rows,
    save_figure,
    snapshot_markdown,
    snapshot_rows,
    style_dice_axis,
)

# the paper's order: no pretraining, image-level methods, then PSCL
METHOD_ORDER = ("supervised", "simclr", "moco", "byol", "densecl", "pscl_moco", "pscl_simclr")


@dataclass
class Run:
    """One run of a multirun, finished or failed."""

    folder: Path
    method: str
    num_labeled: str
    label_seed: int
    num_images: int | None = None  # annotated images actually used (len(labeled_ids))
    labeled_ids: list[str] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    protocol: str = "final"
    data_root: str | None = None
    error: str | None = None
    state: str = "finished"  # finished | failed | unfinished (pscl.runs.state)
    split: str = "test"  # val: a protocol-grid run (test holds its validation metrics)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    probe: dict[str, Any] | None = None
    point: str | None = None  # the grid point of a validation run (pscl.reporting.grid)
    # how labeled_ids were chosen: a pscl-select strategy, "list" (named by hand), None (data.label_seed)
    strategy: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None


def _from_hydra_config(folder: Path) -> tuple[dict[str, Any], str]:
    """method / num_labeled / label_seed of a run from its ``.hydra/config.yaml`` (for failed runs),
    and why they are missing (``""`` if they are not); a damaged file costs the facts, not the report."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    path = folder / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}, ""
    try:
        cfg = OmegaConf.load(path)
        if not isinstance(cfg, DictConfig):
            return {}, f"its {path.relative_to(folder)} is not a mapping"
        facts = {"method": OmegaConf.select(cfg, "method.name", default="?"),
                 "num_labeled": OmegaConf.select(cfg, "data.num_labeled", default="?"),
                 "label_seed": OmegaConf.select(cfg, "data.label_seed", default=-1)}
    # OmegaConf raises any of these for a file that is unreadable, not UTF-8, not YAML, or whose
    # values do not resolve
    except (OSError, ValueError, YAMLError, OmegaConfBaseException) as exc:
        return {}, f"its {path.relative_to(folder)} cannot be read ({type(exc).__name__})"
    return facts, ""


class UnreadableRecord(ValueError):
    """A ``metrics.json`` whose fields are not what pscl-train writes; the message says which."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _need(record: dict[str, Any], key: str, kinds: tuple[type, ...], where: str = "") -> Any:
    """``record[key]`` if it is one of ``kinds`` (never a bool), else UnreadableRecord."""
    if key not in record:
        raise UnreadableRecord(f"no `{where}{key}`")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = " or ".join(dict.fromkeys("number" if k in (int, float) else k.__name__ for k in kinds))
        raise UnreadableRecord(f"`{where}{key}` is {str(value)[:40]!r}, not a {names}")
    return value


def _check_metrics(values: object, where: str, required: tuple[str, ...] = ("dice", "acc")) -> dict[str, Any]:
    """A mapping holding numbers for the ``required`` metrics and every per-class ``dice_*``."""
    if not isinstance(values, dict):
        raise UnreadableRecord(f"`{where}` is not a mapping of metrics")
    for key in required:
        _need(values, key, (int, float), f"{where}.")
    for key, value in values.items():
        if str(key).startswith("dice_") and not _is_number(value):
            raise UnreadableRecord(f"`{where}.{key}` is {str(value)[:40]!r}, not a number")
    return values


def _check_points(points: object, where: str, metrics: str | None = None) -> list[Any]:
    """A list of mappings (periodic test points, or snapshots with their ``metrics`` mapping)."""
    if points is None:
        return []
    if not isinstance(points, list) or not all(isinstance(point, dict) for point in points):
        raise UnreadableRecord(f"`{where}` is not a list of mappings")
    for k, point in enumerate(points):
        if metrics is None:
            _check_metrics(point, f"{where}[{k}]")
            continue
        _need(point, "epoch", (int,), f"{where}[{k}].")
        _need(point, "steps", (int, float), f"{where}[{k}].")
        _check_metrics(point.get(metrics), f"{where}[{k}].{metrics}", required=("dice",))  # what the study reads
        if "probe" in point:
            _check_probe(point["probe"], f"{where}[{k}].probe")
    return points


def _check_probe(probe: object, where: str) -> Any:
    if probe is None:
        return None
    if not isinstance(probe, dict):
        raise UnreadableRecord(f"`{where}` is not a mapping")
    _need(probe, "dice", (int, float), f"{where}.")
    floor = _need(probe, "random_init", (dict,), f"{where}.")
    _need(floor, "dice", (int, float), f"{where}.random_init.")
    return probe


def run_from_record(folder: Path, record: Any) -> Run | None:
    """The finished run ``record`` (a parsed ``metrics.json``) describes; None for a pretraining-only
    run (nothing to report). Raises UnreadableRecord naming the first field that is not right."""
    from pscl.runs.state import metrics_problem

    problem = metrics_problem(record)
    if problem is not None:
        raise UnreadableRecord(problem)
    split = record.get("split", "test")
    method = _need(record, "method", (str,))
    num_labeled = _need(record, "num_labeled", (int, str))
    label_seed = _need(record, "label_seed", (int,))
    if not record[split]:  # a pretraining-only run
        return None
    labeled_ids = record.get("labeled_ids") or []
    if not isinstance(labeled_ids, list) or not all(isinstance(i, str) for i in labeled_ids):
        raise UnreadableRecord("`labeled_ids` is not a list of image ids")
    protocol = record.get("protocol", "final")
    if protocol not in ("final", "paper"):
        raise UnreadableRecord(f"`protocol` is {str(protocol)[:40]!r}, not final or paper")
    data_root = record.get("data_root")
    if data_root is not None and not isinstance(data_root, str):
        raise UnreadableRecord("`data_root` is not a path")
    source = record.get("labeled_source")
    kind = source.get("kind") if isinstance(source, dict) else None
    strategy = source.get("strategy", "selection") if kind == "selection" else "list" if kind == "list" else None
    if strategy is not None and not isinstance(strategy, str):
        raise UnreadableRecord("`labeled_source.strategy` is not a name")
    return Run(folder, method, str(num_labeled), label_seed, num_images=len(labeled_ids) or None,
               labeled_ids=list(labeled_ids), test=_check_metrics(record[split], split),
               history=_check_points(record.get("test_history"), "test_history"), protocol=protocol,
               data_root=data_root, split=split,
               snapshots=_check_points(record.get("snapshots"), "snapshots", metrics=split),
               probe=_check_probe(record.get("probe"), "probe"), strategy=strategy)


def _facts_of_record(record: object) -> dict[str, Any]:
    """method / num_labeled / label_seed of an unreadable ``metrics.json``, those of the right type."""
    if not isinstance(record, dict):
        return {}
    kinds = {"method": (str,), "num_labeled": (int, str), "label_seed": (int,)}
    return {key: record[key] for key, kind in kinds.items()
            if isinstance(record.get(key), kind) and not isinstance(record.get(key), bool)}


def _not_reported(folder: Path, state: str, detail: str, record: object = None) -> Run:
    """A failed, unfinished or unreadable run, with what its Hydra config (or else its unreadable
    ``metrics.json``) says about it."""
    facts, problem = _from_hydra_config(folder)
    facts = {**_facts_of_record(record), **facts}
    seed = facts.get("label_seed", -1)
    return Run(folder, str(facts.get("method", "?")), str(facts.get("num_labeled", "?")),
               seed if isinstance(seed, int) and not isinstance(seed, bool) else -1,
               error="; ".join(text for text in (detail or state, problem) if text), state=state)


def _read_run(folder: Path) -> Run | None:
    """The run in ``folder`` whatever its files hold; None if it is not a run or has nothing to report."""
    from pscl.runs.state import METRICS, read_state

    state = read_state(folder)
    if state is None:
        return None
    if state.state != "finished":
        return _not_reported(folder, state.state, state.detail)
    record = None
    try:
        record = json.loads((folder / METRICS).read_bytes().decode("utf-8"))
        run = run_from_record(folder, record)
        if run is not None and run.split == "val":
            run.point = grid_point(folder)
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not JSON, or UnreadableRecord
        why = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        return _not_reported(folder, "failed", f"unreadable {METRICS} ({why})", record)
    except PsclError as exc:  # the grid point's overrides file
        return _not_reported(folder, "failed", str(exc).splitlines()[0][:300], record)
    return run


def collect_runs(roots: Sequence[Path]) -> list[Run]:
    """Every run folder below ``roots``: finished (``metrics.json``), failed (``FAILED``, non-finite
    metrics, or files the report cannot read: listed by name with the reason) or unfinished
    (``RUNNING`` only: killed, or still running)."""
    from pscl.runs.state import FAILED, METRICS, RUNNING

    folders = sorted({p.parent for root in roots for name in (METRICS, FAILED, RUNNING)
                      for p in Path(root).rglob(name)})
    return [run for run in map(_read_run, folders) if run is not None]


def reported_values(run: Run, protocol: str) -> dict[str, float]:
    """The test values a run contributes under ``protocol`` (``final`` or ``paper``)."""
    if protocol == "final":
        return run.test
    if protocol == "paper":
        if not run.history:
            raise DataError("has no periodic test evaluations", run.folder,
                            "rerun it with eval=paper or report it with --protocol final")
        return max(run.history, key=lambda point: point["dice"])  # first best on ties
    raise ValueError(f"unknown protocol {protocol!r}; use final or paper")


def resolve_protocol(runs: Sequence[Run], protocol: str) -> str:
    """``auto`` -> the protocol the finished runs recorded (they must agree)."""
    if protocol != "auto":
        return protocol
    recorded = {r.protocol for r in runs if not r.failed}
    if len(recorded) > 1:
        raise DataError(f"the runs mix protocols {sorted(recorded)}", None, "pass --protocol final or paper")
    return recorded.pop() if recorded else "final"


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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for a single value)."""
    mean = statistics.fmean(values) if values else math.nan
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, std


def _regime_key(run: Run) -> tuple[int, str]:
    """Regimes in order of the number of annotated images (``all`` last when its size is unknown)."""
    if run.num_labeled.isdigit():
        return int(run.num_labeled), run.num_labeled
    return run.num_images or 10**9, run.num_labeled


def _method_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def summarize(runs: Sequence[Run], protocol: str) -> list[dict[str, Any]]:
    """One row per (method, label regime), in the paper's method order."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.method, run.num_labeled), []).append(run)
    rows = []
    for (method, regime), members in sorted(groups.items(), key=lambda kv: (_regime_key(kv[1][0]), _method_key(kv[0][0]))):
        done = sorted((r for r in members if not r.failed), key=lambda r: r.label_seed)
        values = [reported_values(r, protocol) for r in done]
        dice_mean, dice_std = _mean_std([v["dice"] for v in values])
        acc_mean, acc_std = _mean_std([v["acc"] for v in values])
        class_keys = [k for k in (values[0] if values else {}) if k.startswith("dice_")][1:]  # foreground classes
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


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f} ± {std:.3f}" if not math.isnan(std) else f"{mean:.3f}"


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
                     f"{_fmt(row['dice_mean'], row['dice_std'])} | {_fmt(row['acc_mean'], row['acc_std'])} | {per_class} |")
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
        for run in sorted(runs, key=lambda r: (_method_key(r.method), r.num_labeled, r.label_seed)):
            if run.failed:
                writer.writerow([run.method, run.num_labeled, run.label_seed, "", "", *[""] * len(classes), "",
                                 run.state, run.folder])
                continue
            values = reported_values(run, protocol)
            writer.writerow([run.method, run.num_labeled, run.label_seed, values["dice"], values["acc"],
                             *[values.get(f"dice_{c}", "") for c in classes], values.get("epoch", "final"),
                             "ok", run.folder])


def _reported_regimes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The label regimes with at least one finished round (a failed run's ``?`` is none)."""
    return sorted({row["num_labeled"] for row in rows if row["rounds"]})


def plot_label_efficiency(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Dice vs number of annotated images per method, with std error bars (needs >= 2 regimes)."""
    if len(_reported_regimes(rows)) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({row["method"] for row in rows}, key=_method_key):
        points = sorted((row["num_images"], row["dice_mean"], row["dice_std"]) for row in rows
                        if row["method"] == method and row["rounds"] and row["num_images"])
        if not points:
            continue
        xs, ys, es = zip(*points)
        ax.errorbar(xs, ys, yerr=[0 if math.isnan(e) else e for e in es], marker="o", capsize=3, label=method)
    style_dice_axis(ax, "annotated images")
    return save_figure(fig, path)


def _with_predictions(runs: Sequence[Run]) -> list[Run]:
    """Finished runs that saved test predictions and name their data folder."""
    return [r for r in runs if not r.failed and (r.folder / "predictions").is_dir() and r.data_root]


def _data_index(data_root: str, cache: dict[str, Any]) -> Any:
    """The index of a run's data folder (read once per folder), or None if it cannot be read here."""
    from pscl.data.index import index_dataset

    if data_root not in cache:
        try:
            cache[data_root] = index_dataset(data_root)
        except (PsclError, OSError) as exc:
            print(f"pscl-report: cannot read the data folder {data_root} ({exc}); run pscl-report from "
                  "the folder the runs were started in. Skipping the ground-truth views.", file=sys.stderr)
            cache[data_root] = None
    return cache[data_root]


def _gallery_mask(path: Path) -> Any:
    """An annotated mask for the gallery, or None (with a note) when it is over the pixel limit or unreadable."""
    import numpy as np

    from pscl.data.io import open_checked
    from pscl.errors import DataError

    try:
        with open_checked(path) as image:  # pscl's pixel limit, from the header
            return np.asarray(image)
    except (DataError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"pscl-report: the gallery shows no ground truth for {path}: {reason}", file=sys.stderr)
        return None


def read_prediction(path: Path, num_classes: int | None = None) -> Any:
    """A saved prediction as a 2-D array of class indices, or None (with a note on stderr) if the
    file is not one: a damaged PNG in a run folder costs that image, not the report."""
    import numpy as np

    from pscl.data.io import open_checked
    from pscl.errors import DataError

    try:
        with open_checked(path) as image:  # a decompression bomb is never decoded
            prediction = np.asarray(image)
    except DataError as exc:
        reason = str(exc).removeprefix(f"{path}: ").replace("\n  fix:", "; fix:")
        print(f"pscl-report: {path} left out: {reason}", file=sys.stderr)
        return None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for a damaged file
        print(f"pscl-report: {path} left out: not a readable image ({type(exc).__name__})", file=sys.stderr)
        return None
    if prediction.ndim != 2 or not np.issubdtype(prediction.dtype, np.integer):
        print(f"pscl-report: {path} left out: not a one-channel image of class indices", file=sys.stderr)
        return None
    if num_classes is not None and prediction.size and int(prediction.max()) >= num_classes:
        print(f"pscl-report: {path} left out: class {int(prediction.max())} is not one of the data folder's "
              f"{num_classes} classes", file=sys.stderr)
        return None
    return prediction


def image_scores(runs: Sequence[Run], indexes: dict[str, Any]) -> list[ImageScore]:
    """The foreground Dice of every saved test prediction (the final model of each run)."""
    from pscl.data.io import read_mask

    scores = []
    for run in _with_predictions(runs):
        index = _data_index(run.data_root, indexes)  # type: ignore[arg-type]
        if index is None:
            continue
        num_classes = index.num_classes
        annotated = tuple(sorted({g for i in run.labeled_ids if i in index.samples
                                  for g in [index.samples[i].group] if g is not None}))
        for path in sorted((run.folder / "predictions").glob("*.png")):
            sample = index.samples.get(path.stem)
            if sample is None or sample.mask is None:
                continue
            prediction = read_prediction(path, num_classes)
            if prediction is None:
                continue
            try:
                truth = read_mask(sample.mask, num_classes, prediction.shape)
            except PsclError as exc:
                print(f"pscl-report: {path} left out of per_image.csv: {exc}", file=sys.stderr)
                continue
            scores.append(ImageScore(run.method, run.num_labeled, run.label_seed, path.stem, sample.group,
                                     annotated, image_dice(prediction, truth, num_classes)))
    return scores


def write_per_image_csv(path: Path, scores: Sequence[ImageScore]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "num_labeled", "label_seed", "image", "image_group", "annotated_groups",
                         "same_group", "dice"])
        for s in scores:
            writer.writerow([s.method, s.regime, s.seed, s.image, s.image_group or "", ";".join(s.annotated_groups),
                             "" if s.same_group is None else s.same_group, s.dice])


def plot_gallery(runs: Sequence[Run], path: Path, num_images: int = 3,
                 indexes: dict[str, Any] | None = None) -> Path | None:
    """image | ground truth | one prediction per method (each method's first round of the smallest regime)."""
    import numpy as np

    from pscl.quantify.colours import PALETTE
    from pscl.data.io import read_image

    done = _with_predictions(runs)
    if not done:
        return None
    smallest = min(done, key=_regime_key).num_labeled
    chosen: dict[str, Run] = {}
    for run in sorted(done, key=lambda r: r.label_seed):
        if run.num_labeled == smallest:
            chosen.setdefault(run.method, run)
    methods = sorted(chosen, key=_method_key)
    index = _data_index(chosen[methods[0]].data_root, {} if indexes is None else indexes)  # type: ignore[arg-type]
    if index is None:
        return None
    # a stray file in predictions/ that names no image of the data folder is not drawn
    ids = sorted(p.stem for p in (chosen[methods[0]].folder / "predictions").glob("*.png")
                 if p.stem in index.samples)[:num_images]
    if not ids:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def colour(classes: np.ndarray) -> np.ndarray:
        return PALETTE[classes % len(PALETTE)]

    columns = 2 + len(methods)
    fig, axes = plt.subplots(len(ids), columns, figsize=(2.2 * columns, 2.2 * len(ids)), squeeze=False)
    for row, sample_id in enumerate(ids):
        sample = index.samples[sample_id]
        panels = [("image", read_image(sample.image)[..., 0], "gray")]
        truth = _gallery_mask(sample.mask) if sample.mask is not None else None
        if truth is not None:
            panels.append(("ground truth", colour(truth), None))
        else:
            panels.append(("ground truth", np.zeros((2, 2)), "gray"))
        for method in methods:
            pred = chosen[method].folder / "predictions" / f"{sample_id}.png"
            picture = read_prediction(pred) if pred.is_file() else None
            panels.append((method, colour(picture) if picture is not None else np.zeros((2, 2)), None))
        for col, (title, picture, cmap) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(picture, cmap=cmap)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
        axes[row][0].set_ylabel(sample_id, fontsize=7)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=PALETTE[k % len(PALETTE)] / 255.0, edgecolor="black", label=name)
               for k, name in enumerate(index.class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _gallery(runs: Sequence[Run], path: Path, num_images: int, indexes: dict[str, Any]) -> Path | None:
    """:func:`plot_gallery`, or None with a note when a data folder image cannot be drawn."""
    try:
        return plot_gallery(runs, path, num_images, indexes)
    except (PsclError, OSError) as exc:  # a damaged image or mask in the data folder the runs name
        print(f"pscl-report: gallery.png not drawn: {str(exc).splitlines()[0]}", file=sys.stderr)
        return None


def label_efficiency_note(rows: Sequence[dict[str, Any]]) -> str:
    """Why ``label_efficiency.png`` is absent when only one label regime ran (``""`` otherwise)."""
    regimes = _reported_regimes(rows)
    if len(regimes) != 1:
        return ""
    return (f"`label_efficiency.png` is not drawn: every run used the same label regime "
            f"(data.num_labeled={regimes[0]}); it needs two or more, e.g. "
            "`pscl-train -m ... data.num_labeled=1,5,all`.\n")


def _record(run: Run) -> dict[str, Any]:
    return {"method": run.method, "num_labeled": run.num_labeled, "label_seed": run.label_seed,
            "test": run.test, "snapshots": run.snapshots, "probe": run.probe}


def _baseline_stats(runs: Sequence[Run], baseline: str, protocol: str) -> tuple[float, float, int] | None:
    values = [reported_values(r, protocol)["dice"] for r in runs if r.method == baseline and not r.failed]
    if not values:
        return None
    mean, std = _mean_std(values)
    return mean, std, len(values)


def write_report(roots: Sequence[Path], out: Path | None = None, protocol: str = "auto",
                 gallery_images: int = 3, baseline: str = "supervised", bootstrap_seed: int = 0) -> dict[str, Path]:
    """Collect the runs below ``roots`` and write the table files and plots; returns their paths."""
    roots = [Path(r) for r in roots]
    out = Path(out) if out is not None else roots[0]
    found = collect_runs(roots)
    if not found:
        raise DataError("holds no runs to report (no metrics.json, FAILED or RUNNING below it, or only "
                        "pretraining-only runs)", ", ".join(map(str, roots)),
                        "pass the multirun folder printed by pscl-train -m, or a run folder")
    prepare_out(out)
    grid = [r for r in found if r.split == "val" and not r.failed]
    chosen = [r for r in found if r.split != "val" and r.strategy not in RANDOM]  # pscl-select's choices
    runs = [r for r in found if r.split != "val" and r.strategy in RANDOM]
    if not runs:  # only chosen sets: no draws to place them among, report them as rounds
        runs, chosen = chosen, []
    sections = []
    if grid:
        records = [{"point": r.point, "method": r.method, "label_seed": r.label_seed,
                    "dice": r.test["dice"]} for r in grid]
        sections.append(grid_markdown(grid_rows(records, _method_key), _method_key))
    written = {"results.md": out / "results.md"}
    if runs:
        protocol = resolve_protocol(runs, protocol)
        rows = summarize(runs, protocol)
        regimes = regime_table(rows, baseline, _method_key)
        write_csvs(out, rows, runs, protocol, regimes.gap if regimes is not None else None)
        written.update({"results.csv": out / "results.csv", "runs.csv": out / "runs.csv"})
        rounds = [RoundScore(r.method, r.num_labeled, r.label_seed, reported_values(r, protocol)["dice"])
                  for r in runs if not r.failed]
        indexes: dict[str, Any] = {}
        per_image = image_scores(runs, indexes)
        repeats = repeated_rounds(runs)
        if repeats:
            print(f"pscl-report: {len(repeats)} round(s) are reported by several runs; see the warning in results.md",
                  file=sys.stderr)
        records = [_record(r) for r in runs if not r.failed]
        study = snapshot_rows(records, _method_key)
        supervised = _baseline_stats(runs, baseline, protocol)
        sections = [repeated_rounds_warning(repeats), markdown(rows, runs, protocol), label_efficiency_note(rows),
                    regime_markdown(regimes, baseline),
                    paired_markdown(paired_rows(rounds, baseline, _method_key, bootstrap_seed), baseline,
                                    bootstrap_seed),
                    group_markdown(group_rows(per_image, _method_key)),
                    probe_markdown(probe_rows(records, baseline, _method_key), baseline),
                    snapshot_markdown(study, supervised), *sections]
        if per_image:
            write_per_image_csv(out / "per_image.csv", per_image)
            written["per_image.csv"] = out / "per_image.csv"
        if chosen:
            selections = [{"method": r.method, "num_labeled": r.num_labeled, "strategy": r.strategy or "random",
                           "dice": reported_values(r, protocol)["dice"]} for r in [*runs, *chosen] if not r.failed]
            sections.insert(1, selection_markdown(selection_rows(selections, _method_key)))
            made = plot_selection(selections, out / "selection.png", _method_key)
            if made is not None:
                written["selection.png"] = made
        for name, made in (("label_efficiency.png", plot_label_efficiency(rows, out / "label_efficiency.png")),
                           ("gallery.png", _gallery(runs, out / "gallery.png", gallery_images, indexes)),
                           ("pretraining_curve.png", plot_pretraining_curve(study, out / "pretraining_curve.png",
                                                                            supervised, _method_key))):
            if made is not None:
                written[name] = made
    (out / "results.md").write_text("\n".join(section for section in sections if section))
    return written


def prepare_out(out: Path) -> None:
    """Create the output folder, or a DataError saying why it cannot hold the report."""
    fix = "pass --out a folder you can write (it is created if missing)"
    if out.exists() and not out.is_dir():
        raise DataError("is a file, not a folder for the report", out, fix)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission, a read-only disk
        raise DataError(f"cannot be created ({exc.strerror or type(exc).__name__})", out, fix) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise DataError("is not writable", out, fix)


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pscl-report", description=__doc__.splitlines()[0])
    parser.add_argument("multirun", nargs="+", type=Path, help="multirun folder(s) of pscl-train -m")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the first folder)")
    parser.add_argument("--protocol", choices=("auto", "final", "paper"), default="auto")
    parser.add_argument("--gallery-images", type=_count, default=3, help="test images in gallery.png (0: none)")
    parser.add_argument("--baseline", default="supervised",
                        help="method each round is compared with in the paired table, and whose gap the "
                             "label-regimes table measures (default: supervised)")
    parser.add_argument("--bootstrap-seed", type=_count, default=0,
                        help="seed of the paired bootstrap interval (default: 0; the same seed, the same interval)")
    return parser


def _report(argv: Sequence[str] | None) -> int:
    """The body of pscl-report: check the folders, write the report, print it."""
    args = _parser().parse_args(argv)
    for root in args.multirun:
        if not root.is_dir():
            raise DataError("is not a folder", root, "pass the multirun folder printed by pscl-train -m")
    written = write_report(args.multirun, args.out, args.protocol, args.gallery_images, args.baseline,
                           args.bootstrap_seed)
    print((written["results.md"]).read_text())
    print("written: " + ", ".join(str(p) for p in written.values()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``pscl-report``: 0 when the report is written (failed and unreadable runs listed in it), 2 for a
    user error (one message), 1 for a crash (one line: a bug); ``PSCL_DEBUG=1`` adds the traceback."""
    return run_command("pscl-report", lambda: _report(argv))


if __name__ == "__main__":
    sys.exit(main())
