"""benchmarks/gpu_check.py (make gpu-check): its control flow, tested without a GPU (--dry-run)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def _summary(out: Path) -> dict[str, dict]:
    return {p["name"]: p for p in json.loads((out / "summary.json").read_text())["parts"]}


def test_the_dry_run_goes_through_every_part(gpu_check, tmp_path: Path, capsys) -> None:
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path / "out"), "--budget-s", "120"]) == 0
    parts = _summary(tmp_path / "out")
    assert list(parts) == list(gpu_check.PARTS)
    assert {p["status"] for p in parts.values()} == {"dry-run"}
    commands = "\n".join(c for p in parts.values() for c in p["commands"])
    assert "pytest -m gpu" in commands
    assert "pretrain_step.py --device cuda --precision fp32,bf16" in commands
    assert "experiment=paper_pscl_simclr data=nasa_superalloy" in commands and "method=supervised,pscl_simclr" in commands
    assert "pip install --no-deps -e" in commands
    assert "| tests | dry-run |" in (tmp_path / "out" / "summary.md").read_text()
    assert "[paper]" in capsys.readouterr().out


def test_a_failing_part_does_not_stop_the_others(gpu_check, tmp_path: Path) -> None:
    assert gpu_check.main(["--dry-run", "--fail", "install,tests", "--out", str(tmp_path / "out")]) == 1
    parts = _summary(tmp_path / "out")
    assert parts["install"]["status"] == parts["tests"]["status"] == "failed"
    assert "made to fail" in parts["tests"]["tail"]
    assert parts["bench"]["status"] == parts["paper"]["status"] == "dry-run"


def test_each_part_has_its_time_limit_and_the_budget_is_kept(gpu_check, tmp_path: Path) -> None:
    slow = [[sys.executable, "-c", "import time; print('started', flush=True); time.sleep(30)"]]
    result = gpu_check.run_part("bench", slow, limit_s=1.0, dry_run=False, fail=False)
    assert result.status == "timeout" and result.seconds < 10
    assert gpu_check.main(["--dry-run", "--budget-s", "3", "--out", str(tmp_path / "out")]) == 1
    assert {p["status"] for p in _summary(tmp_path / "out").values()} == {"skipped"}


def test_requirements_and_wheels_lists(gpu_check, tmp_path: Path) -> None:
    assert gpu_check.requirements() == []  # this environment has every dependency
    fake = tmp_path / "pyproject.toml"
    fake.write_text('[project]\ndependencies = ["torch>=2", "numpy>=1", "no-such-package-pscl>=1; sys_platform == \'linux\'"]\n')
    assert gpu_check.requirements(fake) == ["no-such-package-pscl>=1"]
    wheels = gpu_check.pinned_wheels()
    names = {w.split("==")[0] for w in wheels}
    assert {"lightning", "torchmetrics", "hydra-core", "setuptools"} <= names
    assert not names & {"torch", "torchvision", "triton"} and not any(n.startswith("nvidia-") for n in names)
