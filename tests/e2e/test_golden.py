"""Golden numbers: tiny deterministic runs give exactly the metrics they gave when the file was written.

A guard for restructures that must change nothing for a user (issue 22: ``train.py`` split into
``pscl.training``): every method family (supervised, SimCLR, PSCL-SimCLR, PSCL-MoCo), the probe,
a pretraining-length study in steps and the paper's periodic test each run for a few steps with
``trainer.deterministic=true`` on one torch thread, and everything ``metrics.json`` holds (less
times and paths), the files each run writes and the SHA-256 of the trained weights are compared
with ``tests/e2e/golden/quick_metrics.json`` to the last digit.

The numbers hold for the environment recorded beside them (library versions, CPU architecture and
the CPU kernels torch picked): elsewhere the test is skipped, as floating-point results may differ
in the last digits. Regenerate only from code known to be right (never in CI, never to make a
failure go away)::

    PSCL_WRITE_GOLDEN=1 .venv/bin/python -m pytest tests/e2e/test_golden.py -q
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import compose_config
from pscl.training.pipeline import train

GOLDEN = Path(__file__).parent / "golden" / "quick_metrics.json"
WRITE = os.environ.get("PSCL_WRITE_GOLDEN") == "1"

COMMON = ["data=folder", "backbone=unet_small", "backbone.widths=[8,16,32,64]", "data.crop_size=32",
          "logger=csv", "data.unlabeled_batch_size=2", "data.batch_size=2", "data.samples_per_epoch=4",
          "trainer.max_epochs=1", "trainer.deterministic=true", "probe.pixels_per_class=256",
          "probe.max_iter=20"]
# the numbers of the first four runs were written when data.normalisation=dataset was the default
DATASET_STATISTICS = "data.normalisation=dataset"
RUNS = {
    # from scratch, with the authors' protocol (a test point after every epoch: test_history)
    "supervised": ["method=supervised", "trainer.max_epochs=2", "eval.protocol=paper",
                   "eval.test_every_n_epochs=1"],
    # image-level pretraining in steps with two snapshots, each fine-tuned and probed, and the probe's floor
    "simclr": ["method=simclr", "method.pretrain_steps=4", "snapshot_steps=[2,4]", "eval.probe=true"],
    "pscl_simclr": ["method=pscl_simclr", "method.pretrain_steps=2"],
    "pscl_moco": ["method=pscl_moco", "method.pretrain_steps=2", "sampling.top_k=4"],
    # today's default normalisation (per_image), through the pretraining cache and the probe
    "simclr_per_image": ["method=simclr", "method.pretrain_steps=2", "eval.probe=true"],
}
RUNS = {name: ([] if name.endswith("per_image") else [DATASET_STATISTICS]) + overrides
        for name, overrides in RUNS.items()}
# what changes from one run to the next whatever the code does: times and where the files went (the
# cache key hashes the data folder's path too: the cache entry's config.json is compared instead)
VOLATILE = frozenset({"wall_time_s", "seconds", "output_dir", "data_root", "source", "key"})
# files whose trained weights are compared (each tensor's bytes, in key order)
WEIGHT_FILES = ("model.pt", "pretrain/pretrained.pt")


def environment() -> dict[str, str]:
    """What the last digits of a float result depend on besides pscl's code."""
    versions = {name: metadata.version(name) for name in ("torch", "numpy", "lightning", "albumentations",
                                                           "torchmetrics", "scipy", "pillow")}
    return {**versions, "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "machine": platform.machine(), "cpu_kernels": torch.backends.cpu.get_cpu_capability()}


def without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_volatile(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [without_volatile(v) for v in value]
    return value


def weights_digest(path: Path) -> str:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob.get("state_dict") or blob.get("backbone")
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def observe(run: Path, tmp_path: Path) -> dict[str, Any]:
    """Everything compared: metrics.json without times and paths, the files written, the weights,
    and what the pretraining cache stored (its config.json is what the cache key hashes)."""
    weights = {name: weights_digest(run / name) for name in WEIGHT_FILES if (run / name).is_file()}
    weights.update({str(p.relative_to(run)): weights_digest(p) for p in sorted(run.glob("pretrain/snapshots/*.pt"))})
    cache = [{"files": files_under(entry),
              "config": json.loads((entry / "config.json").read_text().replace(str(tmp_path), "<tmp>"))}
             for entry in sorted((run.parent / "cache" / "pretrained").glob("*")) if entry.is_dir()]
    return {"metrics": without_volatile(json.loads((run / "metrics.json").read_text())), "files": files_under(run),
            "weights": weights, "cache": cache}


def differences(expected: Any, actual: Any, where: str = "") -> list[str]:
    """``where: expected != actual`` for each leaf that differs (exact, float repr included)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = [f"{where}/{k}: missing" for k in expected if k not in actual]
        found += [f"{where}/{k}: not in the golden file" for k in actual if k not in expected]
        for key in expected:
            if key in actual:
                found += differences(expected[key], actual[key], f"{where}/{key}")
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]")]
    return [] if expected == actual and type(expected) is type(actual) else [f"{where}: {expected!r} != {actual!r}"]


@pytest.fixture
def one_thread_deterministic():
    """One torch thread (a reduction's order, so its last digits, depends on the thread count); the
    process-wide settings that Lightning's ``deterministic=True`` turns on are put back afterwards."""
    threads, algorithms = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
    if workspace is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


@pytest.mark.parametrize("name", list(RUNS))
def test_quick_runs_give_the_golden_numbers(name: str, make_folder, tmp_path: Path,
                                            one_thread_deterministic) -> None:
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {"environment": environment(), "runs": {}}
    if not WRITE:
        if golden["environment"] != environment():
            pytest.skip(f"the golden numbers are for {golden['environment']}, this is {environment()}")
        assert name in golden["runs"], f"no golden numbers for {name}: regenerate them (module docstring)"
    root = make_folder("data", n=6, size=(48, 48))
    run = tmp_path / name / "run"  # a cache of its own beside it: nothing is reused from another run
    train(compose_config([*COMMON, *RUNS[name], f"data.root={root}"], run))
    observed = observe(run, tmp_path)
    if WRITE:
        golden["environment"] = environment()
        golden["runs"][name] = observed
        golden["runs"] = dict(sorted(golden["runs"].items()))
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
        return
    found = differences(golden["runs"][name], observed)
    assert not found, f"{name} differs from {GOLDEN.name}:\n  " + "\n  ".join(found[:40])
