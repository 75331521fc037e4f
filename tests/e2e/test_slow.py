"""Slow end-to-end runs (make test-slow; CI runs them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from pscl.data.synthetic import SyntheticSpec, ensure_dataset
from pscl.reporting.intensity_baseline import evaluate_folder

pytestmark = pytest.mark.slow


# a full pretraining and fine-tuning on 2 cores takes minutes
SLOW_TIMEOUT = 1800


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The default synthetic dataset (generated once for this module) and its intensity-baseline Dice."""
    cache = tmp_path_factory.mktemp("cache")
    root = ensure_dataset(cache, SyntheticSpec(), progress=False)
    return cache, evaluate_folder(root)["foreground_dice"]


def _single_run_metrics(cwd: Path) -> dict:
    (metrics_file,) = (cwd / "logs" / "train" / "runs").glob("*/metrics.json")
    return json.loads(metrics_file.read_text())


def test_one_annotated_image_beats_the_intensity_baseline(tmp_path: Path, synthetic_cache) -> None:
    """The synthetic data needs spatial context.

    A per-pixel grey-level classifier fitted on *all* training masks must score clearly below
    the UNet trained on a single annotated image (experiment=quick, supervised).
    """
    cache, baseline = synthetic_cache
    proc = run_cli(["experiment=quick", "callbacks.progress_bar.refresh_rate=0"], tmp_path, cache,
                   timeout=SLOW_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    unet = _single_run_metrics(tmp_path)["test"]["dice"]
    assert unet > baseline + 0.15, (unet, baseline)


def test_make_run_job_end_to_end(tmp_path: Path, synthetic_cache) -> None:
    """`make run`: PSCL-SimCLR pretraining, 1-shot fine-tuning and test on the synthetic data."""
    cache, baseline = synthetic_cache
    proc = run_cli(["experiment=quick", "method=pscl_simclr", "callbacks.progress_bar.refresh_rate=0"], tmp_path,
                   cache, timeout=SLOW_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = _single_run_metrics(tmp_path)
    assert results["method"] == "pscl_simclr" and results["transferred_keys"] > 0
    assert results["test"]["dice"] > baseline, (results["test"], baseline)
    assert "test Dice" in proc.stdout and "TensorBoard" in proc.stdout


def test_ddp_on_two_cpu_processes(make_folder, tmp_path: Path) -> None:
    root = make_folder(n=8)
    proc = run_cli(["data=folder", f"data.root={root}", "data.crop_size=32", "trainer=ddp_sim", "debug=limit",
                    "backbone=unet_small", "logger=csv", "callbacks.progress_bar.refresh_rate=0"], tmp_path,
                   timeout=SLOW_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics_file,) = (tmp_path / "logs" / "train" / "runs").glob("*/metrics.json")
    results = json.loads(metrics_file.read_text())
    assert 0.0 <= results["test"]["acc"] <= 1.0
    # tested once on one device: one prediction per test image, no padded repeats
    predictions = list(Path(results["output_dir"], "predictions").glob("*.png"))
    assert len(predictions) == 2


@pytest.mark.parametrize(("encoder", "depth"), [("tu-test_efficientnet", 5), ("resnet18", 3)])
def test_ddp_with_an_smp_backbone_on_two_cpu_processes(encoder: str, depth: int, make_folder, tmp_path: Path) -> None:
    """backbone=smp under DDP: PSCL pretraining then fine-tuning on two processes (issue 23); at
    depth 3 the encoder's unused deeper stages are frozen, or DDP would stop."""
    root = make_folder(n=12)
    channels = "[" + ",".join(str(c) for c in (64, 32, 16, 16, 8)[-depth:]) + "]"
    proc = run_cli(["data=folder", f"data.root={root}", "data.crop_size=64", "trainer=ddp_sim", "debug=limit",
                    "method=pscl_simclr", "method.pretrain_epochs=2", "data.unlabeled_batch_size=2",
                    "backbone=smp", f"backbone.encoder_name={encoder}", f"backbone.encoder_depth={depth}",
                    f"backbone.decoder_channels={channels}", "logger=csv",
                    "callbacks.progress_bar.refresh_rate=0"], tmp_path, timeout=SLOW_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics_file,) = (tmp_path / "logs" / "train" / "runs").glob("*/metrics.json")
    results = json.loads(metrics_file.read_text())
    assert results["transferred_keys"] > 0 and 0.0 <= results["test"]["dice"] <= 1.0


@pytest.mark.parametrize("method", ["pscl_simclr", "densecl"])
def test_ddp_pretraining_on_two_cpu_processes(method: str, make_folder, tmp_path: Path) -> None:
    """Several pretraining steps under DDP: every trainable parameter gets a gradient on every rank."""
    root = make_folder(n=12)
    proc = run_cli(["data=folder", f"data.root={root}", "data.crop_size=32", "trainer=ddp_sim", "debug=limit",
                    f"method={method}", "method.pretrain_epochs=2", "data.unlabeled_batch_size=2",
                    "backbone=unet_small", "logger=csv", "callbacks.progress_bar.refresh_rate=0"], tmp_path,
                   timeout=SLOW_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics_file,) = (tmp_path / "logs" / "train" / "runs").glob("*/metrics.json")
    assert json.loads(metrics_file.read_text())["transferred_keys"] > 0
