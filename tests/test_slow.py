"""Slow end-to-end runs (make test-slow; CI runs them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pscl.data.synthetic import SyntheticSpec, ensure_dataset
from pscl.intensity_baseline import evaluate_folder

pytestmark = pytest.mark.slow


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PSCL_LOG_DIR": str(cwd / "logs"), "PSCL_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "pscl.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=1800)


def test_make_run_job_beats_the_intensity_baseline(tmp_path: Path) -> None:
    """The main job (experiment=quick, 1 annotated image) on the default synthetic data needs context.

    A per-pixel grey-level classifier fitted on *all* training masks must score clearly below
    the UNet trained on a single annotated image.
    """
    proc = run_cli(["experiment=quick", "callbacks.progress_bar.refresh_rate=0"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics_file,) = (tmp_path / "logs" / "train" / "runs").glob("*/metrics.json")
    unet = json.loads(metrics_file.read_text())["test"]["dice"]
    root = ensure_dataset(tmp_path / "cache", SyntheticSpec(), progress=False)
    baseline = evaluate_folder(root)["foreground_dice"]
    assert unet > baseline + 0.15, (unet, baseline)


def test_ddp_on_two_cpu_processes(make_folder, tmp_path: Path) -> None:
    root = make_folder(n=8)
    proc = run_cli(["data=folder", f"data.root={root}", "data.crop_size=32", "trainer=ddp_sim", "debug=limit",
                    "backbone=unet_small", "logger=csv", "callbacks.progress_bar.refresh_rate=0"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics_file,) = (tmp_path / "logs" / "train" / "runs").glob("*/metrics.json")
    results = json.loads(metrics_file.read_text())
    assert 0.0 <= results["test"]["acc"] <= 1.0
    # tested once on one device: one prediction per test image, no padded repeats
    predictions = list(Path(results["output_dir"], "predictions").glob("*.png"))
    assert len(predictions) == 2
