"""``pscl-embed``: does a network separate the classes? A 2-D map of its per-pixel features.

    pscl-embed <run folder>... --out embed.png [--images N] [--pixels-per-class K] [--seed S] [--data FOLDER]

One panel per network: a random initialisation of the runs' backbone, then for each run folder its
pretrained network (``pretrain/pretrained.pt`` or its last snapshot) and its fine-tuned one
(``model.pt``; "supervised" for ``method=supervised``). The pixels are K per class from the first N
test images of the run's data folder, the same pixels in every panel, read with the dense probe's
features and mapped by PCA then t-SNE. Writes the PNG and ``<out>.csv`` (network, class, x, y).

Exit codes: 0 written; 2 a user error (a folder that is not a run, no data folder, a bad option);
1 a crash (a bug: please report it); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pscl.errors import ConfigError, DataError, run_parsed

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

PROG = "pscl-embed"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``pscl-embed``."""
    from pscl.probe.features import FEATURE_CHOICES

    parser = argparse.ArgumentParser(
        prog=PROG, description="Map the per-pixel features of pretrained, fine-tuned and randomly initialised "
        "networks to 2-D (PCA + t-SNE), coloured by true class: one panel per network. Writes --out (PNG) "
        "and a CSV of the points beside it.")
    parser.add_argument("runs", nargs="+", type=Path, help="pscl run folders (holding pretrain/pretrained.pt "
                        "and/or model.pt)")
    parser.add_argument("--out", type=Path, required=True, help="the figure to write (.png); the points go to "
                        "the same name with .csv")
    parser.add_argument("--images", type=int, default=3, metavar="N", help="test images to sample (default 3)")
    parser.add_argument("--pixels-per-class", type=int, default=200, metavar="K",
                        help="pixels per class over those images (default 200)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the pixel draw and of t-SNE (default 0)")
    parser.add_argument("--data", type=Path, default=None, metavar="FOLDER",
                        help="data folder (default: the runs' own, metrics.json data_root)")
    parser.add_argument("--features", choices=FEATURE_CHOICES, default="multiscale",
                        help="the probe's features to map (default multiscale)")
    return parser


def _check_arguments(args: argparse.Namespace) -> None:
    """Every option checked before anything is read, each refusal naming the option."""
    if args.images < 1:
        raise ConfigError("--images", f"must be >= 1 test image, got {args.images}", "e.g. --images 3")
    if args.pixels_per_class < 1:
        raise ConfigError("--pixels-per-class", f"must be >= 1, got {args.pixels_per_class}",
                          "e.g. --pixels-per-class 200")
    if args.out.suffix.lower() != ".png":
        raise ConfigError("--out", f"must name a .png file, got {args.out}", "e.g. --out embed.png")
    if args.out.is_dir():
        raise ConfigError("--out", f"{args.out} is a folder", f"e.g. --out {args.out / 'embed.png'}")


def data_folder(runs: Sequence, given: Path | None) -> Path:
    """``--data``, or the one data folder the runs were trained on (metrics.json ``data_root``)."""
    if given is not None:
        if not given.expanduser().is_dir():
            raise DataError("--data is not a folder", given, "give a data folder (images/, masks/, classes.txt)")
        return given.expanduser()
    roots = {run.data_root for run in runs if run.data_root}
    if not roots:
        raise DataError("names no data folder (its metrics.json has no data_root)", runs[0].folder,
                        "give the data folder the run was trained on with --data <folder>")
    if len(roots) > 1:
        raise DataError(f"the runs were trained on different data folders ({', '.join(sorted(roots))})", None,
                        "map them on one with --data <folder>, or run pscl-embed once per data folder")
    root = Path(roots.pop()).expanduser()
    if not root.is_dir():
        raise DataError("the runs' data folder (metrics.json data_root) is not here", root,
                        "give it with --data <folder> (e.g. when the runs were made on another machine)")
    return root


def _check_classes(name: str, class_names: tuple[str, ...], data: object) -> None:
    """A fine-tuned model must segment the data folder's classes, in its order."""
    if class_names and tuple(class_names) != tuple(data.class_names):  # type: ignore[attr-defined]
        raise DataError(f"the {name} model segments ({', '.join(class_names)}) but the data folder has "
                        f"({', '.join(data.class_names)})", data.root,  # type: ignore[attr-defined]
                        "give the data folder the run was trained on with --data <folder>")


def _embed(args: argparse.Namespace) -> int:
    """The command's work: check, read the runs and the data, map every network, write the files."""
    from pscl.embed.features import load_test_images, pick_pixels, pixel_features, renormalise, split_settings
    from pscl.embed.maps import MIN_POINTS, embed_2d
    from pscl.embed.networks import finetuned_network, pretrained_network, random_network, read_run, unique_names
    from pscl.embed.plot import Panel, plot_panels, write_points

    _check_arguments(args)
    unique: dict[Path, Path] = {}
    for folder in args.runs:  # a folder given twice is mapped once
        unique.setdefault(folder.expanduser().resolve(), folder)
    runs = [read_run(folder) for folder in unique.values()]
    root = data_folder(runs, args.data)
    data = load_test_images(root, split_settings(runs[0].config.get("data")), args.images)
    picks = pick_pixels(data.masks, len(data.class_names), args.pixels_per_class, args.seed)
    if len(picks) < MIN_POINTS:
        raise DataError(f"its first {len(data.ids)} test image(s) hold only {len(picks)} annotated pixel(s)", root,
                        "sample more with --images or --pixels-per-class")
    channels, classes = data.in_channels, len(data.class_names)
    first = runs[0]
    networks, folders = [random_network(first, channels, classes, first.seed if first.seed is not None
                                        else args.seed)], [first.folder]
    for run in runs:
        if run.pretrained is not None:
            networks.append(pretrained_network(run, channels, classes, args.seed))
            folders.append(run.folder)
        if run.finetuned:
            networks.append(finetuned_network(run))
            folders.append(run.folder)
            _check_classes(networks[-1].name, networks[-1].class_names, data)
    networks = unique_names(networks, folders)
    missing = sorted(set(range(classes)) - set(picks.label.tolist()))
    print(f"{PROG}: {len(picks)} pixels of {len(data.ids)} test image(s) of {root} ({', '.join(data.ids)}); "
          f"{len(networks)} network(s)" + (f"; classes absent from these images: "
                                            f"{', '.join(data.class_names[c] for c in missing)}" if missing else ""),
          file=sys.stderr, flush=True)
    panels = []
    for network in networks:
        images = data.images
        if network.stats is not None and network.stats != (data.mean, data.std):
            images = tuple(renormalise(image, (data.mean, data.std), network.stats) for image in images)
        rows = pixel_features(network.backbone, images, picks, args.features)
        panels.append(Panel(network.name, network.title, embed_2d(rows, args.seed), picks.label.copy()))
        print(f"{PROG}: {network.name}: {rows.shape[1]} features per pixel mapped", file=sys.stderr, flush=True)
    table = args.out.with_suffix(".csv")
    plot_panels(panels, data.class_names, args.out)
    write_points(panels, data.class_names, table)
    print(f"{PROG}: wrote {args.out} and {table} ({len(panels)} panels, {len(picks)} points each)", flush=True)
    return 0


def run(argv: list[str] | None = None) -> int:
    """Run ``pscl-embed`` on ``argv``; returns the exit code (see the module docstring)."""
    return run_parsed(PROG, build_parser(), argv, _embed)


def main() -> None:
    """Console entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
