"""``pscl-predict``: segment and measure new micrographs with a trained run.

    pscl-predict <run folder | model.pt | checkpoint> <image | folder | glob> ... --out <folder>

Exit codes: 0 every image done; 2 a user error before any image was processed (bad model file,
no images, an output folder that already holds files); 3 some images failed (listed in
``errors.csv``; the others were processed); 1 a crash (a bug: please report it).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

EXIT_OK, EXIT_CRASH, EXIT_USER_ERROR, EXIT_SOME_FAILED = 0, 1, 2, 3


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
    parser.add_argument("--out", type=Path, required=True, help="output folder (refused if it already holds files)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing same names")
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


def _check_arguments(args: argparse.Namespace) -> None:
    from pscl.errors import ConfigError

    if args.crop_bottom < 0:
        raise ConfigError("--crop-bottom", f"must be >= 0 pixels, got {args.crop_bottom}")
    if args.pixel_size_um is not None and not args.pixel_size_um > 0:
        raise ConfigError("--pixel-size-um", f"must be a positive size in µm, got {args.pixel_size_um}")
    if args.min_particle_px < 0:
        raise ConfigError("--min-particle-px", f"must be >= 0, got {args.min_particle_px}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device", f"{args.device} was asked for but PyTorch sees no CUDA GPU", "use --device cpu")


def run(argv: list[str] | None = None) -> int:
    """Run ``pscl-predict`` on ``argv``; returns the exit code (see the module docstring)."""
    from pscl.errors import PsclError
    from pscl.predict.inputs import collect_images, find_meta, prepare_output, read_meta
    from pscl.predict.model import load_trained_model
    from pscl.predict.runner import PredictSettings, predict_images
    from pscl.predict.tiling import TileSettings

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _check_arguments(args)
        tiles = TileSettings(args.tile, args.overlap, args.batch_size, args.blend, args.tta)
        model = load_trained_model(args.model)
        images = collect_images(args.inputs)
        meta_file = find_meta(images, args.meta)
        meta = read_meta(meta_file) if meta_file is not None else {}
        prepare_output(args.out, args.overwrite)
    except PsclError as exc:
        print(f"pscl-predict: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
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


def main() -> None:
    """Console entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
