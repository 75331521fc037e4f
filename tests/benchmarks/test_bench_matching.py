"""benchmarks/matching.py and the step profile of benchmarks/pretrain_step.py, on the quick configuration."""

from __future__ import annotations

import pytest
import torch

from conftest import benchmark_modules


@pytest.fixture(scope="module")
def benchmarks():
    with benchmark_modules("matching", "pretrain_step") as modules:
        yield modules


def test_recorded_matching_inputs_are_the_quick_moco_scales(benchmarks) -> None:
    matching, _ = benchmarks
    inputs = matching.record_matching_inputs("quick", train_steps=0)
    # PSCL-MoCo, top_k 30, 4 classes: 120 / 240 / 480 templates at 1/4, 1/2, 1/1 of a 128 px crop
    assert [templates.shape for templates, _ in inputs] == [(120, 64), (240, 64), (480, 64)]
    for (templates, candidates), grid in zip(inputs, (32, 64, 128)):
        assert len(candidates) == 8  # the unlabelled images
        assert all(0.5 * grid**2 <= c.shape[0] <= grid**2 and c.shape[1] == 64 for c in candidates)
        assert all(torch.isfinite(c).all() for c in candidates)


def test_matching_benchmark_prints_one_row_per_scale(benchmarks, capsys) -> None:
    matching, _ = benchmarks
    assert matching.main(["--config", "quick", "--list-sizes", "2,8", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "images" in line]
    assert [row.split(" x ")[0] for row in rows] == ["| 120", "| 240", "| 480"]
    assert all(len(row.strip("|").split("|")) == 3 for row in rows)  # the scale and two list sizes


def test_step_profile_names_the_parts(benchmarks, monkeypatch, capsys) -> None:
    _, pretrain_step = benchmarks
    monkeypatch.setenv("PSCL_BENCH_PROFILE", "1")
    row = pretrain_step.run_one("quick", "moco", "pscl", steps=1)
    assert row["seconds_per_step"] > 0
    lines = capsys.readouterr().err.splitlines()
    parts = {line.rsplit(None, 2)[0].strip(): float(line.rsplit(None, 2)[1]) for line in lines if line.endswith(" ms")}
    for part in ("similarity_guided_sample_batch", "soft_contrastive_loss", "prototype_queue_targets",
                 "dense heads on whole maps", "backward"):
        assert parts[part] > 0, part
    # the wrappers are removed again: the next step runs the plain functions
    import pscl.contrastive.patches as patches

    assert patches.similarity_guided_sample_batch.__module__ == "pscl.contrastive.sampling"
    assert not hasattr(patches.similarity_guided_sample_batch, "__wrapped__")
