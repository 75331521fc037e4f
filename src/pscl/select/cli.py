"""``pscl-select``: which images of a pool to annotate first, ranked, for a budget of K.

    pscl-select <data folder | folder | files | globs> --budget K --out DIR
                [--features intensity | random | <run folder>] [--strategy coverage | typical | random]
                [--seed S] [--patch-size PX]

Each candidate image is cut into patches, each patch gets a label-free feature vector
(:mod:`pscl.select.sources`), and a strategy picks K images (:mod:`pscl.select.strategies`). For a
pscl data folder the candidates are its training ids (split as training splits them); test
images and masks are never opened. Writes ``selection.csv``, ``selection.json`` and
``contact_sheet.png`` into ``--out`` (:mod:`pscl.select.output`), all at the end.

Exit codes: 0 written; 2 a user error, nothing written (a bad option, input, run folder or
``--out``; fewer readable images than K); 1 a crash (a bug: please report it); 130 interrupted.
An unreadable image is named in a warning and left out; the others are still ranked.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from pscl.errors import ConfigError, run_parsed

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

PROG = "pscl-select"
DEFAULT_PATCH = 64  # px, as pscl.select.choose.DEFAULT_PATCH (not imported here: --help stays light)
HOW = {
    "coverage": "k-means over all patches; greedily the image adding the most patch mass not yet covered",
    "typical": "k-means over the images' mean features into K clusters; the most typical image of each, "
               "largest cluster first",
    "random": "seeded draw of pscl.data.splits.select_labeled, the draw of data.num_labeled=K data.label_seed=S",
}


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``pscl-select``."""
    from pscl.select.strategies import STRATEGIES

    parser = argparse.ArgumentParser(
        prog=PROG, description="Rank a pool of micrographs for annotation: choose K images whose patches cover the "
        "pool (coverage), the most typical image of each of K clusters (typical), or a seeded draw (random). "
        "Writes selection.csv, selection.json and contact_sheet.png into --out.")
    parser.add_argument("inputs", nargs="+", help="a pscl data folder (its training images are the candidates), "
                        "folders of images, image files, or quoted globs ('pool/*.tif')")
    parser.add_argument("--budget", type=int, required=True, metavar="K", help="images to choose")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the selection into")
    parser.add_argument("--features", default=None, metavar="intensity|random|RUN",
                        help="label-free patch features: intensity (grey-level and texture statistics, the "
                        "default), random (a randomly initialised UNet) or a pscl run folder (its pretrained network)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="coverage", help="how to choose (default coverage)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of k-means, of the random network and of the random draw (default 0)")
    parser.add_argument("--patch-size", type=int, default=DEFAULT_PATCH, metavar="PX",
                        help=f"side of the square patches, a multiple of 8 (default {DEFAULT_PATCH})")
    parser.add_argument("--device", default="cpu", help="where a network runs: cpu (default), cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier selection in --out")
    split = parser.add_argument_group("data folder split (as data.* of pscl-train; conf/data/default.yaml)")
    split.add_argument("--layout", choices=("auto", "folder", "authors"), default="auto")
    split.add_argument("--split-seed", type=int, default=0)
    split.add_argument("--test-fraction", type=float, default=0.2)
    split.add_argument("--val-fraction", type=float, default=0.0)
    return parser


def _check_arguments(args: argparse.Namespace) -> None:
    """Every option checked before anything is read, each refusal naming the option."""
    if args.budget < 1:
        raise ConfigError("--budget", f"must be at least 1 image, got {args.budget}", "e.g. --budget 5")
    if args.patch_size < 8 or args.patch_size % 8:
        raise ConfigError("--patch-size", f"must be a multiple of 8 px (the network's coarsest map is 1/8), "
                          f"got {args.patch_size}", f"e.g. --patch-size {DEFAULT_PATCH}")
    _check_device(args.device)


def _check_device(name: str) -> None:
    """``cpu``, or ``cuda``/``cuda:N`` when PyTorch sees that GPU."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    fix = "use --device cpu, or cuda on a machine whose GPU PyTorch sees"
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError("--device", f"{name!r} is not a device pscl-select runs on (cpu, cuda or cuda:N)", fix)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError("--device", f"{name} is not available here", fix)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _select(args: argparse.Namespace, argv: list[str]) -> int:
    """The command's work: check, list the pool, read it, choose, then write everything."""
    from pscl import __version__
    from pscl.data.io import read_image
    from pscl.select.output import Row, check_out, contact_sheet, selection_record, selection_table, thumbnail
    from pscl.select.output import write_outputs
    from pscl.select.choose import choose
    from pscl.select.pool import make_pool
    from pscl.select.sources import label_warning, resolve_source

    _check_arguments(args)
    pool = make_pool(args.inputs, layout=args.layout, split_seed=args.split_seed,
                     test_fraction=args.test_fraction, val_fraction=args.val_fraction)
    check_out(args.out, args.overwrite, [c.path for c in pool.candidates])
    if args.budget > len(pool.candidates):
        raise ConfigError("--budget", f"asks for {args.budget} images but the pool ({pool.source}) holds only "
                          f"{len(pool.candidates)}", f"use --budget {len(pool.candidates)} or fewer")
    source = resolve_source(args.features or "intensity", args.seed, args.device) if args.strategy != "random" else None
    warning = label_warning(source, pool.ids, (pool.data or {}).get("root")) if source is not None else None
    if args.strategy == "random" and args.features is not None:
        warning = f"--features {args.features} is not used: --strategy random reads no features"
    warnings = [warning] if warning else []
    for message in warnings:
        _warn(message)

    def warn(message: str) -> None:
        warnings.append(message)
        _warn(message)

    chosen, ranked, facts = choose(pool, source, args.strategy, args.budget, args.seed, args.patch_size, warn)
    rows = [Row(rank, ranked.candidates[pick.index].id, pick.score, pick.cluster, ranked.candidates[pick.index].path)
            for rank, pick in enumerate(chosen, start=1)]
    features = source.name if source is not None else None
    facts = {"strategy": args.strategy, "how": HOW[args.strategy], "features": features, "budget": args.budget,
             "seed": args.seed, "patch_size": args.patch_size, "pool": pool.source, **facts, "data": pool.data,
             "warnings": warnings, "command": shlex.join([PROG, *argv]), "pscl_version": __version__}
    thumbnails = [thumbnail(read_image(row.path, 3)) for row in rows]
    title = f"{args.strategy}, {features or 'no features'}: {len(rows)} of {facts['ranked']} images"
    record = write_outputs(args.out, selection_table(rows), selection_record(rows, facts),
                           contact_sheet(rows, thumbnails, title))
    how = f"{args.strategy}" + (f" ({features} features)" if features else "")
    print(f"{PROG}: chose {len(rows)} of {facts['ranked']} images by {how} -> {record}", flush=True)
    return 0


def run(argv: list[str] | None = None) -> int:
    """Run ``pscl-select`` on ``argv``; returns the exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_parsed(PROG, build_parser(), argv, lambda args: _select(args, argv))


def main() -> None:
    """Console entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
