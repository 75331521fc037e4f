"""Nothing a file says may run code: configs read from files are checked before anything is built.

Each refusal has its teeth: the same config, given to Hydra without the check, does run code (a
marker file appears). The command-line cases are in tests/bad_inputs/test_bad_inputs_models.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import compose_config, hub_config, hub_repo, nested_config
from pscl.errors import DataError
from pscl.integrity.configs import (RUN_TARGETS, UnsafeConfigError, check_file_config, check_overrides,
                                    check_run_targets)
from pscl.models.registry import BACKBONES, build_backbone_from_file

FIX = "use a file pscl wrote"


def test_teeth_hydra_runs_the_hub_config(tmp_path: Path) -> None:
    """Without the check, Hydra follows the attribute path to torch.hub.load and runs hubconf.py."""
    import hydra

    marker = tmp_path / "ran"
    with pytest.raises(Exception):
        hydra.utils.instantiate(hub_config(tmp_path, marker), in_channels=1, num_classes=3)
    assert marker.read_text() == "ran"


def test_teeth_hydra_runs_a_nested_target(tmp_path: Path) -> None:
    import hydra

    marker = tmp_path / "ran"
    with pytest.raises(Exception):
        hydra.utils.instantiate(nested_config(marker), in_channels=1, num_classes=3)
    assert marker.exists()


@pytest.mark.parametrize("make", [hub_config, lambda tmp, marker: nested_config(marker)], ids=["hub", "nested"])
def test_backbone_configs_that_reach_code_are_refused_before_anything_runs(make, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(UnsafeConfigError, match="refused") as caught:
        build_backbone_from_file(make(tmp_path, marker), 1, 3, tmp_path / "model.pt", FIX)
    assert str(tmp_path / "model.pt") in str(caught.value) and FIX in str(caught.value)
    assert not marker.exists()


@pytest.mark.parametrize("config, fragment", [
    ({"_target_": "pscl.models.unet.torch.save"}, "not one of the classes"),
    ({"_target_": "pscl.models.unet.UNetEncoder"}, "not one of the classes"),
    ({"_target_": "pscl.models.unet.UNet.__init__"}, "not one of the classes"),
    ({"_target_": "pscl.models.base.SegmentationBackbone"}, "not one of the classes"),
    ({"_target_": "pscl.models.unet.UNetX"}, "not one of the classes"),
    ({"_target_": " pscl.models.unet.UNet"}, "not one of the classes"),
    ({"_target_": ["pscl.models.unet.UNet"]}, "not one of the classes"),
    ({"widths": [8, 16, 16, 32]}, "not one of the classes"),
    ("pscl.models.unet.UNet", "not a mapping"),
    ({"_target_": "pscl.models.unet.UNet", "_partial_": True}, "`backbone_config._partial_`"),
    ({"_target_": "pscl.models.unet.UNet", "_args_": [1, 3]}, "`backbone_config._args_`"),
    ({"_target_": "pscl.models.unet.UNet", "_recursive_": False}, "`backbone_config._recursive_`"),
    ({"_target_": "pscl.models.unet.UNet", "widths": [{"_target_": "builtins.int"}, 8, 8, 8]},
     "`backbone_config.widths[0]._target_`"),
    ({"_target_": "pscl.models.unet.UNet", "checkpoint_blocks": "${oc.env:HOME}"}, "interpolation"),
    ({"_target_": "pscl.models.unet.UNet", "widths": torch.zeros(4)}, "not a plain value"),
])
def test_exact_targets_and_plain_values_only(config: object, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeConfigError, match="refused") as caught:
        check_file_config(config, BACKBONES, tmp_path / "model.pt", "backbone_config", FIX)
    assert fragment in str(caught.value)


def test_a_plain_backbone_config_builds_the_class_itself(tmp_path: Path) -> None:
    from pscl.models.unet import UNet

    config = {"_target_": "pscl.models.unet.UNet", "widths": [8, 16, 16, 32], "channels_last": False,
              "checkpoint_blocks": "none", "in_channels": 7, "num_classes": 9}  # the model file's own facts win
    backbone = build_backbone_from_file(config, 1, 3, tmp_path / "model.pt", FIX)
    assert type(backbone) is UNet and (backbone.in_channels, backbone.num_classes, backbone.widths) == (1, 3, (8, 16, 16, 32))
    shapes = build_backbone_from_file(config, 1, 3, tmp_path / "model.pt", FIX, device="meta")
    assert all(t.is_meta for t in shapes.state_dict().values())  # a size the file claims costs no memory
    with pytest.raises(DataError, match=r"settings \['evil'\]"):
        build_backbone_from_file({**config, "evil": 1}, 1, 3, tmp_path / "model.pt", FIX)
    with pytest.raises(DataError, match="cannot build a pscl.models.unet.UNet"):
        build_backbone_from_file({**config, "widths": [3, 5]}, 1, 3, tmp_path / "model.pt", FIX)


@pytest.mark.parametrize("overrides", [
    ["experiment=quick", "method=simclr,moco", "data.label_seed=range(0,3)", "backbone.widths=[8,16,32,64]",
     "data.root='/data/my runs/jürgen'", "~logger", "+probe.every_n_epochs=2", "method=glob(*)"],
])
def test_the_overrides_pscl_writes_are_accepted(overrides: list[str], tmp_path: Path) -> None:
    check_overrides(overrides, tmp_path / "overrides.yaml", FIX)
    check_overrides(["hydra.mode=MULTIRUN", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                     "hydra.launcher.timeout_min=60", "hydra.sweep.dir=/x y"], tmp_path / "multirun.yaml", FIX,
                    hydra_settings=True)


@pytest.mark.parametrize("override, hydra_settings, fragment", [
    ("backbone._target_=pscl.models.unet.torch.hub.load", False, "sets a key Hydra would act on"),
    ("+backbone.evil._target_=builtins.open", False, "sets a key Hydra would act on"),
    ("++method.pretrain.optimizer._partial_=false", False, "sets a key Hydra would act on"),
    ("method=../../../tmp/evil", False, "not one of pscl's `method` configs"),
    ("experiment=simclr,/tmp/evil", False, "not one of pscl's `experiment` configs"),
    ("hydra.searchpath=[file:///tmp]", False, "changes Hydra's own settings"),
    ("hydra.job.env_set.LD_PRELOAD=/tmp/evil.so", False, "changes Hydra's own settings"),
    ("hydra.searchpath=[file:///tmp]", True, "not one a pscl run writes"),
    ("hydra.callbacks.evil.x=1", True, "not one a pscl run writes"),
    ("hydra.callbacks.evil._target_=builtins.open", True, "sets a key Hydra would act on"),
    ("hydra.launcher.setup=[touch /tmp/x]", True, "not one a pscl run writes"),
    ("hydra/launcher=../../tmp/evil", True, "not one of pscl's `hydra/launcher` configs"),
    ("hydra.job.env_set.LD_PRELOAD=/tmp/evil.so", True, "not one a pscl run writes"),
    ("logger.csv.name='${oc.create:{_target_:builtins.open,file:x,mode:w}}'", False, "holds an interpolation"),
    ("hydra.launcher.timeout_min='${oc.create:{_target_:builtins.open}}'", True, "holds an interpolation"),
    ("data.class_weights=[1,{_target_:builtins.open}]", False, "holds the key '_target_'"),
    ("method=choice(simclr,'${oc.env:X}')", False, "holds an interpolation"),
])
def test_overrides_that_could_run_code_are_refused(override: str, hydra_settings: bool, fragment: str,
                                                   tmp_path: Path) -> None:
    with pytest.raises(UnsafeConfigError, match="refused") as caught:
        check_overrides(["method=simclr", override], tmp_path / "multirun.yaml", FIX, hydra_settings=hydra_settings)
    assert fragment in str(caught.value) and str(tmp_path / "multirun.yaml") in str(caught.value)


def test_teeth_a_saved_target_override_does_build_anything(tmp_path: Path) -> None:
    """Replayed without the check, a target override in a saved file reaches torch.hub.load."""
    import hydra

    marker = tmp_path / "ran"
    repo = hub_repo(tmp_path / "hub", marker)
    cfg = compose_config(["backbone._target_=pscl.models.unet.torch.hub.load", f"+backbone.repo_or_dir={repo}",
                          "+backbone.model=m", "+backbone.source=local", "~backbone.widths",
                          "~backbone.channels_last", "~backbone.checkpoint_blocks"], tmp_path / "run")
    with pytest.raises(Exception):
        hydra.utils.instantiate(cfg.backbone, in_channels=1, num_classes=3)
    assert marker.exists()


def test_teeth_an_interpolated_override_value_builds_a_target(tmp_path: Path) -> None:
    """Replayed without the check, a quoted interpolation in an override's value becomes a node Hydra builds."""
    import hydra

    marker = tmp_path / "ran"
    cfg = compose_config(["logger=csv", f"logger.csv.name='${{oc.create:{{_target_:builtins.open,file:{marker},"
                          "mode:w}}'"], tmp_path / "run")
    try:
        hydra.utils.instantiate(cfg.logger.csv)
    except Exception:  # noqa: BLE001 - the logger may refuse its odd name; the marker is what counts
        pass
    assert marker.exists()


def test_a_target_nested_too_deep_to_walk_is_refused(tmp_path: Path) -> None:
    node: dict = {"_target_": "pscl.models.unet.torch.hub.load"}
    for _ in range(40):
        node = {"inner": [node]}
    with pytest.raises(UnsafeConfigError, match="nested more than"):
        check_run_targets({"trainer": node}, tmp_path, FIX)


EXPERIMENTS = ["quick", "table_quick", "pretrain_scaling", "protocol_grid", "table_paper", "paper_pscl_simclr",
               "paper_pscl_moco"]


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_every_class_pscl_configs_build_is_allowed_on_resume(experiment: str | None, tmp_path: Path) -> None:
    """RUN_TARGETS is complete: every method and option of every group composes to allowed targets."""
    from omegaconf import OmegaConf

    from pscl.integrity.configs import config_group_options

    groups = config_group_options()
    base = [f"experiment={experiment}"] if experiment else []
    variants = [[f"method={m}"] for m in sorted(groups["method"])] + [
        ["logger=many"], ["trainer=gpu"], ["trainer=ddp"], ["finetune=paper"], ["eval=paper"], ["debug=limit"]]
    for variant in variants:
        cfg = compose_config([*base, *variant], tmp_path / "run")
        check_run_targets(OmegaConf.to_container(cfg, resolve=False), tmp_path, FIX)


def test_a_composed_config_with_another_target_is_refused(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose_config(["method=simclr"], tmp_path / "run"), resolve=False)
    cfg["method"]["pretrain"]["optimizer"]["_target_"] = "pscl.models.unet.torch.hub.load"
    with pytest.raises(UnsafeConfigError, match=r"`method.pretrain.optimizer._target_` is 'pscl.models.unet"):
        check_run_targets(cfg, tmp_path, FIX)
    assert "torch.hub.load" not in " ".join(RUN_TARGETS)


def test_resume_folders_are_read_unquoted_by_the_log_folder_check(tmp_path: Path) -> None:
    """resume= writes an odd run folder Hydra-quoted; the log-folder check reads the folder, not the quotes."""
    from pscl.checks.folders import log_folder
    from pscl.runs.quoting import hydra_value

    folder = tmp_path / "jürgen's runs" / "a b"
    assert log_folder([f"hydra.run.dir={hydra_value(str(folder))}"], {}) == ("hydra.run.dir", folder)


def test_the_report_gallery_never_decodes_a_mask_over_the_pixel_limit(tmp_path: Path, monkeypatch, capsys) -> None:
    import numpy as np
    from PIL import Image

    from pscl.reporting.predictions import _gallery_mask

    Image.fromarray(np.ones((100, 100), np.uint8)).save(tmp_path / "mask.png")
    assert _gallery_mask(tmp_path / "mask.png").shape == (100, 100)
    monkeypatch.setenv("PSCL_MAX_IMAGE_PIXELS", "5000")
    assert _gallery_mask(tmp_path / "mask.png") is None
    assert "over the limit of 5000 px" in capsys.readouterr().err
