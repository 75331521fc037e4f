"""Benchmark: the fine-tuning loop's cost per epoch in the paper's 1000 x 1-step schedule.

The paper fine-tunes on one annotated image for 1000 epochs of a single step. Every epoch
carries Lightning's loop overhead (dataloader iterator, callbacks, logging, checkpoint checks),
which on a GPU could outweigh a step. This runs pscl's real fine-tuning
(``pscl.training.finetuning.finetune``, with the configured callbacks and loggers) on a tiny
network and a 32 px crop, so that the step itself costs almost nothing, in two shapes with the
same number of optimiser steps:

* ``epochs``: ``--steps`` epochs of 1 step (the paper's shape, ``samples_per_epoch=1``);
* ``steps``: 1 epoch of ``--steps`` steps (``samples_per_epoch=--steps``).

The difference divided by ``--steps`` is the per-epoch overhead. Usage:
``python benchmarks/finetune_loop.py [--steps 300] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def _tiny_folder(root: Path) -> Path:
    """Four 64 px micrograph-like images with masks, 3 classes, a fixed split."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = [f"m{i}" for i in range(4)]
    for sample_id in ids:
        mask = (rng.random((64, 64)) > 0.6).astype(np.uint8) + (rng.random((64, 64)) > 0.9)
        image = (0.4 + 0.2 * mask + rng.normal(0, 0.03, mask.shape)).clip(0, 1)
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / f"{sample_id}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{sample_id}.png")
    (root / "classes.txt").write_text("matrix\na\nb\n")
    (root / "splits.json").write_text(json.dumps({"train": ids[:3], "test": ids[3:]}))
    return root


def _time_finetune(root: Path, out: Path, epochs: int, samples_per_epoch: int) -> float:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from pscl.training.build import instantiate
    from pscl.training.finetuning import finetune

    GlobalHydra.instance().clear()
    overrides = ["experiment=paper_pscl_simclr", "method=supervised", "trainer=cpu", "data=folder",
                 f"data.root={root}", "data.crop_size=32", "data.num_workers=0", "backbone=unet_small",
                 "backbone.widths=[4,8,8,16]", f"trainer.max_epochs={epochs}",
                 f"data.samples_per_epoch={samples_per_epoch}", f"paths.output_dir={out}",
                 f"paths.cache_dir={out / 'cache'}", "eval=default"]
    with initialize_config_module(config_module="pscl.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    started = time.perf_counter()
    finetune(cfg, datamodule, None)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import logging

    logging.disable(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="pscl-finetune-loop-"))
    root = _tiny_folder(work / "data")
    _time_finetune(root, work / "warmup", 5, 1)  # imports, first allocations
    as_epochs = _time_finetune(root, work / "epochs", args.steps, 1)
    as_steps = _time_finetune(root, work / "steps", 1, args.steps)
    overhead_ms = (as_epochs - as_steps) / args.steps * 1000
    results = {"steps": args.steps, "epochs_of_1_step_s": round(as_epochs, 2), "one_epoch_s": round(as_steps, 2),
               "per_epoch_overhead_ms": round(overhead_ms, 1),
               "paper_schedule_overhead_s": round(overhead_ms * 1000 / 1000, 1)}
    print(f"{args.steps} epochs of 1 step: {as_epochs:.2f} s; 1 epoch of {args.steps} steps: {as_steps:.2f} s; "
          f"per-epoch overhead {overhead_ms:.1f} ms (x 1000 epochs = {overhead_ms:.0f} s per paper fine-tuning)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
