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

This module puts the report together (:func:`write_report`) and is the command line (:func:`main`);
the runs are read by :mod:`pscl.reporting.run_records`, the tables made by
:mod:`pscl.reporting.tables`, the saved predictions scored and drawn by
:mod:`pscl.reporting.predictions`, and the curves share :mod:`pscl.reporting.plots`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pscl.errors import DataError, run_command
from pscl.reporting.breakdown import RoundScore, group_markdown, group_rows, paired_markdown, paired_rows
from pscl.reporting.grid import grid_markdown, grid_rows
from pscl.reporting.plots import plot_label_efficiency
from pscl.reporting.predictions import draw_gallery, image_scores, write_per_image_csv
from pscl.reporting.regimes import regime_markdown, regime_table
from pscl.reporting.run_records import Run, collect_runs, reported_values, resolve_protocol
from pscl.reporting.selection import RANDOM, plot_selection, selection_markdown, selection_rows
from pscl.reporting.study import plot_pretraining_curve, probe_markdown, probe_rows, snapshot_markdown, snapshot_rows
from pscl.reporting.tables import (
    baseline_stats,
    label_efficiency_note,
    markdown,
    method_key,
    repeated_rounds,
    repeated_rounds_warning,
    same_images_note,
    summarize,
    write_csvs,
)


def _record(run: Run) -> dict[str, Any]:
    return {"method": run.method, "num_labeled": run.num_labeled, "label_seed": run.label_seed,
            "test": run.test, "snapshots": run.snapshots, "probe": run.probe}


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
        sections.append(grid_markdown(grid_rows(records, method_key), method_key))
    written = {"results.md": out / "results.md"}
    if runs:
        protocol = resolve_protocol(runs, protocol)
        rows = summarize(runs, protocol)
        regimes = regime_table(rows, baseline, method_key)
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
        study = snapshot_rows(records, method_key)
        # the supervised reference of the curve: the same label regime and rounds as its snapshots
        study_rounds = {(r["num_labeled"], r["label_seed"]) for r in records if r["snapshots"]}
        supervised = baseline_stats(runs, baseline, protocol, study_rounds or None)
        sections = [repeated_rounds_warning(repeats), markdown(rows, runs, protocol), label_efficiency_note(rows),
                    same_images_note(runs),
                    regime_markdown(regimes, baseline),
                    paired_markdown(paired_rows(rounds, baseline, method_key, bootstrap_seed), baseline,
                                    bootstrap_seed),
                    group_markdown(group_rows(per_image, method_key)),
                    probe_markdown(probe_rows(records, baseline, method_key), baseline),
                    snapshot_markdown(study, supervised), *sections]
        if per_image:
            write_per_image_csv(out / "per_image.csv", per_image)
            written["per_image.csv"] = out / "per_image.csv"
        if chosen:
            selections = [{"method": r.method, "num_labeled": r.num_labeled, "strategy": r.strategy or "random",
                           "dice": reported_values(r, protocol)["dice"]} for r in [*runs, *chosen] if not r.failed]
            chosen_rows = selection_rows(selections, method_key)
            sections.insert(1, selection_markdown(chosen_rows))
            made = plot_selection(selections, out / "selection.png", method_key, chosen_rows)
            if made is not None:
                written["selection.png"] = made
        for name, made in (("label_efficiency.png", plot_label_efficiency(rows, out / "label_efficiency.png")),
                           ("gallery.png", draw_gallery(runs, out / "gallery.png", gallery_images, indexes)),
                           ("pretraining_curve.png", plot_pretraining_curve(study, out / "pretraining_curve.png",
                                                                            supervised, method_key))):
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
