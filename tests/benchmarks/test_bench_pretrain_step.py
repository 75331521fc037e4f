"""benchmarks/pretrain_step.py: the configurations make bench times, and the smp ResNet-18 one."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from conftest import benchmark_modules


@pytest.fixture(scope="module")
def pretrain_step():
    with benchmark_modules("pretrain_step") as modules:
        yield modules[0]


def test_make_bench_times_every_default_configuration_in_its_precisions(pretrain_step, monkeypatch, capsys) -> None:
    """Without --configs, main times paper, paper_lowmem, quick (fp32 and bf16) and quick_resnet18
    (fp32), both variants, bare and PSCL, each in its own process (here a stand-in)."""
    launched = []
    real_run = pretrain_step.subprocess.run

    def fake_run(command, **options):
        if "--one" not in command:  # not a benchmark process (platform.platform() may run one)
            return real_run(command, **options)
        config, variant, mode, precision = command[command.index("--one") + 1:][:4]
        launched.append((config, variant, precision, mode))
        row = {"config": config, "variant": variant, "mode": mode, "precision": precision,
               "seconds_per_step": 1.0, "min_seconds": 1.0, "peak_rss_gib": 1.0}
        return SimpleNamespace(stdout=json.dumps(row) + "\n")

    monkeypatch.setattr(pretrain_step.subprocess, "run", fake_run)
    assert pretrain_step.main(["--steps", "1"]) == 0
    assert pretrain_step.DEFAULT_CONFIGS == ("paper", "paper_lowmem", "quick", "quick_resnet18")
    expected = {(config, variant, precision, mode)
                for config in pretrain_step.DEFAULT_CONFIGS for variant in ("simclr", "moco")
                for precision in (("fp32", "bf16") if config == "quick" else ("fp32",)) for mode in ("bare", "pscl")}
    assert len(launched) == len(expected) and set(launched) == expected
    table = capsys.readouterr().out
    assert "| quick_resnet18 | simclr | fp32 |" in table and "| quick_resnet18 | moco | fp32 |" in table


def test_quick_resnet18_is_the_quick_recipe_with_an_smp_resnet18(pretrain_step) -> None:
    from pscl.models.smp_backbone import SmpBackbone
    from pscl.models.unet import UNet

    spec, quick = pretrain_step.CONFIGS["quick_resnet18"], pretrain_step.CONFIGS["quick"]
    assert (spec["size"], spec["unlabeled"]) == (quick["size"], quick["unlabeled"]) == (128, 8)
    assert pretrain_step.precisions_of("quick_resnet18", None) == ["fp32"]
    assert isinstance(pretrain_step.build_backbone("quick"), UNet)
    module = pretrain_step.build_module("quick_resnet18", "moco")
    for network in (module.backbone, module.backbone_momentum):
        assert isinstance(network, SmpBackbone) and network.encoder_name == "resnet18"
    assert module.backbone.bottleneck_channels == 512 and module.backbone.decoder_channels == (64, 32, 16)
    assert 14.0e6 < sum(p.numel() for p in module.backbone.parameters()) < 14.6e6


def test_one_quick_resnet18_pscl_step_is_timed(pretrain_step) -> None:
    row = pretrain_step.run_one("quick_resnet18", "simclr", "pscl", steps=1)
    assert row["config"] == "quick_resnet18" and row["precision"] == "fp32"
    assert row["seconds_per_step"] > 0 and row["peak_rss_gib"] > 0
