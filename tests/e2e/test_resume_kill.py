"""kill -9 during a stage, then ``pscl-train resume=<folder>``: the metrics of an uninterrupted run.

Real processes, killed with SIGKILL right after a checkpoint is written (make test-slow; CI runs
them). tests/runs/test_resume.py covers the same in-process, fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_SYNTH, comparable, run_cli
from pscl.runs import read_state

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, cache: Path) -> dict[str, str]:
    env = {**os.environ, "PSCL_LOG_DIR": str(tmp_path / "logs"), "PSCL_CACHE_DIR": str(cache)}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def kill_when(args: list[str], watched: Path, tmp_path: Path, cache: Path, timeout: float = 600) -> None:
    """Start ``pscl-train args`` and SIGKILL it as soon as ``watched`` exists."""
    process = subprocess.Popen([sys.executable, "-m", "pscl.train", *args], cwd=tmp_path, env=_env(tmp_path, cache),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not watched.exists():
            if process.poll() is not None:
                pytest.fail(f"the run ended (exit {process.returncode}) before {watched} appeared")
            if time.monotonic() > deadline:
                pytest.fail(f"{watched} did not appear in {timeout} s")
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize(("method", "stage"), [("pscl_simclr", "pretrain"), ("pscl_moco", "finetune"),
                                               ("simclr", "pretrain")])
def test_kill_and_resume_gives_the_uninterrupted_metrics(tmp_path: Path, method: str, stage: str) -> None:
    args = [*TINY_SYNTH, f"method={method}", "method.pretrain_epochs=6", "trainer.max_epochs=6"]
    whole = tmp_path / "whole"
    proc = run_cli([*args, f"hydra.run.dir={whole}"], tmp_path, cache=tmp_path / "cache_whole")
    assert proc.returncode == 0, proc.stderr
    expected = json.loads((whole / "metrics.json").read_text())

    folder = tmp_path / "killed"
    watched = folder / ("pretrain/checkpoints/last.ckpt" if stage == "pretrain" else "checkpoints/last.ckpt")
    kill_when([*args, f"hydra.run.dir={folder}"], watched, tmp_path, tmp_path / "cache_killed")
    assert read_state(folder).state == "unfinished" and not (folder / "metrics.json").exists()

    resumed = run_cli([f"resume={folder}"], tmp_path, cache=tmp_path / "cache_killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    assert comparable(json.loads((folder / "metrics.json").read_text())) == comparable(expected)
    assert read_state(folder).state == "finished"


def test_a_killed_multirun_resumes_its_unfinished_jobs(tmp_path: Path) -> None:
    args = ["-m", *TINY_SYNTH, "method=simclr", "data.label_seed=0,1", "hydra.sweep.dir=" + str(tmp_path / "sweep")]
    sweep = tmp_path / "sweep"
    kill_when(args, sweep / "1" / "checkpoints" / "last.ckpt", tmp_path, tmp_path / "cache")
    first = (sweep / "0" / "metrics.json").read_text()
    assert read_state(sweep / "0").state == "finished" and read_state(sweep / "1").state == "unfinished"

    report = run_cli_report(sweep, tmp_path)
    assert "unfinished: simclr, labels 1, round 1" in report

    resumed = run_cli([f"resume={sweep}"], tmp_path, cache=tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr
    assert (sweep / "0" / "metrics.json").read_text() == first  # a finished job is not redone
    assert read_state(sweep / "1").state == "finished"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]


def run_cli_report(folder: Path, tmp_path: Path) -> str:
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "pscl.reporting.report", str(folder), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return (out / "results.md").read_text()
