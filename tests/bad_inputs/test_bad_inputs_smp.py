"""Bad inputs of ``backbone=smp`` through pscl-train: one message, exit 2, no traceback.

Cases run pscl-train's command line in-process, as tests/bad_inputs/test_bad_inputs.py does:
each gives exit code 2 and one message naming the key or the file, prints no traceback, runs no
planted code (a marker file never appears), leaves the data folder as it was (the sha256 of
each of its files, none added or removed), and trains nothing: the run folder holds no more than
a run that stops on a bad config writes (``FAILED``, Hydra's config and the log), however far
the run got. ``test_imagenet_offline_through_the_real_command_line`` checks the download case
in a subprocess, where the offline switch is read from the environment alone.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import _reopen_log_streams, compose_config, run_cli as run_subprocess, write_crafted_checkpoint

SMP = ["backbone=smp", "backbone.decoder_channels=[32,16,16,8,8]", "logger=csv", "data.crop_size=64"]
# a 0.1 M-parameter timm encoder: a case that must train takes seconds
TINY_ENCODER = ["backbone.encoder_name=tu-test_efficientnet"]
QUICK = ["trainer.max_epochs=1", "data.samples_per_epoch=4"]
# no download can start: Hugging Face Hub offline (smp's and timm's weights), and empty caches
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HOME": "{tmp}/hf", "HF_HUB_CACHE": "{tmp}/hf/hub", "TORCH_HOME": "{tmp}/torch"}
# what a run that stops before training leaves in its folder, and nothing else
FAILED_RUN_FILES = {"FAILED", "train.log", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"}


@dataclass
class Case:
    """``args`` (``{tmp}`` filled in) on a data folder, after ``prepare(tmp)``."""

    name: str
    args: list[str]
    code: int
    fragments: tuple[str, ...]
    prepare: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)


def _other_encoder_weights(tmp: Path) -> None:
    import segmentation_models_pytorch as smp
    import torch

    torch.save(smp.encoders.get_encoder("efficientnet-b0", in_channels=3, depth=5).state_dict(), tmp / "effnet.pth")


def _crafted_weights(tmp: Path) -> None:
    write_crafted_checkpoint(tmp / "evil.pth", tmp / "payload-ran")


CASES = [
    Case("unknown encoder name", ["backbone.encoder_name=resnet181"], 2,
         ("config `backbone.encoder_name`: 'resnet181' is not an encoder segmentation_models_pytorch knows",
          "closest: resnet18, ")),
    Case("unknown timm encoder name", ["method=moco", "backbone.encoder_name=tu-test_efficientnett"], 2,
         ("config `backbone.encoder_name`: 'tu-test_efficientnett' is not a timm model",
          "closest: tu-test_efficientnet")),
    Case("imagenet weights offline", ["method=moco", "backbone.encoder_weights=imagenet"], 2,
         ("config `backbone.encoder_weights`: imagenet weights of resnet18 could not be downloaded",
          "get_encoder('resnet18', depth=5, weights='imagenet')", "backbone.encoder_weights=/path/to/encoder.pth"),
         env=OFFLINE),
    Case("imagenet weights offline, supervised", ["backbone.encoder_weights=imagenet"], 2,
         ("imagenet weights of resnet18 could not be downloaded",), env=OFFLINE),
    Case("weights of another encoder", ["backbone.encoder_weights={tmp}/effnet.pth"], 2,
         ("effnet.pth: does not hold resnet18 encoder weights: ", "are not resnet18's (first: _conv_stem.weight)"),
         _other_encoder_weights),
    Case("crafted pickle as encoder weights", ["method=simclr", "backbone.encoder_weights={tmp}/evil.pth"], 2,
         ("evil.pth: refused: loading it would run code", "nothing in it was run"), _crafted_weights),
    Case("missing weights file", ["backbone.encoder_weights={tmp}/absent.pth"], 2,
         ("config `backbone.encoder_weights`: is neither null, imagenet nor a file",)),
    Case("encoder depth of 2", ["backbone.encoder_depth=2", "backbone.decoder_channels=[16,8]"], 2,
         ("config `backbone.encoder_depth`",)),
    # the bottleneck is 1/32 of the input: a 32 px crop leaves it 1x1 (pscl.checks.config.bottleneck_stride)
    Case("fine-tuning batches of one 32 px crop", ["data.batch_size=1", "data.crop_size=32"], 2,
         ("config `data.batch_size`: is 1 but data.crop_size=32 leaves the network's bottleneck 1x1 px (1/32 of the "
          "input with backbone.encoder_depth=5)", "data.crop_size=64 or more")),
    Case("pool batches of one 32 px crop", ["method=moco", "data.unlabeled_batch_size=1", "data.crop_size=32"], 2,
         ("config `data.unlabeled_batch_size`: is 1 but data.crop_size=32 leaves the network's bottleneck 1x1 px",)),
    Case("fine-tuning batches of one 40 px crop train", [*QUICK, *TINY_ENCODER, "data.batch_size=1",
                                                          "data.crop_size=40"], 0, ("test Dice",)),
]


def _hashes(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_smp_input(case: Case, make_folder, tmp_path: Path, monkeypatch, capsys) -> None:
    from hydra.core.global_hydra import GlobalHydra

    from pscl.training.app import run_cli

    root = make_folder(n=6)
    if case.prepare:
        case.prepare(tmp_path)
    run = tmp_path / "run"
    args = ["data=folder", f"data.root={root}", *SMP, *[_fill(a, tmp_path) for a in case.args],
            f"hydra.run.dir={run}"]
    monkeypatch.setattr(sys, "argv", ["pscl-train", *args])
    monkeypatch.setenv("PSCL_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("PSCL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for key, value in case.env.items():
        monkeypatch.setenv(key, _fill(value, tmp_path))
    if "HF_HUB_OFFLINE" in case.env:  # huggingface_hub reads its environment once, when imported
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", _fill(case.env["HF_HUB_CACHE"], tmp_path))
    GlobalHydra.instance().clear()
    _reopen_log_streams(monkeypatch)
    before = _hashes(root)
    code = run_cli()
    out, err = capsys.readouterr()
    assert code == case.code, err
    said = err if case.code else out + err
    assert not [fragment for fragment in case.fragments if fragment not in said], said
    assert "Traceback" not in err
    assert not (tmp_path / "payload-ran").exists()
    assert _hashes(root) == before  # the data folder is never written
    if case.code:  # stopped before anything trained: no checkpoint, log or weights in the run
        assert err.count("pscl-train: error:") == 1
        assert set(_hashes(run)) <= FAILED_RUN_FILES, sorted(_hashes(run))
        assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt"))


def test_imagenet_offline_through_the_real_command_line(make_folder, tmp_path: Path) -> None:
    """The environment alone makes the download fail at once (no network is tried): one message
    that names the encoder and how to give a local file, exit 2, before anything trains."""
    import os

    root = make_folder(n=6)
    before = _hashes(root)
    env = {key: _fill(value, tmp_path) for key, value in OFFLINE.items()}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        result = run_subprocess(["data=folder", f"data.root={root}", *SMP, "method=moco",
                                 "backbone.encoder_weights=imagenet", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert result.returncode == 2, result.stderr
    assert "config `backbone.encoder_weights`: imagenet weights of resnet18 could not be downloaded" in result.stderr
    assert "backbone.encoder_weights=/path/to/encoder.pth" in result.stderr
    assert "Traceback" not in result.stderr
    assert _hashes(root) == before
    assert set(_hashes(tmp_path / "run")) <= FAILED_RUN_FILES


@pytest.mark.parametrize(("backbone", "crop", "refused"), [
    ([], 8, True), ([], 16, False), ([], 32, False),  # pscl's UNet: the bottleneck is crop // 8
    (["backbone=smp"], 32, True), (["backbone=smp"], 33, False), (["backbone=smp"], 64, False),
    (["backbone=smp", "backbone.encoder_depth=3", "backbone.decoder_channels=[16,8,8]"], 8, True),
    (["backbone=smp", "backbone.encoder_depth=4", "backbone.decoder_channels=[16,16,8,8]"], 17, False),
])
def test_single_crops_are_checked_against_the_configured_backbones_stride(
        tmp_path: Path, backbone: list[str], crop: int, refused: bool) -> None:
    """A batch of one crop is refused when the configured backbone's bottleneck is 1x1 px: pscl's
    UNet floors crop / 8; smp pads to its stride 2**encoder_depth, so it rounds crop / stride up."""
    from pscl.checks import check_batch_sizes
    from pscl.checks.config import bottleneck_side, bottleneck_stride
    from pscl.errors import ConfigError

    cfg = compose_config([*backbone, "method=supervised", "data.batch_size=1", f"data.crop_size={crop}"],
                         tmp_path / "run")
    depth = cfg.backbone.get("encoder_depth")
    stride = 8 if depth is None else 2 ** depth
    assert bottleneck_stride(cfg) == stride
    assert bottleneck_side(cfg, crop) == (crop // 8 if depth is None else -(-crop // stride))
    if refused:
        with pytest.raises(ConfigError, match=f"is 1 but data.crop_size={crop} leaves the network's bottleneck 1x1 px"
                           ) as info:
            check_batch_sizes(cfg)
        assert str(info.value).endswith(f"or data.crop_size={2 * stride} or more")
    else:
        check_batch_sizes(cfg)


def test_a_last_batch_of_one_small_smp_crop_is_dropped_not_a_crash(tmp_path: Path) -> None:
    """smp at depth 5 leaves a 1x1 px bottleneck for a 32 px crop: with 5 crops an epoch in batches
    of 4, the last batch of one would stop BatchNorm; it is dropped as for the UNet's small crops."""
    from pscl.checks.config import single_crop_side
    from pscl.training.pipeline import train

    cfg = compose_config(["method=supervised", "backbone=smp", "backbone.encoder_name=tu-test_efficientnet",
                          "data.synthetic.counts=[2,2,2]", "data.synthetic.size=96", "data.crop_size=32",
                          "data.batch_size=4", "data.samples_per_epoch=5", "trainer.max_epochs=1", "logger=csv"],
                         tmp_path / "run")
    assert single_crop_side(cfg) == 33
    results = train(cfg)
    assert 0.0 <= results["test"]["dice"] <= 1.0


def test_a_unet_setting_under_smp_names_the_key(tmp_path: Path) -> None:
    """experiment=paper_pscl_simclr sets backbone.checkpoint_blocks (the UNet's); under backbone=smp
    that is one ConfigError naming the key and how to drop it, not a crash."""
    from pscl.errors import ConfigError
    from pscl.training.pipeline import train

    cfg = compose_config(["experiment=paper_pscl_simclr", "backbone=smp", "backbone.encoder_name=tu-test_efficientnet",
                          "trainer=cpu", "data.synthetic.counts=[2,2,2]", "data.synthetic.size=96", "logger=csv",
                          "stage=pretrain"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"backbone.checkpoint_blocks.*\n  fix: remove it with ~backbone.checkpoint_blocks"):
        train(cfg)
