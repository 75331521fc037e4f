"""Benchmark: pscl-predict on a large 16-bit micrograph with the paper UNet, on the CPU.

Writes a 2048 x 2048 16-bit TIFF (``--size``), saves a paper-width UNet (32/64/128/256,
channels-last, random weights: speed does not depend on them) as a ``model.pt``, then, each in
its own process so that peak memory (``ru_maxrss``) is that part's alone:

* ``whole``: one forward pass of the whole image (the reference cost);
* ``windows``: :func:`pscl.predict.tiling.segment` with the default tiles (and each ``--tile``);
* ``command``: the full ``pscl-predict`` on the file (read, normalise, segment, write masks,
  overlays and the tables).

Targets (issue 12): sliding windows cost at most 1.3x the whole-image pass; peak RSS of the
command under 2 GiB. Usage: ``python benchmarks/predict.py [--size 2048] [--repeats 3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAPER_BACKBONE = {"_target_": "pscl.models.unet.UNet", "widths": [32, 64, 128, 256], "channels_last": True,
                  "checkpoint_blocks": "none"}


def _prepare(folder: Path, size: int) -> tuple[Path, Path]:
    """A 16-bit micrograph-like TIFF and a paper-UNet model.pt in ``folder``."""
    import numpy as np
    import tifffile
    import torch

    from pscl.models.unet import UNet
    from pscl.models.model_file import save_model

    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    # bright precipitates about 10-40 px across on a darker matrix, a little noise: what the
    # network segments into particles that the tables then measure
    field = gaussian_filter(rng.normal(size=(size, size)), 6.0)
    image = np.where(field > 0.02, 0.75, 0.4) + rng.normal(0, 0.01, (size, size))
    image_path = folder / "micrograph.tif"
    tifffile.imwrite(image_path, (np.clip(image, 0, 1) * 65535).astype(np.uint16))
    torch.manual_seed(0)
    backbone = UNet(1, 3, widths=PAPER_BACKBONE["widths"], channels_last=True).eval()
    model_path = save_model(folder / "run" / "model.pt", backbone, PAPER_BACKBONE, ("matrix", "a", "b"),
                            (0.5,), (0.15,), "supervised", {})
    return image_path, model_path


def _part(name: str, image_path: Path, model_path: Path, repeats: int, tile: int | None) -> dict:
    """One timed part, run in this process (called in a child by :func:`main`)."""
    import torch

    from pscl.models.model_file import load_trained_model
    from pscl.predict.runner import prepare_input
    from pscl.predict.tiling import TileSettings, segment, window_count

    model = load_trained_model(model_path)
    _, tensor = prepare_input(image_path, model, 0)
    settings = TileSettings() if tile is None else TileSettings(tile=tile)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        if name == "whole":
            with torch.inference_mode():
                model.backbone(tensor[None]).argmax(1)
        elif name == "windows":
            segment(model.backbone, tensor, settings)
        else:
            from pscl.predict.cli import run

            out = Path(tempfile.mkdtemp()) / "out"
            code = run([str(model_path), str(image_path), "--out", str(out), "--tile", str(settings.tile)])
            assert code == 0, code
            particles = sum(1 for _ in open(out / "particles.csv")) - 1
        times.append(time.perf_counter() - started)
    height, width = tensor.shape[-2:]
    extra = {"particles": particles} if name == "command" else {}
    return {**extra, "median_s": round(statistics.median(times), 2), "times_s": [round(t, 2) for t in times],
            "windows": window_count(height, width, settings) if name != "whole" else 1,
            "tile": settings.tile if name != "whole" else None,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="image side in px (default 2048)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tile", type=int, action="append", default=None,
                        help="tile sizes to time besides the default (repeatable)")
    parser.add_argument("--parts", default="whole,windows,command")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # name, image, model, tile
        name, image, model, tile = args.child
        result = _part(name, Path(image), Path(model), args.repeats, None if tile == "default" else int(tile))
        print(json.dumps(result))
        return 0

    import torch

    folder = Path(tempfile.mkdtemp(prefix="pscl-predict-bench-"))
    image_path, model_path = _prepare(folder, args.size)
    results: dict = {"size": args.size, "threads": torch.get_num_threads(), "torch": torch.__version__}
    jobs = []
    for name in args.parts.split(","):
        tiles = ["default"] if name == "whole" else ["default", *map(str, args.tile or [])]
        jobs += [(name, tile) for tile in tiles]
    for name, tile in jobs:
        done = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--child", name,
                               str(image_path), str(model_path), tile], capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        key = name if tile == "default" else f"{name}_tile{tile}"
        results[key] = json.loads(done.stdout.strip().splitlines()[-1])
        ratio = ""
        if name != "whole" and "whole" in results:
            results[key]["vs_whole"] = round(results[key]["median_s"] / results["whole"]["median_s"], 2)
            ratio = f" = {results[key]['vs_whole']}x the whole-image pass"
        measured = f", {results[key]['particles']} particles measured" if "particles" in results[key] else ""
        print(f"{key}: median {results[key]['median_s']} s ({results[key]['windows']} window(s){measured}){ratio}; "
              f"peak RSS {results[key]['peak_rss_mib']} MiB", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
