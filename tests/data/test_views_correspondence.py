"""Two-view augmentation and the view-1 / view-2 cell correspondence used by the PSCL patch loss."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pscl.contrastive.correspondence import batch_correspondence, cell_label_scores, correspondence
from pscl.data.views_with_geometry import TwoViews, ViewGeometry, apply_geometry, crop_box, nearest_exact_index, sample_geometry

STRIDES = (4, 2, 1)
# Worst offset (pixels) between paired cells, per stride, for crops snapped to the pixel grid:
# 0.75 cell at stride 4, 0.5 cell at stride 2, half a pixel at stride 1 (see correspondence.py).
TOLERANCE = {4: 3.0 + 1e-3, 2: 1.0 + 1e-3, 1: 0.5 + 1e-3}


# ---------------------------------------------------------------------------------------------
# geometry sampling and the crop rounding rule


def test_sample_geometry_covers_all_symmetries_and_stays_in_range() -> None:
    rng = np.random.default_rng(0)
    draws = [sample_geometry(rng) for _ in range(400)]
    assert {g.rot_k for g in draws} == {0, 1, 2, 3}
    assert {g.flip for g in draws} == {False, True}
    for g in draws:
        top, left, height, width = g.crop
        assert 0.8 <= height <= 1.0 and 0.8 <= width <= 1.0
        assert 0.0 <= top <= 1.0 - height + 1e-12 and 0.0 <= left <= 1.0 - width + 1e-12
    flips = np.mean([g.flip for g in draws])
    assert 0.4 < flips < 0.6


def test_sample_geometry_on_a_pixel_grid() -> None:
    rng = np.random.default_rng(1)
    size = 50
    for _ in range(200):
        g = sample_geometry(rng, 0.8, 1.0, size=size)
        px = np.asarray(g.crop) * size
        np.testing.assert_allclose(px, np.round(px), atol=1e-9)  # whole pixels
        top, left, height, width = np.round(px).astype(int)
        assert 40 <= height <= 50 and 40 <= width <= 50
        assert top + height <= size and left + width <= size
        # the box on the pixel grid is exactly the drawn one
        assert crop_box(g.crop, size) == (top, top + height, left, left + width)
    assert sample_geometry(rng, flip_p=0.0).flip is False
    assert sample_geometry(rng, flip_p=1.0).flip is True
    with pytest.raises(ValueError):
        sample_geometry(rng, crop_min=0.9, crop_max=0.8)


def test_crop_box_rounding_rule() -> None:
    assert crop_box((0.0, 0.0, 1.0, 1.0), 10) == (0, 10, 0, 10)
    # floor of the offset, round-half-up of the size
    assert crop_box((0.25, 0.5, 0.5, 0.26), 8) == (2, 6, 4, 6)
    assert crop_box((0.3, 0.0, 0.8, 0.8125), 8) == (2, 8, 0, 7)  # 6.4 -> 6 rows; 6.5 -> 7 cols
    assert crop_box((0.0, 0.0, 0.01, 0.01), 4) == (0, 1, 0, 1)  # at least one cell
    assert crop_box((0.2, 0.2, 0.9, 0.9), 10) == (2, 10, 2, 10)  # clipped at the border
    # a pixel-snapped crop that went through float32 still lands on its pixel
    top = float(np.float32(17 / 376))
    assert crop_box((top, top, float(np.float32(301 / 376)), 1.0), 376)[:2] == (17, 318)


# ---------------------------------------------------------------------------------------------
# apply_geometry conventions


@pytest.mark.parametrize("flip,rot_k", list(itertools.product([False, True], range(4))))
def test_apply_geometry_flip_then_rot90_matches_torch(flip: bool, rot_k: int) -> None:
    rng = np.random.default_rng(rot_k + 4 * flip)
    image = rng.random((12, 12, 3)).astype(np.float32)
    g = ViewGeometry(flip, rot_k, (0.0, 0.0, 1.0, 1.0))
    expected = torch.from_numpy(image.transpose(2, 0, 1).copy())
    if flip:
        expected = expected.flip(-2)  # rows reversed
    expected = torch.rot90(expected, rot_k, dims=(-2, -1))
    for mode in ("bilinear", "nearest"):
        out = apply_geometry(image, g, mode)
        np.testing.assert_allclose(out.transpose(2, 0, 1), expected.numpy(), atol=1e-6)


def test_apply_geometry_crop_resize_and_shapes() -> None:
    rng = np.random.default_rng(3)
    mask = rng.integers(0, 4, (40, 40)).astype(np.uint8)
    g = ViewGeometry(True, 3, (0.1, 0.05, 0.8, 0.9))
    out = apply_geometry(mask, g, "nearest")
    assert out.shape == (40, 40) and out.dtype == np.uint8
    r0, r1, c0, c1 = crop_box(g.crop, 40)
    region = np.rot90(mask[::-1], 3)[r0:r1, c0:c1]
    # centre-aligned nearest: output pixel i samples source floor((i + 0.5) * in / out)
    rows = np.floor((np.arange(40) + 0.5) * (r1 - r0) / 40 + 1e-9).astype(int)
    cols = np.floor((np.arange(40) + 0.5) * (c1 - c0) / 40 + 1e-9).astype(int)
    np.testing.assert_array_equal(out, region[rows][:, cols])
    # cv2's fixed-point INTER_NEAREST_EXACT agrees except at exact ties
    assert (out == cv2.resize(np.ascontiguousarray(region), (40, 40),
                              interpolation=cv2.INTER_NEAREST_EXACT)).mean() > 0.9
    assert set(np.unique(out)) <= set(np.unique(mask))
    # bilinear keeps (H, W, 1) and matches cv2 on the cropped region
    image = rng.random((40, 40, 1)).astype(np.float32)
    out = apply_geometry(image, g, "bilinear")
    assert out.shape == (40, 40, 1) and out.dtype == np.float32
    region = np.ascontiguousarray(np.rot90(image[::-1], 3)[r0:r1, c0:c1, 0])
    np.testing.assert_allclose(out[..., 0], cv2.resize(region, (40, 40), interpolation=cv2.INTER_LINEAR), atol=1e-6)
    with pytest.raises(ValueError):
        apply_geometry(np.zeros((10, 12), np.float32), g)
    with pytest.raises(ValueError):
        apply_geometry(image, g, "bicubic")


def test_nearest_exact_index_is_centre_aligned() -> None:
    np.testing.assert_array_equal(nearest_exact_index(4, 2), [0, 0, 1, 1])
    np.testing.assert_array_equal(nearest_exact_index(5, 4), [0, 1, 2, 2, 3])  # floor((i + .5) * .8)
    np.testing.assert_array_equal(nearest_exact_index(3, 3), [0, 1, 2])


# ---------------------------------------------------------------------------------------------
# correspondence, checked with images whose pixels hold their own coordinates


def _coords(size: int) -> np.ndarray:
    """(S, S, 2) float32: pixel (r, c) holds (r, c)."""
    rows, cols = np.mgrid[:size, :size].astype(np.float32)
    return np.stack([rows, cols], axis=-1)


def _pool(array: np.ndarray, stride: int) -> np.ndarray:
    """(S, S, 2) -> (grid * grid, 2) mean coordinate of every stride x stride cell."""
    size = array.shape[0]
    grid = size // stride
    return array.reshape(grid, stride, grid, stride, 2).mean(axis=(1, 3)).reshape(grid * grid, 2)


def _pairing_error(size: int, g: ViewGeometry, stride: int, interpolation: str = "nearest",
                   corrupt: str | None = None, pass_size: bool = True) -> float:
    """Largest coordinate gap (pixels) between paired view-1 / view-2 cells; `corrupt` breaks the pairing."""
    coords = _coords(size)
    view2 = apply_geometry(coords, g, interpolation)
    grid = size // stride
    flip, rot_k = g.flip, g.rot_k
    if corrupt == "rot":
        rot_k = (rot_k + 1) % 4
    if corrupt == "flip":
        flip = not flip
    qidx, kidx, (h, w) = correspondence(flip, rot_k, g.crop, grid, image_size=size if pass_size else None)
    assert qidx.shape == kidx.shape == (h * w,)
    if corrupt == "shuffle":
        kidx = kidx[torch.randperm(kidx.numel(), generator=torch.Generator().manual_seed(0))]
    return float(np.abs(_pool(coords, stride)[qidx.numpy()] - _pool(view2, stride)[kidx.numpy()]).max())


def _geometries(size: int, n_random: int = 12) -> list[ViewGeometry]:
    """Every flip x rot_k with full, smallest (0.8) and mixed crops, plus random pixel-snapped ones.

    The fixed crops are not multiples of 1/size (0.8 * 64 = 51.2 pixels), so they need image_size.
    """
    crops = [(0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 0.8, 0.8), (0.2, 0.2, 0.8, 0.8), (0.2, 0.0, 0.8, 1.0),
             (0.0, 0.1, 1.0, 0.8)]
    out = [ViewGeometry(f, k, c) for f, k in itertools.product([False, True], range(4)) for c in crops]
    rng = np.random.default_rng(size)
    out += [sample_geometry(rng, size=size) for _ in range(n_random)]
    return out


@pytest.mark.parametrize("size", [64, 128])
def test_paired_cells_see_the_same_place(size: int) -> None:
    for g in _geometries(size):
        for stride in STRIDES:
            error = _pairing_error(size, g, stride, "nearest")
            assert error <= TOLERANCE[stride], (g, stride, error)


def test_paired_cells_with_bilinear_view2() -> None:
    # the real view 2 is bilinear; its cell means move by at most a fraction of a pixel
    for g in _geometries(64, n_random=6)[::3]:
        for stride in STRIDES:
            assert _pairing_error(64, g, stride, "bilinear") <= TOLERANCE[stride] + 0.1, (g, stride)


@pytest.mark.parametrize("corrupt", ["shuffle", "rot", "flip"])
def test_pairing_check_has_teeth(corrupt: str) -> None:
    failures = 0
    for g in _geometries(64, n_random=4):
        failures += any(_pairing_error(64, g, s, corrupt=corrupt) > TOLERANCE[s] for s in STRIDES)
    assert failures == len(_geometries(64, n_random=4))


def test_snapped_crops_need_no_image_size_but_others_do() -> None:
    rng = np.random.default_rng(9)
    for _ in range(10):
        g = sample_geometry(rng, size=64)
        for grid in (16, 32, 64):
            with_size = correspondence(g.flip, g.rot_k, g.crop, grid, image_size=64)
            without = correspondence(g.flip, g.rot_k, g.crop, grid)
            torch.testing.assert_close(with_size[1], without[1])
    # the fixed 0.8 crops are off the pixel grid: without image_size the pairing drifts past the bound
    drift = [_pairing_error(64, g, s, pass_size=False) > TOLERANCE[s]
             for g in _geometries(64, n_random=0) for s in STRIDES]
    assert any(drift)
    with pytest.raises(ValueError, match="divisible"):
        correspondence(False, 0, (0.0, 0.0, 1.0, 1.0), 16, image_size=60)


def test_paper_resize_rule_would_misalign_coarse_cells() -> None:
    # The authors' kidx (nearest-resize of the view-2 index grid to the crop grid) ignores that the
    # crop box is rounded separately on each grid; it breaks the 1-cell bound at stride 4.
    size, stride = 64, 4
    grid = size // stride
    coords = _coords(size)
    worst = 0.0
    for g in _geometries(size, n_random=20):
        qidx, _, (h, w) = correspondence(g.flip, g.rot_k, g.crop, grid)
        index = torch.arange(grid * grid, dtype=torch.float32).view(1, 1, grid, grid)
        kidx = torch.nn.functional.interpolate(index, size=(h, w), mode="nearest-exact").long().reshape(-1)
        view2 = apply_geometry(coords, g, "nearest")
        gap = np.abs(_pool(coords, stride)[qidx.numpy()] - _pool(view2, stride)[kidx.numpy()]).max()
        worst = max(worst, float(gap))
    assert worst > stride


def test_correspondence_identity_and_structure() -> None:
    qidx, kidx, (h, w) = correspondence(False, 0, (0.0, 0.0, 1.0, 1.0), 16)
    assert (h, w) == (16, 16)
    torch.testing.assert_close(qidx, torch.arange(256))
    torch.testing.assert_close(kidx, torch.arange(256))
    qidx, kidx, (h, w) = correspondence(True, 1, (0.1, 0.05, 0.8, 0.9), 47)
    r0, r1, c0, c1 = crop_box((0.1, 0.05, 0.8, 0.9), 47)
    assert (h, w) == (r1 - r0, c1 - c0) == (38, 42)
    assert qidx.numel() == h * w
    assert qidx.dtype == kidx.dtype == torch.long
    assert qidx.unique().numel() == qidx.numel()  # each view-1 cell at most once
    assert 0 <= int(qidx.min()) and int(qidx.max()) < 47 * 47
    assert 0 <= int(kidx.min()) and int(kidx.max()) < 47 * 47
    # view 2 is the crop enlarged: along each axis its cells advance by one or more per position
    rows = kidx.view(h, w)[:, 0] // 47
    assert bool((rows.diff() >= 0).all()) and int(rows[-1]) == 46
    with pytest.raises(ValueError):
        correspondence(False, 0, (0.0, 0.0, 0.0, 1.0), 8)


def test_batch_correspondence_matches_single() -> None:
    rng = np.random.default_rng(5)
    geoms = [sample_geometry(rng, size=64) for _ in range(5)]
    flip = torch.tensor([g.flip for g in geoms])
    rot_k = torch.tensor([g.rot_k for g in geoms])
    crop = torch.tensor([g.crop for g in geoms], dtype=torch.float32)
    pairs = batch_correspondence(flip, rot_k, crop, 16, image_size=64)
    assert len(pairs) == 5
    for g, (qidx, kidx) in zip(geoms, pairs):
        q, k, _ = correspondence(g.flip, g.rot_k, g.crop, 16, image_size=64)
        torch.testing.assert_close(qidx, q)
        torch.testing.assert_close(kidx, k)
    with pytest.raises(ValueError):
        batch_correspondence(flip, rot_k, crop[:, :3], 16)


# ---------------------------------------------------------------------------------------------
# label scores of crop-grid positions


def test_cell_label_scores_exact_fractions() -> None:
    mask = torch.tensor([[0, 1, 2, 2],
                         [1, 1, 2, 255],
                         [0, 0, 255, 255],
                         [0, 3, 255, 255]])
    qidx = torch.tensor([3, 0, 2, 1])
    scores = cell_label_scores(mask, 2, 4, qidx)
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.0],     # cell (1, 1): all ignored
                             [0.25, 0.75, 0.0, 0.0],   # cell (0, 0)
                             [0.75, 0.0, 0.0, 0.25],   # cell (1, 0)
                             [0.0, 0.0, 0.75, 0.0]])   # cell (0, 1): one ignored pixel
    torch.testing.assert_close(scores, expected)
    whole = cell_label_scores(mask, 1, 4, torch.tensor([0]))
    torch.testing.assert_close(whole, torch.tensor([[4 / 16, 3 / 16, 3 / 16, 1 / 16]]))
    full = cell_label_scores(mask, 4, 4, torch.arange(16))
    torch.testing.assert_close(full.sum(1), (mask.reshape(-1) != 255).float())


def test_cell_label_scores_rows_and_errors() -> None:
    gen = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 4, (32, 32), generator=gen)
    mask[torch.rand(32, 32, generator=gen) < 0.2] = 255
    qidx, _, _ = correspondence(True, 2, (0.1, 0.1, 0.85, 0.9), 8)
    scores = cell_label_scores(mask, 8, 4, qidx)
    assert scores.shape == (qidx.numel(), 4)
    assert bool((scores.sum(1) <= 1 + 1e-6).all()) and bool((scores >= 0).all())
    assert bool((scores.sum(1) < 1 - 1e-6).any())  # ignored pixels count for no class
    with pytest.raises(ValueError, match="divisible"):
        cell_label_scores(mask, 6, 4, qidx)
    bad = mask.clone()
    bad[0, 0] = 7
    with pytest.raises(ValueError):
        cell_label_scores(bad, 8, 4, qidx)


# ---------------------------------------------------------------------------------------------
# TwoViews


def _blobs(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grey image (H, W, 1) in [0, 1] and a matching uint8 mask of three classes."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    for c in (1, 2, 1, 2):
        r, cc = rng.integers(0, size, 2)
        mask[(rows - r) ** 2 + (cols - cc) ** 2 < (size // 5) ** 2] = c
    image = (0.3 + 0.25 * mask + rng.normal(0, 0.02, mask.shape)).clip(0, 1).astype(np.float32)
    return image[..., None], mask


def _geometry(out: dict) -> ViewGeometry:
    return ViewGeometry(bool(out["flip"]), int(out["rot_k"]), tuple(out["crop"].tolist()))


def test_two_views_shapes_dtypes_and_geometry_transport() -> None:
    image, mask = _blobs(80, 0)
    views = TwoViews(64, mean=(0.5,), std=(0.25,), seed=0)
    out = views(image[:, :72], mask[:, :72])
    assert out["x0"].shape == out["x1"].shape == (1, 64, 64)
    assert out["x0"].dtype == out["x1"].dtype == torch.float32
    assert out["flip"].shape == () and out["flip"].dtype == torch.bool
    assert out["rot_k"].shape == () and out["rot_k"].dtype == torch.long
    assert out["crop"].shape == (4,) and out["crop"].dtype == torch.float32
    assert out["mask"].shape == out["mask_view2"].shape == (64, 64)
    assert out["mask"].dtype == out["mask_view2"].dtype == torch.long
    g = _geometry(out)
    np.testing.assert_array_equal(out["mask_view2"].numpy(),
                                  apply_geometry(out["mask"].numpy().astype(np.uint8), g, "nearest"))
    # view-1 mask is the same window as view 1 (image brightness encodes the class here)
    without_jitter = TwoViews(64, mean=(0.5,), std=(0.25,), jitter=0.0, seed=3)
    out = without_jitter(image, mask)
    restored = out["x0"][0].numpy() * 0.25 + 0.5
    assert np.abs(restored - (0.3 + 0.25 * out["mask"].numpy())).max() < 0.12


def test_two_views_normalisation_and_view2_geometry() -> None:
    rng = np.random.default_rng(4)
    image = rng.random((48, 48, 3)).astype(np.float32)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    views = TwoViews(None, mean, std, jitter=0.0, seed=1)
    out = views(image)
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    np.testing.assert_allclose(out["x0"].numpy(), ((image - m) / s).transpose(2, 0, 1), atol=1e-5)
    view2 = apply_geometry(image, _geometry(out), "bilinear")
    np.testing.assert_allclose(out["x1"].numpy(), ((view2 - m) / s).transpose(2, 0, 1), atol=1e-5)
    assert "mask" not in out


def test_two_views_jitter_is_applied_and_bounded() -> None:
    image, _ = _blobs(32, 2)
    plain = (image[..., 0] - 0.5) / 0.25
    views = TwoViews(None, (0.5,), (0.25,), jitter=0.2, jitter_p=1.0, seed=0)
    for _ in range(5):
        out = views(image)
        restored = out["x0"][0].numpy() * 0.25 + 0.5
        assert not np.allclose(out["x0"][0].numpy(), plain, atol=1e-4)
        assert restored.min() >= -1e-6 and restored.max() <= 1 + 1e-6
        # brightness +-0.16 then contrast x[0.84, 1.16]: the view stays an affine copy of the image
        assert np.corrcoef(restored.ravel(), image.ravel())[0, 1] > 0.99
        assert abs(restored.mean() - image.mean()) <= 0.16 + 1e-4


def test_two_views_seeding_and_reseed() -> None:
    image, mask = _blobs(72, 1)
    a = TwoViews(64, (0.5,), (0.25,), seed=7)(image, mask)
    b = TwoViews(64, (0.5,), (0.25,), seed=7)(image, mask)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    views = TwoViews(64, (0.5,), (0.25,), seed=7)
    views.reseed(8)
    c = views(image, mask)
    assert not torch.equal(a["x1"], c["x1"]) or not torch.equal(a["crop"], c["crop"])
    views.reseed(7)
    d = views(image, mask)
    for key in a:
        torch.testing.assert_close(a[key], d[key])


def test_two_views_geometry_ranges_and_coverage() -> None:
    image, mask = _blobs(64, 3)
    views = TwoViews(None, (0.5,), (0.25,), seed=11)
    seen = set()
    for _ in range(120):
        out = views(image)
        top, left, height, width = out["crop"].tolist()
        assert 0.8 - 1e-6 <= height <= 1.0 + 1e-6 and 0.8 - 1e-6 <= width <= 1.0 + 1e-6
        assert top >= 0 and left >= 0 and top + height <= 1 + 1e-6 and left + width <= 1 + 1e-6
        seen.add((bool(out["flip"]), int(out["rot_k"])))
    assert len(seen) == 8


def test_two_views_labels_align_through_correspondence() -> None:
    # end to end at stride 1: view-1 mask at qidx equals view-2 mask at kidx
    image, mask = _blobs(64, 5)
    views = TwoViews(None, (0.5,), (0.25,), seed=2)
    for _ in range(10):
        out = views(image, mask)
        qidx, kidx, _ = correspondence(bool(out["flip"]), int(out["rot_k"]), out["crop"], 64, image_size=64)
        agree = (out["mask"].reshape(-1)[qidx] == out["mask_view2"].reshape(-1)[kidx]).float().mean()
        assert float(agree) >= 0.99


def test_two_views_rejects_bad_input() -> None:
    image, _ = _blobs(64, 0)
    with pytest.raises(ValueError, match="crop_size"):
        TwoViews(None, (0.5,), (0.25,))(image[:, :60])
    with pytest.raises(ValueError):
        TwoViews(80, (0.5,), (0.25,))(image)
    with pytest.raises(ValueError):
        TwoViews(32, (0.5, 0.5), (0.25, 0.25))(np.repeat(image, 3, axis=2))


class _Tiny(Dataset):
    """Four labelled micrographs turned into PSCL views."""

    def __init__(self) -> None:
        self.samples = [_blobs(40, i) for i in range(4)]
        self.views = TwoViews(32, (0.5,), (0.25,), seed=0)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        image, mask = self.samples[index]
        return self.views(image, mask)


def test_two_views_default_collate() -> None:
    batch = next(iter(DataLoader(_Tiny(), batch_size=3, shuffle=False)))
    assert batch["x0"].shape == batch["x1"].shape == (3, 1, 32, 32)
    assert batch["flip"].shape == (3,) and batch["flip"].dtype == torch.bool
    assert batch["rot_k"].shape == (3,) and batch["rot_k"].dtype == torch.long
    assert batch["crop"].shape == (3, 4)
    assert batch["mask"].shape == batch["mask_view2"].shape == (3, 32, 32)
    pairs = batch_correspondence(batch["flip"], batch["rot_k"], batch["crop"], 8, image_size=32)
    assert len(pairs) == 3
