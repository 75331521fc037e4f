"""Evaluation protocols (eval=paper: periodic test points) and the TensorBoard HParams row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import compose_config
from pscl.errors import ConfigError
from pscl.training.pipeline import train

TINY = ["data.synthetic.counts=[2,2,2]", "data.synthetic.size=96", "data.crop_size=64", "backbone=unet_small",
        "backbone.widths=[8,16,32,64]", "trainer.max_epochs=2", "data.samples_per_epoch=2", "data.batch_size=2"]


def test_paper_protocol_records_test_points_without_changing_training(tmp_path: Path) -> None:
    paper = train(compose_config(["eval=paper", "eval.test_every_n_epochs=1", "logger=csv", *TINY], tmp_path / "p"))
    final = train(compose_config(["logger=csv", *TINY], tmp_path / "f"))
    history = json.loads((tmp_path / "p" / "metrics.json").read_text())["test_history"]
    assert [point["epoch"] for point in history] == [1, 2]
    # the last periodic point is the final model: the same numbers as the final test
    assert history[-1]["dice"] == pytest.approx(paper["test"]["dice"], abs=1e-6)
    # testing along the way leaves training untouched
    assert final["test"]["dice"] == pytest.approx(paper["test"]["dice"], abs=1e-6)
    assert paper["protocol"] == "paper" and final["protocol"] == "final" and final["test_history"] == []


def test_unknown_protocol_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval.protocol"):
        train(compose_config(["eval.protocol=best", "logger=csv", *TINY], tmp_path / "run"))


def test_tensorboard_gets_an_hparams_row(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(compose_config(["logger=tensorboard", "data.label_seed=1", *TINY], tmp_path / "run"))
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert "hparams/dice" in events.Tags()["scalars"]
    plugin = events.PluginTagToContent("hparams")
    session = next(content for tag, content in plugin.items() if "session_start" in tag)
    assert b"label_seed" in session and b"method" in session and b"supervised" in session
