"""pscl-predict on a run with an smp backbone: its own test predictions, and windows the network takes whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from conftest import assert_predict_gives_the_runs_test_predictions, compose_config, draw_sample, write_image
from pscl.models.model_file import load_trained_model
from pscl.predict.cli import EXIT_OK, run
from pscl.predict.tiling import TileSettings, segment, tile_plan, window_multiple

SIZE = (80, 100)  # neither side a multiple of 32: the network pads whole test images inside


@pytest.fixture(scope="module")
def smp_run(tmp_path_factory) -> tuple[Path, Path, dict]:
    """A one-epoch supervised run with backbone=smp (resnet18, narrow decoder) on a tiny data folder."""
    from pscl.training.pipeline import train

    base = tmp_path_factory.mktemp("smp_run")
    root = base / "data"
    rng = np.random.default_rng(0)
    (root / "masks").mkdir(parents=True)
    for i in range(8):
        image, mask = draw_sample(rng, *SIZE, 3)
        write_image(root / "images" / f"img{i:02d}.png", image)
        Image.fromarray(mask).save(root / "masks" / f"img{i:02d}.png")
    (root / "classes.txt").write_text("matrix\nphase1\nphase2\n")
    overrides = ["data=folder", f"data.root={root}", "data.crop_size=64", "data.batch_size=2",
                 "data.samples_per_epoch=4", "backbone=smp", "backbone.decoder_channels=[64,32,16,16,8]",
                 "logger=csv", "trainer.max_epochs=1", "data.num_labeled=2", "method=supervised"]
    run_dir = base / "run"
    cfg = compose_config(overrides, run_dir)
    results = train(cfg)
    (run_dir / ".hydra").mkdir()  # what pscl-train writes (train() alone does not): read with a checkpoint
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run_dir, root, results


def test_predict_on_an_smp_runs_test_images_gives_its_test_predictions_exactly(smp_run, tmp_path: Path) -> None:
    run_dir, root, results = smp_run
    assert load_trained_model(run_dir).backbone_config["_target_"] == "pscl.models.smp_backbone.SmpBackbone"
    assert_predict_gives_the_runs_test_predictions(run_dir, root, results, tmp_path)


def test_predict_on_an_smp_run_with_sliding_windows(smp_run, tmp_path: Path) -> None:
    run_dir, root, _ = smp_run
    out = tmp_path / "out"
    assert run([str(run_dir), str(root / "images" / "img00.png"), "--out", str(out), "--tile", "72",
                "--overlap", "16", "--probabilities"]) == EXIT_OK
    record = json.loads((out / "predict.json").read_text())
    assert record["settings"]["window_multiple"] == 32
    mask = np.asarray(Image.open(out / "masks" / "img00.png"))
    assert mask.shape == SIZE and mask.max() < 3
    probabilities = np.load(out / "probabilities" / "img00.npy").astype(np.float32)
    assert np.allclose(probabilities.sum(0), 1, atol=1e-2)


def test_windows_are_multiples_of_the_smp_stride(smp_run) -> None:
    """Every window the smp network sees is a multiple of its stride: it pads none of them."""
    backbone = load_trained_model(smp_run[0]).backbone
    assert window_multiple(backbone) == 32 and window_multiple(torch.nn.Identity()) == 8
    shapes = []
    hook = backbone.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape[-2:])))
    try:
        classes, probs = segment(backbone, torch.randn(1, 150, 203), TileSettings(tile=72, overlap=16),
                                 keep_probabilities=True)
    finally:
        hook.remove()
    assert classes.shape == (150, 203) and probs.shape == (3, 150, 203)
    assert shapes and all(h % 32 == 0 and w % 32 == 0 and max(h, w) <= 72 for h, w in shapes)
    assert tile_plan(240, 72, 16, 32)[0] == 64 and tile_plan(240, 72, 16)[0] == 72  # the UNet: up to --tile
