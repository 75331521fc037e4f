"""The paper's UNet: shapes at every scale, parameter count, interface, weight transfer keys."""

from __future__ import annotations

import pytest
import torch

from pscl.errors import ConfigError
from pscl.models.base import TRANSFER_PREFIXES
from pscl.models.unet import ChannelLayerNorm, UNet


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_parameter_count() -> None:
    # spec §2: about 2.142 M with 3 input channels and 4 classes, classifier 132 parameters
    model = UNet(in_channels=3, num_classes=4)
    assert abs(count(model) - 2_142_000) < 2_000
    assert count(model.classifier) == 132


@pytest.mark.parametrize("size", [(376, 376), (47, 50), (64, 96)])
def test_feature_shapes_at_every_scale(size: tuple[int, int]) -> None:
    h, w = size
    model = UNet(in_channels=1, num_classes=4, widths=(8, 16, 32, 64)).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 1, h, w))
        logits = model(torch.randn(2, 1, h, w))
    assert feats["bottleneck"].shape == (2, 64, h // 8, w // 8)
    d4, d2, d1 = feats["decoder"]
    assert d4.shape == (2, 32, h // 4, w // 4)
    assert d2.shape == (2, 16, h // 2, w // 2)
    assert d1.shape == (2, 8, h, w)
    assert logits.shape == (2, 4, h, w)
    assert model.decoder_channels == (32, 16, 8) and model.bottleneck_channels == 64


def test_decoder_blocks_end_with_layer_norm_and_encoder_uses_batch_norm() -> None:
    model = UNet(widths=(8, 16, 32, 64))
    for block in (model.decoder.up1, model.decoder.up2, model.decoder.up3):
        assert isinstance(block.conv[1], torch.nn.BatchNorm2d)
        assert isinstance(block.conv[4], ChannelLayerNorm)
    assert not any(isinstance(m, ChannelLayerNorm) for m in model.encoder.modules())


def test_channel_layer_norm_normalises_each_pixel_over_channels() -> None:
    norm = ChannelLayerNorm(6)
    out = norm(torch.randn(2, 6, 5, 7) * 3 + 1)
    torch.testing.assert_close(out.mean(dim=1), torch.zeros(2, 5, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(dim=1, unbiased=False), torch.ones(2, 5, 7), atol=1e-3, rtol=0)


def test_transferable_state_excludes_classifier() -> None:
    model = UNet(widths=(8, 16, 32, 64))
    keys = set(model.transferable_state_dict())
    assert keys and all(k.startswith(TRANSFER_PREFIXES) for k in keys)
    assert not any(k.startswith("classifier") for k in keys)
    assert keys | {"classifier.weight", "classifier.bias"} == set(model.state_dict())


def test_bad_widths() -> None:
    with pytest.raises(ConfigError, match="backbone.widths"):
        UNet(widths=(8, 16, 32))


@pytest.mark.parametrize("options", [{"channels_last": True}, {"checkpoint_blocks": "full_resolution"},
                                     {"checkpoint_blocks": "high_resolution"}, {"checkpoint_blocks": "all"},
                                     {"channels_last": True, "checkpoint_blocks": "all"}])
def test_memory_options_do_not_change_the_maths(options: dict) -> None:
    torch.manual_seed(0)
    plain = UNet(1, 3, widths=(8, 16, 32, 64))
    tuned = UNet(1, 3, widths=(8, 16, 32, 64), **options)
    tuned.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 40, 48)
    out_plain, out_tuned = plain(x), tuned(x)
    torch.testing.assert_close(out_tuned, out_plain, atol=1e-5, rtol=1e-4)
    out_plain.square().mean().backward()
    out_tuned.square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), tuned.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-3, msg=name)
    # recomputation in backward must not update BatchNorm's running statistics a second time
    for (name, a), (_, b) in zip(plain.named_buffers(), tuned.named_buffers()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=name)


def test_checkpointing_actually_recomputes() -> None:
    """With every block checkpointed, each block's forward runs twice per training step."""
    calls = {"n": 0}
    model = UNet(1, 3, widths=(8, 16, 32, 64), checkpoint_blocks="all")
    # a pre-hook: the recomputation may stop early, before forward hooks would run
    model.encoder.down2.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    assert calls["n"] == 2
    with torch.no_grad():  # inference keeps nothing for backward, so nothing to recompute
        model(torch.randn(2, 1, 32, 32))
    assert calls["n"] == 3


def test_bad_checkpoint_choice() -> None:
    with pytest.raises(ConfigError, match="backbone.checkpoint_blocks"):
        UNet(widths=(8, 16, 32, 64), checkpoint_blocks="some")


@pytest.mark.parametrize("choice,expected", [("none", 0), ("full_resolution", 2), ("high_resolution", 4), ("all", 7)])
def test_each_checkpoint_choice_recomputes_its_blocks(choice: str, expected: int, monkeypatch) -> None:
    from pscl.models import unet as unet_module

    calls = []

    def counting(block, *inputs, **kwargs):
        calls.append(type(block).__name__)
        return block(*inputs)

    monkeypatch.setattr(unet_module, "checkpoint_block", counting)
    model = UNet(1, 3, widths=(8, 16, 32, 64), checkpoint_blocks=choice)
    model(torch.randn(1, 1, 32, 32)).sum().backward()
    assert len(calls) == expected
