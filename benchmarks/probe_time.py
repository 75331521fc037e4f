"""Benchmark: seconds per dense linear probe (pscl.probe) in the quick configuration.

Probes a randomly initialised ``unet_small`` on the embedded synthetic data (1 annotated image,
the 39 test images at 376 x 376) with the default probe settings, for both feature choices,
``--repeats`` times each, and prints the median. The target is <= 60 s on 2 CPU cores.

Usage: ``python benchmarks/probe_time.py [--repeats 3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch
    from hydra import compose, initialize_config_module

    from pscl.probe import ProbeSettings, probe_backbone
    from pscl.training.build import instantiate

    with initialize_config_module(config_module="pscl.conf", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=quick", "paths.output_dir=/tmp/pscl-probe-bench"])
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    torch.manual_seed(0)
    backbone = instantiate(cfg.backbone, in_channels=datamodule.in_channels, num_classes=datamodule.num_classes)
    results = {"threads": torch.get_num_threads(), "test_images": len(datamodule.index.test_ids)}
    for features in ("multiscale", "full_resolution"):
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            values = probe_backbone(backbone, datamodule, ProbeSettings(features=features))
            times.append(time.perf_counter() - started)
        results[features] = {"median_s": round(statistics.median(times), 2), "dice": round(values["dice"], 4)}
        print(f"probe ({features}): median {results[features]['median_s']} s over {args.repeats} "
              f"(random-init Dice {values['dice']:.3f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
