"""``pscl-predict``: segment and measure new micrographs with a trained run.

    pscl-predict <run folder | model.pt | checkpoint> <image | folder | glob> ... --out <folder>

Exit codes: 0 every image done; 2 a user error before anything was written (a bad option,
model file, image list or output folder); 3 some images failed (listed in ``errors.csv``; the
others were processed); 1 a crash (a bug: please report it); 130 interrupted. Everything that
can be checked is checked before ``--out`` is created, and ``--out`` is never an input, a data
folder, or a folder whose files pscl-predict did not write (:func:`pscl.predict.inputs.check_output`).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from pscl.errors import EXIT_CRASH, EXIT_OK, EXIT_USER_ERROR, ConfigError, run_parsed
from pscl.errors import EXIT_PARTIAL as EXIT_SOME_FAILED

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["EXIT_CRASH", "EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USER_ERROR", "build_parser", "main", "run"]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``pscl-predict``."""
    from pscl.predict.tiling import TileSettings

    tiles = TileSettings()
    parser = argparse.ArgumentParser(
        prog="pscl-predict", description="Segment micrographs with a trained pscl run and measure phase fractions "
        "and particles. Writes masks/, overlays/, phases.csv, particles.csv, summary.csv, summary.png, "
        "errors.csv and predict.json into --out.")
    parser.add_argument("model", type=Path, help="a pscl run folder, its model.pt, or a checkpoint inside it")
    parser.add_argument("inputs", nargs="+", help="image files, folders of images, or quoted globs ('dir/**/*.tif')")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder (refused if it already holds files, is a data folder or holds an input)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out, replacing only files an earlier pscl-predict recorded "
                             "in its predict.json")
    parser.add_argument("--tile", type=int, default=tiles.tile,
                        help=f"largest window side in px; larger images are cut into windows (default {tiles.tile})")
    parser.add_argument("--overlap", type=int, default=tiles.overlap,
                        help=f"least overlap of neighbouring windows in px (default {tiles.overlap})")
    parser.add_argument("--batch-size", type=int, default=tiles.batch_size,
                        help=f"windows per forward pass (default {tiles.batch_size})")
    parser.add_argument("--blend", choices=("gaussian", "constant"), default="gaussian",
                        help="weights of overlapping windows (default gaussian)")
    parser.add_argument("--tta", action="store_true", help="average the 8 flips/rotations (8x slower)")
    parser.add_argument("--crop-bottom", type=int, default=0, metavar="PX",
                        help="remove an information band of PX rows at the bottom of every image")
    parser.add_argument("--pixel-size-um", type=float, default=None, metavar="UM",
                        help="pixel size in µm for images that meta.csv gives none (default: unknown, pixels)")
    parser.add_argument("--meta", type=Path, default=None,
                        help="meta.csv with id,group[,pixel_size_um] (default: one beside the images or above)")
    parser.add_argument("--min-particle-px", type=int, default=4,
                        help="particles smaller than this many px are not counted (default 4)")
    parser.add_argument("--probabilities", action="store_true", help="also save probabilities/<id>.npy (float16)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    return parser


def _require(ok: bool, option: str, problem: str, example: str) -> None:
    """Raise :class:`ConfigError` naming ``option`` with an example fix unless ``ok``."""
    if not ok:
        raise ConfigError(option, problem, f"e.g. {option} {example}")


def _check_arguments(args: argparse.Namespace) -> None:
    """Every option checked before anything is loaded or written, each refusal naming the option."""
    from pscl.predict.tiling import MIN_TILE

    _require(args.crop_bottom >= 0, "--crop-bottom", f"must be >= 0 pixels, got {args.crop_bottom}", "64")
    size = args.pixel_size_um
    _require(size is None or (math.isfinite(size) and size > 0), "--pixel-size-um",
             f"must be a positive, finite size in µm, got {size}", "0.0125 (or leave it out: lengths in px)")
    _require(args.min_particle_px >= 0, "--min-particle-px", f"must be >= 0 pixels, got {args.min_particle_px}", "4")
    _require(args.tile >= MIN_TILE, "--tile", f"must be >= {MIN_TILE} pixels, got {args.tile}", "512")
    _require(0 <= args.overlap < args.tile // 2, "--overlap",
             f"must be >= 0 and less than half of --tile ({args.tile // 2} px), got {args.overlap}",
             str(max(0, min(64, args.tile // 4))))
    _require(args.batch_size >= 1, "--batch-size", f"must be >= 1 window, got {args.batch_size}", "2")
    _check_device(args.device)
    from pscl.data.io import max_image_pixels

    max_image_pixels()  # a bad PSCL_MAX_IMAGE_PIXELS is one message before any image is read


def _check_device(name: str) -> None:
    """``cpu``, or ``cuda``/``cuda:N`` when PyTorch sees that GPU."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    _require(device is not None and device.type in ("cpu", "cuda"), "--device",
             f"{name!r} is not a device pscl-predict runs on (cpu, cuda or cuda:N)", "cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        _require(count > 0, "--device", f"{name} was asked for but PyTorch sees no CUDA GPU", "cpu")
        _require(device.index is None or device.index < count, "--device",
                 f"{name} was asked for but PyTorch sees {count} CUDA GPU(s)", "cuda:0")


def _predict(args: argparse.Namespace) -> int:
    """The command's work: check everything, create ``--out``, run the batch; returns the exit code."""
    from pscl.predict.inputs import collect_images, find_meta, prepare_output, read_meta
    from pscl.models.model_file import load_trained_model
    from pscl.predict.runner import PredictSettings, planned_outputs, predict_images
    from pscl.predict.tiling import TileSettings

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _check_arguments(args)
    tiles = TileSettings(args.tile, args.overlap, args.batch_size, args.blend, args.tta)
    model = load_trained_model(args.model)
    images = collect_images(args.inputs)
    meta_file = find_meta(images, args.meta)
    meta = read_meta(meta_file) if meta_file is not None else {}
    prepare_output(args.out, args.overwrite, images, planned_outputs(images, args.probabilities))
    settings = PredictSettings(tiles, args.crop_bottom, args.pixel_size_um, args.min_particle_px,
                               args.probabilities, args.device)
    print(f"pscl-predict: {model.method} model ({', '.join(model.class_names)}) from {model.source}; "
          f"{len(images)} image(s)" + (f"; groups and pixel sizes from {meta_file}" if meta_file else ""),
          file=sys.stderr, flush=True)
    outcome = predict_images(model, images, args.out, settings, meta)
    print(f"pscl-predict: {len(outcome.done)} image(s) segmented into {args.out}"
          f" (masks/, overlays/, phases.csv, particles.csv, summary.csv, summary.png)", flush=True)
    if outcome.failed:
        print(f"pscl-predict: {len(outcome.failed)} image(s) failed; see {args.out / 'errors.csv'}:", file=sys.stderr)
        for image, error in outcome.failed[:10]:
            print(f"  {error}" if error.startswith(image) else f"  {image}: {error}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def run(argv: list[str] | None = None) -> int:
    """Run ``pscl-predict`` on ``argv``; returns the exit code (see the module docstring)."""
    return run_parsed("pscl-predict", build_parser(), argv, _predict)


def main() -> None:
    """Console entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
