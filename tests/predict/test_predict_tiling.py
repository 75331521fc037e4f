"""Sliding-window inference: the tile plan, identity with whole-image inference, no seams, TTA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pscl.errors import ConfigError
from pscl.models.unet import UNet
from pscl.predict.tiling import TileSettings, segment, tile_plan, window_count


@pytest.mark.parametrize("length", [16, 100, 511, 512, 513, 700, 1000, 2048, 3001])
@pytest.mark.parametrize("tile,overlap", [(512, 64), (256, 32), (128, 0), (1024, 64)])
def test_tile_plan_covers_the_axis_with_the_asked_overlap(length: int, tile: int, overlap: int) -> None:
    size, stride, count = tile_plan(length, tile, overlap)
    if length <= tile:
        assert (size, stride, count) == (length, length, 1)
        return
    starts = [min(i * stride, length - size) for i in range(count)]
    assert size <= tile and size % 8 == 0
    assert starts[0] == 0 and starts[-1] + size == length  # covered end to end
    assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))  # overlap at least `overlap`
    # the fewest windows: one fewer of the largest size could not cover the axis with that overlap
    assert (count - 1) * (tile - overlap) + overlap < length


def test_tile_plan_of_a_2048_side_uses_smaller_windows_than_the_limit() -> None:
    assert tile_plan(2048, 512, 64) == (464, 396, 5)
    assert window_count(2048, 2048, TileSettings(tile=512, overlap=64)) == 25


@pytest.mark.parametrize("bad", [dict(tile=8), dict(tile=512, overlap=256), dict(overlap=-1), dict(batch_size=0),
                                 dict(blend="median")])
def test_tile_settings_refuse_bad_values(bad: dict) -> None:
    with pytest.raises(ConfigError):
        TileSettings(**bad)


def _unet(seed: int = 0, in_channels: int = 1) -> UNet:
    torch.manual_seed(seed)
    model = UNet(in_channels, 3, widths=(8, 16, 16, 32)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


def test_an_image_that_fits_in_one_tile_gives_whole_image_inference_exactly() -> None:
    model = _unet()
    image = torch.randn(1, 72, 90)
    classes, probs = segment(model, image, TileSettings(tile=96, overlap=16), keep_probabilities=True)
    with torch.no_grad():
        logits = model(image[None])
    assert torch.equal(classes, logits.argmax(1)[0].to(torch.uint8))
    assert torch.equal(probs, torch.softmax(logits, 1)[0])


class _Constant(nn.Module):
    """Predicts the same logits at every pixel, whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.tensor([0.3, 1.2, -0.5]).view(1, 3, 1, 1)
        return logits.expand(x.shape[0], 3, *x.shape[-2:]).clone()


def test_no_seams_a_constant_network_gives_a_constant_map_across_tile_borders() -> None:
    settings = TileSettings(tile=64, overlap=16, batch_size=3)
    image = torch.randn(1, 150, 203)
    assert window_count(150, 203, settings) > 6
    _, probs = segment(_Constant(), image, settings, keep_probabilities=True)
    expected = torch.softmax(torch.tensor([0.3, 1.2, -0.5]), 0).view(3, 1, 1).expand_as(probs)
    assert torch.allclose(probs, expected, atol=1e-6)


def _pointwise(seed: int = 1) -> nn.Module:
    """A per-pixel network: no borders effects, so tiled and whole-image inference must agree."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 1), nn.Tanh(), nn.Conv2d(8, 3, 1)).eval()


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_tiles_are_put_back_in_place(blend: str) -> None:
    model = _pointwise()
    image = torch.randn(1, 130, 171)
    settings = TileSettings(tile=48, overlap=8, batch_size=4, blend=blend)
    classes, probs = segment(model, image, settings, keep_probabilities=True)
    with torch.no_grad():
        whole = torch.softmax(model(image[None]), 1)[0]
    assert torch.allclose(probs, whole, atol=1e-5)
    assert torch.equal(classes, whole.argmax(0).to(torch.uint8))


def test_the_batch_size_does_not_change_the_result() -> None:
    model = _unet(2)
    image = torch.randn(1, 100, 140)
    one = segment(model, image, TileSettings(tile=48, overlap=8, batch_size=1), keep_probabilities=True)[1]
    many = segment(model, image, TileSettings(tile=48, overlap=8, batch_size=5), keep_probabilities=True)[1]
    assert torch.allclose(one, many, atol=1e-5)


def test_a_unet_tiled_mostly_agrees_with_whole_image_inference() -> None:
    model = _unet(3)
    image = torch.randn(1, 160, 160)
    tiled, _ = segment(model, image, TileSettings(tile=96, overlap=32))
    whole, _ = segment(model, image, TileSettings(tile=160, overlap=16))
    assert (tiled == whole).float().mean() > 0.9


def test_tta_maps_every_view_back() -> None:
    model = _pointwise(4)  # a per-pixel network gives the same answer in every orientation
    image = torch.randn(1, 40, 56)  # not square: rotated views have another shape
    plain = segment(model, image, TileSettings(tile=64, overlap=8), keep_probabilities=True)[1]
    for tile in (64, 24):  # whole views, and tiled views
        tta = segment(model, image, TileSettings(tile=tile, overlap=4, tta=True), keep_probabilities=True)[1]
        assert tta.shape == (3, 40, 56)
        assert torch.allclose(tta, plain, atol=1e-5)


def test_tta_of_an_orientation_dependent_network_averages_the_views() -> None:
    model = _unet(5)
    image = torch.randn(1, 48, 48)
    tta = segment(model, image, TileSettings(tile=64, overlap=8, tta=True), keep_probabilities=True)[1]
    views = []
    with torch.no_grad():
        for flip in (False, True):
            for turns in range(4):
                view = torch.rot90(image[None].flip(-1) if flip else image[None], turns, dims=(-2, -1))
                probs = torch.rot90(torch.softmax(model(view), 1), -turns, dims=(-2, -1))
                views.append(probs.flip(-1) if flip else probs)
    assert torch.allclose(tta, torch.stack(views).mean(0)[0], atol=1e-5)
    assert not torch.allclose(tta, views[0][0], atol=1e-3)  # the views differ: the average is not one of them


def test_blend_weights_peak_at_the_centre_and_never_vanish() -> None:
    from pscl.predict.tiling import blend_weights

    weights = blend_weights(40, 64, "gaussian")
    assert weights.shape == (40, 64) and float(weights.max()) == pytest.approx(1.0, abs=1e-3)
    assert float(weights.min()) >= 1e-3
    assert torch.allclose(weights, weights.flip(0)) and torch.allclose(weights, weights.flip(1))
    assert weights[20, 32] > weights[20, 50] > weights[20, 63]
    assert torch.equal(blend_weights(8, 8, "constant"), torch.ones(8, 8))
