"""backbone=smp (pscl.models.smp_backbone.SmpBackbone): maps at every scale for any input size,
the weight transfer's keys and values, encoder weights from a local file, and the pool
selection's patch features read from it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_crafted_checkpoint

from pscl.errors import ConfigError, DataError
from pscl.models.base import TRANSFER_PREFIXES
from pscl.models.smp_backbone import SmpBackbone
from pscl.models.transfer import transfer_weights

DECODER = (32, 16, 16, 8, 8)  # small decoder widths keep the forward passes quick
# encoder -> (first convolution's key, deepest map's channels)
ENCODERS = {"resnet18": ("conv1.weight", 512), "efficientnet-b0": ("_conv_stem.weight", 320),
            "tu-test_efficientnet": ("model.conv_stem.weight", 64)}


def _backbone(encoder: str = "resnet18", in_channels: int = 1, seed: int = 0, **kwargs) -> SmpBackbone:
    torch.manual_seed(seed)
    kwargs.setdefault("decoder_channels", DECODER)
    return SmpBackbone(in_channels, 4, encoder_name=encoder, **kwargs).eval()


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("in_channels", [1, 3])
def test_maps_at_every_scale_for_any_input_size(encoder: str, in_channels: int) -> None:
    model = _backbone(encoder, in_channels)
    assert model.stride == 32 and model.bottleneck_channels == ENCODERS[encoder][1]
    assert model.decoder_channels == DECODER[-3:] and model.decoder_strides == (4, 2, 1)
    for h, w in [(64, 96), (70, 45)]:  # the second is no multiple of 32: padded, then cropped back
        x = torch.randn(2, in_channels, h, w)
        with torch.no_grad():
            features = model.forward_features(x)
            logits = model(x)
            alone = model.forward_bottleneck(x)
        assert features["bottleneck"].shape == (2, model.bottleneck_channels, math.ceil(h / 32), math.ceil(w / 32))
        assert torch.equal(alone, features["bottleneck"])
        assert [tuple(m.shape) for m in features["decoder"]] == [
            (2, c, math.ceil(h / s), math.ceil(w / s)) for c, s in zip(model.decoder_channels, (4, 2, 1))]
        assert logits.shape == (2, 4, h, w)
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("depth", [3, 4])
def test_a_shallower_encoder_has_a_finer_bottleneck(depth: int) -> None:
    model = _backbone(encoder_depth=depth, decoder_channels=DECODER[-depth:])
    assert model.stride == 2 ** depth and model.bottleneck_channels == {3: 128, 4: 256}[depth]
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 1, 50, 41))
    assert features["bottleneck"].shape[2:] == (math.ceil(50 / 2 ** depth), math.ceil(41 / 2 ** depth))
    assert [tuple(m.shape[2:]) for m in features["decoder"]] == [(13, 11), (25, 21), (50, 41)]


@pytest.mark.parametrize(("encoder", "depth", "unused_stages"), [
    ("resnet18", 3, {"layer3", "layer4"}), ("resnet18", 4, {"layer4"}), ("resnet18", 5, set()),
    ("tu-test_efficientnet", 3, None)])
def test_every_trainable_parameter_gets_a_gradient_at_any_depth(encoder: str, depth: int,
                                                                 unused_stages: set[str] | None) -> None:
    """smp keeps the deeper stages of a shallower encoder; pscl freezes them (DDP needs a gradient
    for every trainable parameter) and keeps them in the state dict for smp.Unet."""
    torch.manual_seed(0)
    model = SmpBackbone(1, 4, encoder_name=encoder, encoder_depth=depth, decoder_channels=DECODER[-depth:])
    if unused_stages is not None:
        assert {name.split(".")[0] for name in model.unused_encoder_parameters} == unused_stages
    frozen = {f"encoder.{name}" for name in model.unused_encoder_parameters}
    assert frozen <= set(model.state_dict())
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    assert all(int(b) == 0 for n, b in model.named_buffers() if n.endswith("num_batches_tracked"))  # eval-mode probe
    assert model.training
    x = torch.randn(2, 1, 64, 64)
    features = model.forward_features(x)
    loss = model(x).sum() + features["bottleneck"].sum() + sum(m.sum() for m in features["decoder"])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)


def test_settings_that_cannot_work_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"(?s)'resnet181' is not an encoder .*closest: resnet18, "):
        SmpBackbone(1, 4, encoder_name="resnet181")
    with pytest.raises(ConfigError, match="backbone.encoder_depth"):
        SmpBackbone(1, 4, encoder_depth=6)
    with pytest.raises(ConfigError, match=r"needs one width per decoder block \(5\)"):
        SmpBackbone(1, 4, decoder_channels=[16, 8, 8])
    with pytest.raises(ConfigError, match="backbone.arch"):
        SmpBackbone(1, 4, arch="fpn")


@pytest.mark.parametrize("encoder", ["resnet18", "efficientnet-b0"])
def test_transfer_moves_exactly_the_encoder_and_decoder(encoder: str) -> None:
    source, target = _backbone(encoder, seed=0), _backbone(encoder, seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    state = source.transferable_state_dict()
    assert set(state) == {k for k in source.state_dict() if k.startswith(TRANSFER_PREFIXES)}
    assert {k.split(".")[0] for k in source.state_dict()} == {"encoder", "decoder", "classifier"}
    loaded = transfer_weights(target, state)
    assert loaded == sorted(state)
    after = target.state_dict()
    for key, value in after.items():
        if key.startswith(TRANSFER_PREFIXES):
            assert torch.equal(value, source.state_dict()[key]), key
        else:  # the classifier stays as it was, and it was initialised differently
            assert key.startswith("classifier.") and torch.equal(value, before[key]), key
    assert not torch.equal(after["classifier.0.weight"], source.state_dict()["classifier.0.weight"])
    weights = [k for k, v in after.items() if k.startswith(TRANSFER_PREFIXES) and v.is_floating_point()
               and not k.endswith(("running_mean", "running_var"))]
    assert any(not torch.equal(before[k], after[k]) for k in weights)  # the values did move
    with pytest.raises(DataError, match="differ in shape"):  # other decoder widths
        transfer_weights(_backbone(encoder, decoder_channels=(64, 32, 16, 16, 8)), state)


@pytest.mark.parametrize("encoder", ["resnet18", "efficientnet-b0"])
def test_rgb_encoder_weights_load_into_a_grey_encoder_summed_over_rgb(encoder: str, tmp_path: Path) -> None:
    first_conv = ENCODERS[encoder][0]
    rgb = _backbone(encoder, in_channels=3, seed=3)
    torch.save(rgb.encoder.state_dict(), tmp_path / "rgb.pth")
    grey = _backbone(encoder, in_channels=1, seed=4, encoder_weights=str(tmp_path / "rgb.pth"))
    source, loaded = rgb.encoder.state_dict(), grey.encoder.state_dict()
    assert loaded[first_conv].shape[1] == 1
    assert torch.allclose(loaded[first_conv], source[first_conv].sum(dim=1, keepdim=True))
    assert all(torch.equal(loaded[k], source[k]) for k in loaded if k != first_conv)
    # the decoder and classifier keep their own initialisation
    fresh = _backbone(encoder, in_channels=1, seed=4)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in grey.state_dict().items()
               if not k.startswith("encoder."))


def test_grey_encoder_weights_load_as_they_are_and_a_whole_model_gives_its_encoder(tmp_path: Path) -> None:
    grey = _backbone(seed=5)
    torch.save(grey.encoder.state_dict(), tmp_path / "grey.pth")
    torch.save(grey.state_dict(), tmp_path / "model.pth")  # encoder., decoder. and classifier. keys
    for name in ("grey.pth", "model.pth"):
        loaded = _backbone(seed=6, encoder_weights=str(tmp_path / name))
        assert all(torch.equal(v, grey.encoder.state_dict()[k]) for k, v in loaded.encoder.state_dict().items())


def test_rgb_weights_for_two_channels_are_repeated_and_scaled(tmp_path: Path) -> None:
    rgb = _backbone(in_channels=3, seed=7)
    torch.save(rgb.encoder.state_dict(), tmp_path / "rgb.pth")
    two = _backbone(in_channels=2, encoder_weights=str(tmp_path / "rgb.pth"))
    weight = rgb.encoder.state_dict()["conv1.weight"]
    assert torch.allclose(two.encoder.state_dict()["conv1.weight"], weight[:, [0, 1]] * 1.5)


def test_weights_files_that_cannot_work_are_refused_naming_the_file(tmp_path: Path) -> None:
    import segmentation_models_pytorch as smp

    torch.save(smp.encoders.get_encoder("efficientnet-b0", in_channels=3).state_dict(), tmp_path / "effnet.pth")
    with pytest.raises(DataError, match=r"effnet.pth: does not hold resnet18 encoder weights: .* are missing"):
        _backbone(encoder_weights=str(tmp_path / "effnet.pth"))
    torch.save(_backbone(in_channels=1).encoder.state_dict(), tmp_path / "grey.pth")
    with pytest.raises(DataError, match=r"grey.pth: .* differ in shape \(first: conv1.weight"):
        _backbone(in_channels=3, encoder_weights=str(tmp_path / "grey.pth"))  # no rule makes RGB from grey
    torch.save({"conv1.weight": "not a tensor"}, tmp_path / "odd.pth")
    with pytest.raises(DataError, match="odd.pth: is not a state dict"):
        _backbone(encoder_weights=str(tmp_path / "odd.pth"))
    with pytest.raises(ConfigError, match="is neither null, imagenet nor a file"):
        _backbone(encoder_weights=str(tmp_path / "absent.pth"))
    write_crafted_checkpoint(tmp_path / "evil.pth", tmp_path / "payload-ran")
    with pytest.raises(DataError, match="evil.pth: refused: loading it would run code"):
        _backbone(encoder_weights=str(tmp_path / "evil.pth"))
    assert not (tmp_path / "payload-ran").exists()


def test_a_failed_download_is_one_message_naming_the_encoder_and_a_local_file(monkeypatch) -> None:
    import segmentation_models_pytorch as smp

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files. Check your connection.")

    monkeypatch.setattr(smp.encoders, "get_encoder", offline)
    with pytest.raises(ConfigError) as info:
        SmpBackbone(1, 4, encoder_weights="imagenet", decoder_channels=DECODER)
    message = str(info.value)
    assert message.startswith("config `backbone.encoder_weights`: imagenet weights of resnet18 could not be "
                              "downloaded (We couldn't connect to 'https://huggingface.co' to load the files)")
    assert "get_encoder('resnet18', depth=5, weights='imagenet')" in message
    assert "backbone.encoder_weights=/path/to/encoder.pth" in message
    with pytest.raises(ConfigError, match="smp has no imagenet weights for resnext101_32x16d"):
        SmpBackbone(1, 4, encoder_name="resnext101_32x16d", encoder_weights="imagenet", decoder_channels=DECODER)


def test_imagenet_weights_are_adapted_to_grey_input(monkeypatch) -> None:
    """What smp downloads (an RGB encoder) goes in as a local file does: summed over RGB."""
    import segmentation_models_pytorch as smp

    reference = smp.encoders.get_encoder("resnet18", in_channels=3, depth=5)
    asked = []

    def download(name, **kwargs):
        asked.append((name, kwargs))
        return reference

    monkeypatch.setattr(smp.encoders, "get_encoder", download)
    model = SmpBackbone(1, 4, encoder_weights="imagenet", decoder_channels=DECODER)
    assert asked == [("resnet18", {"in_channels": 3, "depth": 5, "weights": "imagenet"})]
    assert torch.allclose(model.encoder.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))


@pytest.mark.parametrize("patch", [16, 64])
def test_pool_selection_features_read_an_smp_backbone(patch: int) -> None:
    """Patch features (pscl.select.features) average each map over a cell; the 1/32 bottleneck's
    pixels that straddle 16 px cells count by their overlap."""
    from pscl.select.features import network_features

    model = _backbone("tu-test_efficientnet")
    image = torch.randn(1, 64, 128)
    rows = network_features(model, image, patch)
    assert rows.shape == ((64 // patch) * (128 // patch), model.bottleneck_channels + sum(model.decoder_channels))
    with torch.no_grad():
        features = model.forward_features(image.unsqueeze(0))
    full = [torch.repeat_interleave(torch.repeat_interleave(m[0], s, dim=1), s, dim=2)[:, :64, :128]
            for m, s in zip([features["bottleneck"], *features["decoder"]], (32, 4, 2, 1))]
    expected = torch.cat([torch.nn.functional.avg_pool2d(m[None], patch)[0] for m in full])
    assert np.allclose(rows, expected.flatten(1).T.numpy(), atol=1e-5)
