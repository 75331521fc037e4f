"""The dense linear probe: planted separable features give Dice ~ 1, random features chance,
the online callback logs without touching training, and eval.probe writes metrics.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import compose_config
from pscl.data.datamodule import MicrographDataModule
from pscl.models.base import SegmentationBackbone
from pscl.probe import LinearProbe, ProbeSettings, dense_features, fit_linear_probe, probe_backbone, sample_pixels


class PlantedBackbone(SegmentationBackbone):
    """Features that separate the fixture's classes linearly: one channel per grey level of
    ``conftest.draw_sample`` (a soft indicator of being near that level), plus noise channels."""

    def __init__(self, levels: torch.Tensor, noise_channels: int = 4) -> None:
        super().__init__()
        self.levels = levels
        self.noise_channels = noise_channels
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, so the backbone has a device
        self.encoder = nn.Identity()
        self.decoder = nn.Identity()
        self.classifier = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> dict:
        raw = x[:, :1]
        near = torch.cat([-(raw - level).abs() for level in self.levels], dim=1) * self.scale
        noise = torch.randn(x.shape[0], self.noise_channels, *x.shape[-2:])
        fine = torch.cat([near, noise], dim=1)
        small = nn.functional.avg_pool2d(fine, 2)
        return {"bottleneck": nn.functional.avg_pool2d(fine, 8), "decoder": [nn.functional.avg_pool2d(fine, 4), small, fine]}


class RandomBackbone(PlantedBackbone):
    """Features independent of the image: nothing to learn."""

    def forward_features(self, x: torch.Tensor) -> dict:
        fine = torch.randn(x.shape[0], 8, *x.shape[-2:]) * self.scale
        return {"bottleneck": nn.functional.avg_pool2d(fine, 8), "decoder": [nn.functional.avg_pool2d(fine, 4),
                                                                              nn.functional.avg_pool2d(fine, 2), fine]}


def _datamodule(make_folder) -> MicrographDataModule:
    root = make_folder(n=10, size=(64, 64), num_classes=3,
                       splits={"train": [f"img{i:02d}" for i in range(6)], "test": [f"img{i:02d}" for i in range(6, 10)]})
    dm = MicrographDataModule(root=root, crop_size=32, num_labeled=2, label_seed=0)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _normalised_levels(dm: MicrographDataModule) -> torch.Tensor:
    levels = torch.tensor([0.45, 0.9, 0.675])  # conftest.draw_sample: matrix, class 1, class 2
    return (levels - dm.mean[0]) / dm.std[0]


def test_planted_separable_features_give_dice_near_one(make_folder) -> None:
    dm = _datamodule(make_folder)
    for kind in ("multiscale", "full_resolution"):
        result = probe_backbone(PlantedBackbone(_normalised_levels(dm)), dm, ProbeSettings(features=kind))
        assert result["dice"] > 0.95, (kind, result)
        assert result["acc"] > 0.97
        assert result["split"] == "test" and result["pixels"] > 0


def test_random_features_score_near_chance(make_folder) -> None:
    dm = _datamodule(make_folder)
    result = probe_backbone(RandomBackbone(_normalised_levels(dm)), dm, ProbeSettings(features="full_resolution"))
    planted = probe_backbone(PlantedBackbone(_normalised_levels(dm)), dm, ProbeSettings(features="full_resolution"))
    assert result["dice"] < 0.4 < planted["dice"]


def test_fit_recovers_a_planted_linear_rule() -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (3000,))
    rows = torch.randn(3000, 6)
    rows[:, 0] += 8 * (labels == 1)
    rows[:, 1] += 8 * (labels == 2)
    rows[:5, :] = 0
    probe = fit_linear_probe(rows, labels, num_classes=4)
    assert (probe.predict(rows) == labels).float().mean() > 0.97
    assert probe.bias[3] == -30.0  # an absent class is never predicted
    # maps and rows give the same logits
    maps = rows[:16].T.reshape(1, 6, 4, 4)
    assert torch.allclose(probe.logits(maps).flatten(2)[0].T, probe.logits(rows[:16]), atol=1e-4)


def test_sample_pixels_is_class_balanced_and_skips_ignored() -> None:
    mask = torch.zeros(10, 10, dtype=torch.long)
    mask[:2] = 1
    mask[2:3] = 255
    features = torch.arange(100, dtype=torch.float32).reshape(1, 10, 10)
    rows, labels = sample_pixels(features, mask, num_classes=3, per_class=5, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(labels, minlength=3).tolist() == [5, 5, 0]
    # the rows are the features of pixels of the right class
    assert all(mask.flatten()[int(v)] == int(c) for v, c in zip(rows[:, 0], labels))


def test_dense_features_shapes() -> None:
    from pscl.models.unet import UNet

    net = UNet(1, 3, (4, 8, 16, 32)).eval()
    x = torch.randn(2, 1, 40, 48)
    assert dense_features(net, x, "full_resolution").shape == (2, 4, 40, 48)
    assert dense_features(net, x, "multiscale").shape == (2, 32 + 16 + 8 + 4, 40, 48)
    with pytest.raises(ValueError, match="unknown probe features"):
        dense_features(net, x, "pixels")


def test_probe_leaves_mode_and_random_stream_alone(make_folder) -> None:
    dm = _datamodule(make_folder)
    from pscl.models.unet import UNet

    net = UNet(1, 3, (4, 8, 16, 32)).train()
    torch.manual_seed(1)
    probe_backbone(net, dm)
    after = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(after, torch.rand(3)) and net.training


def test_probe_settings_are_checked() -> None:
    from pscl.errors import ConfigError

    with pytest.raises(ConfigError, match="probe.features"):
        ProbeSettings(features="bottleneck")
    with pytest.raises(ConfigError, match="probe.pixels_per_class"):
        ProbeSettings(pixels_per_class=0)
    assert isinstance(LinearProbe, type)


TINY = ["data=synthetic", "data.synthetic.counts=[3,3,3]", "data.synthetic.size=64", "data.crop_size=32",
        "data.unlabeled_batch_size=3", "data.batch_size=2", "data.samples_per_epoch=4", "trainer.max_epochs=1",
        "backbone=unet_small", "backbone.widths=[4,8,16,32]", "probe.pixels_per_class=256", "probe.max_iter=20"]


def test_eval_probe_writes_metrics_and_floor(tmp_path: Path) -> None:
    from pscl.training.pipeline import train

    cfg = compose_config(["method=simclr", "method.pretrain_epochs=1", "eval.probe=true", *TINY], tmp_path / "run")
    results = train(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    probe = written["probe"]
    assert probe == results["probe"] and probe["pretrained"] is True
    assert 0.0 <= probe["dice"] <= 1.0 and 0.0 <= probe["random_init"]["dice"] <= 1.0
    assert probe["features"] == "multiscale"
    cfg = compose_config(["method=supervised", "eval.probe=true", *TINY], tmp_path / "sup")
    supervised = train(cfg)["probe"]
    # no pretraining: the probe is the floor itself, computed the same way
    assert supervised["pretrained"] is False
    assert supervised["dice"] == supervised["random_init"]["dice"] == probe["random_init"]["dice"]


def test_online_probe_logs_to_tensorboard_without_changing_training(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pscl.training.pipeline import train

    base = ["method=pscl_simclr", "method.pretrain_epochs=2", "stage=pretrain", *TINY]
    plain = train(compose_config(base, tmp_path / "plain"))
    probed = train(compose_config([*base, "probe.every_n_epochs=1", "reuse_pretraining=false"], tmp_path / "probed"))
    assert plain["pretraining"]["reused"] is False and probed["pretraining"]["reused"] is False
    events = list((tmp_path / "probed" / "pretrain").rglob("events.out.tfevents.*"))
    tags = set()
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
        if "probe/dice" in acc.Tags()["scalars"]:
            points = acc.Scalars("probe/dice")
            assert [p.step for p in points] == [0, 2, 4]  # before training and after each epoch (2 steps each)
    assert {"probe/dice", "probe/acc", "probe/random_init_dice"} <= tags
    # the probe does not change what pretraining learns
    from pscl.models.transfer import load_pretrained

    a = load_pretrained(tmp_path / "plain" / "pretrain" / "pretrained.pt")
    b = load_pretrained(tmp_path / "probed" / "pretrain" / "pretrained.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_prior_correction_predicts_with_the_annotated_class_frequencies() -> None:
    """Balanced sampling makes a rare class look common; the corrected bias undoes that."""
    torch.manual_seed(0)
    labels = torch.cat([torch.zeros(9000, dtype=torch.long), torch.ones(1000, dtype=torch.long)])
    rows = torch.randn(10000, 1) + labels.unsqueeze(1).float()  # overlapping classes
    balanced = torch.cat([torch.arange(1000), torch.arange(9000, 10000)])
    plain = fit_linear_probe(rows[balanced], labels[balanced], 2)
    corrected = fit_linear_probe(rows[balanced], labels[balanced], 2, class_prior=torch.tensor([9000.0, 1000.0]))
    shift = float(corrected.bias[1] - corrected.bias[0]) - float(plain.bias[1] - plain.bias[0])
    assert shift == pytest.approx(math.log(1 / 9), abs=1e-4)
    accuracy = [(p.predict(rows) == labels).float().mean() for p in (plain, corrected)]
    assert accuracy[1] > accuracy[0] + 0.1 and accuracy[1] > 0.9
