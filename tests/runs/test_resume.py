"""Resume: a run interrupted mid-stage and resumed ends with the metrics of an uninterrupted run.

In-process: the interruption is an exception raised at the start of an epoch (after a
checkpoint), and ``resume`` continues the same folder. tests/e2e/test_slow.py kills real processes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_SYNTH, Interrupted, comparable, compose_config, interrupt_at_epoch
from pscl.runs import read_state
from pscl.training.pipeline import train


def _module(stage: str, method: str) -> type:
    import hydra

    if stage == "finetune":
        from pscl.modules.segmentation import SegmentationModule

        return SegmentationModule
    cfg = compose_config([f"method={method}"], Path("/tmp/unused"))
    return hydra.utils.get_class(cfg.method.pretrain._target_)


@pytest.mark.parametrize(("method", "stage", "extra"), [
    ("pscl_simclr", "pretrain", []),
    ("simclr", "finetune", []),
    ("pscl_moco", "pretrain", ["snapshot_epochs=[1,2]", "eval.probe=true"]),
    ("simclr", "pretrain", ["method.pretrain_steps=6", "snapshot_steps=[2,5,6]", "reuse_pretraining=false"]),
])
def test_an_interrupted_run_resumes_to_the_same_metrics(tmp_path: Path, monkeypatch, method: str, stage: str,
                                                        extra: list[str]) -> None:
    overrides = [*TINY_SYNTH, f"method={method}", *extra]
    expected = train(compose_config(overrides, tmp_path / "whole" / "run"))

    folder = tmp_path / "interrupted" / "run"
    with monkeypatch.context() as patch:
        interrupt_at_epoch(_module(stage, method), 2, patch)
        with pytest.raises(Interrupted):
            train(compose_config(overrides, folder))
    assert read_state(folder).state == "failed"
    checkpoints = folder / ("pretrain/checkpoints" if stage == "pretrain" else "checkpoints")
    assert (checkpoints / "last.ckpt").is_file()
    resumed = train(compose_config([*overrides, f"resume={folder}"], folder))
    assert comparable(resumed) == comparable(expected)
    # the interrupted part's CSV log is kept, not overwritten by the resumed part's
    logs = (folder / "pretrain" if stage == "pretrain" else folder) / "csv"
    assert (logs / "metrics.before_resume_1.csv").is_file() and (logs / "metrics.csv").is_file()
    assert comparable(json.loads((folder / "metrics.json").read_text())) == comparable(expected)
    assert read_state(folder).state == "finished"


def test_resuming_a_finished_run_does_nothing(tmp_path: Path, monkeypatch) -> None:
    overrides = [*TINY_SYNTH, "method=supervised", "trainer.max_epochs=1"]
    folder = tmp_path / "run"
    first = train(compose_config(overrides, folder))
    before = (folder / "metrics.json").read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr("pscl.training.pipeline._train", refuse)
    again = train(compose_config([*overrides, f"resume={folder}"], folder))
    assert again["test"] == first["test"] and (folder / "metrics.json").read_text() == before


def test_resume_argv_rebuilds_the_command(tmp_path: Path) -> None:
    from pscl.errors import DataError
    from pscl.runs.resume import resume_argv

    assert resume_argv(["method=simclr"]) is None
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(
        f"- method=simclr\n- data.label_seed=2\n- resume={run}\n- hydra.run.dir={run}\n")
    assert resume_argv([f"resume={run}"]) == ["method=simclr", "data.label_seed=2", f"resume={run}",
                                               f"hydra.run.dir={run}", "hydra.output_subdir=null"]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    hydra:\n    - hydra.mode=MULTIRUN\n    task:\n    - experiment=table_quick\n"
        "    - data.label_seed=0,1\n")
    assert resume_argv(["-m", f"resume={sweep}"]) == ["-m", "experiment=table_quick", "data.label_seed=0,1",
                                                       "hydra.mode=MULTIRUN", f"resume={sweep}",
                                                       f"hydra.sweep.dir={sweep}", "hydra.output_subdir=null"]
    with pytest.raises(DataError, match="other arguments were given: method=moco"):
        resume_argv([f"resume={run}", "method=moco"])
    with pytest.raises(DataError, match="no such run folder"):
        resume_argv([f"resume={tmp_path / 'absent'}"])
    with pytest.raises(DataError, match="neither a run folder"):
        resume_argv([f"resume={tmp_path}"])


def test_which_checkpoint_a_resumed_stage_continues_from(tmp_path: Path, monkeypatch) -> None:
    from omegaconf import OmegaConf

    from pscl.training.build import resume_checkpoint

    checkpoints = tmp_path / "pretrain" / "checkpoints"
    checkpoints.mkdir(parents=True)
    fresh, resumed = OmegaConf.create({"resume": None}), OmegaConf.create({"resume": str(tmp_path)})
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert resume_checkpoint(resumed, checkpoints) is None  # nothing saved yet: start the stage
    import torch

    torch.save({"state_dict": {}}, checkpoints / "last.ckpt")  # read the safe way before a stage resumes
    assert resume_checkpoint(fresh, checkpoints) is None
    assert resume_checkpoint(resumed, checkpoints) == checkpoints / "last.ckpt"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued SLURM job resumes by itself
    assert resume_checkpoint(fresh, checkpoints) == checkpoints / "last.ckpt"
    torch.save({"state_dict": {}}, tmp_path / "pretrain" / "hpc_ckpt_1.ckpt")  # Lightning's, newer: it loads that
    assert resume_checkpoint(fresh, checkpoints) is None
