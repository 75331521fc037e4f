"""Every config option composes; the configs ship inside the package; recipes run.

That pyproject.toml lists every sub-package is checked in tests/project/test_packaging.py.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import compose_config

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
GROUPS = ["data", "backbone", "method", "finetune", "trainer", "logger", "callbacks", "experiment", "debug"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group: str, option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"{group}={option}"], tmp_path / "run")
    assert cfg.data._target_.endswith("MicrographDataModule")
    assert cfg.backbone._target_ and cfg.trainer._target_
    # everything except the deliberately mandatory data.root resolves
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    OmegaConf.to_container(cfg.trainer, resolve=True)
    OmegaConf.to_container(cfg.finetune, resolve=True)


def test_experiment_quick_uses_the_small_unet(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=quick"], tmp_path / "run")
    assert list(cfg.backbone.widths) == [16, 32, 64, 128]
    assert cfg.data.crop_size == 128


def test_slurm_launcher_config_composes() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pscl.conf", version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "trainer=ddp"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.trainer.strategy == "ddp"


def test_configs_ship_inside_the_package() -> None:
    names = {p.name for p in importlib.resources.files("pscl.conf").iterdir()}
    assert "train.yaml" in names and "data" in names


def test_quick_recipe_fast_dev_run(tmp_path: Path) -> None:
    from pscl.training.pipeline import train

    cfg = compose_config(["experiment=quick", "debug=fast_dev_run", "data.synthetic.counts=[2,2,2]",
                          "data.synthetic.size=160", "logger=csv"], tmp_path / "run")
    assert train(cfg)["test"]["acc"] >= 0.0
