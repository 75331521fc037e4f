"""backbone=smp through pscl-train's pipeline: every method's pretraining, fine-tuning and test
(fast_dev_run), the dense probe, and a short real run whose model.pt rebuilds the smp network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import TINY_SYNTH, compose_config
from pscl.training.pipeline import train

# a 0.1 M-parameter timm encoder and narrow decoder blocks: each run takes about a second on a CPU
ENCODER = "tu-test_efficientnet"
DECODER = (32, 16, 16, 8, 8)
SMP = ["backbone=smp", f"backbone.encoder_name={ENCODER}", f"backbone.decoder_channels=[{','.join(map(str, DECODER))}]"]
SYNTH = [o for o in TINY_SYNTH if not o.startswith("backbone")]  # 1 channel, 4 classes, 64 px crops
METHODS = ("supervised", "simclr", "moco", "byol", "densecl", "pscl_simclr", "pscl_moco")


def _transferable_keys() -> int:
    from pscl.models.smp_backbone import SmpBackbone

    return len(SmpBackbone(1, 4, encoder_name=ENCODER, decoder_channels=DECODER).transferable_state_dict())


@pytest.mark.parametrize("method", METHODS)
def test_fast_dev_run_of_every_method(method: str, tmp_path: Path) -> None:
    results = train(compose_config([f"method={method}", "debug=fast_dev_run", *SYNTH, *SMP], tmp_path / "run"))
    assert results["transferred_keys"] == (0 if method == "supervised" else _transferable_keys())
    assert 0.0 <= results["test"]["dice"] <= 1.0


@pytest.mark.parametrize("method", ["pscl_moco", "densecl"])
def test_fast_dev_run_with_the_default_smp_config(method: str, tmp_path: Path) -> None:
    """conf/backbone/smp.yaml as it is: resnet18, smp's decoder widths (256 ... 16), 1/32 bottleneck."""
    from pscl.models.smp_backbone import SmpBackbone

    overrides = [f"method={method}", "debug=fast_dev_run", *SYNTH, "backbone=smp"]
    results = train(compose_config(overrides, tmp_path / "run"))
    assert results["transferred_keys"] == len(SmpBackbone(1, 4).transferable_state_dict())
    assert 0.0 <= results["test"]["dice"] <= 1.0


def test_dense_probe_reads_the_smp_maps(tmp_path: Path) -> None:
    overrides = ["method=pscl_moco", "debug=fast_dev_run", "eval.probe=true", "probe.pixels_per_class=64",
                 "probe.max_iter=10", *SYNTH, *SMP]
    results = train(compose_config(overrides, tmp_path / "run"))
    probe = results["probe"]
    assert probe["pretrained"] is True and probe["features"] == "multiscale"
    assert 0.0 <= probe["dice"] <= 1.0 and 0.0 <= probe["random_init"]["dice"] <= 1.0


def test_a_short_run_writes_a_model_file_that_rebuilds_the_smp_network(tmp_path: Path) -> None:
    from pscl.models.model_file import MODEL_FILE, load_trained_model
    from pscl.models.smp_backbone import SmpBackbone

    overrides = ["method=moco", "method.pretrain_epochs=1", "trainer.max_epochs=1", *SYNTH, *SMP]
    results = train(compose_config(overrides, tmp_path / "run"))
    assert results["transferred_keys"] == _transferable_keys()
    assert (tmp_path / "run" / "pretrain" / "pretrained.pt").is_file()
    model = load_trained_model(tmp_path / "run" / MODEL_FILE)
    assert isinstance(model.backbone, SmpBackbone) and model.backbone.encoder_name == ENCODER
    assert model.backbone.decoder_channels == DECODER[-3:]
    model.backbone.eval()
    with torch.no_grad():
        logits = model.backbone(torch.randn(1, 1, 50, 70))  # any size: padded to 32 and cropped back
    assert logits.shape == (1, 4, 50, 70) and torch.isfinite(logits).all()
