"""Tests of the synthetic micrograph generator and the intensity baseline."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import measure

from pscl.reporting import intensity_baseline as ib
from pscl.data import synthetic as S

SMALL = S.SyntheticSpec(counts=(3, 3, 3), size=128, seed=7)


def _files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return S.write_dataset(tmp_path_factory.mktemp("synth") / "ds", SMALL, progress=False)


@pytest.fixture(scope="module")
def samples() -> dict[int, list[tuple[np.ndarray, np.ndarray]]]:
    """Four 256 px images per group, shared by the statistics tests."""
    spec = S.SyntheticSpec(seed=3)
    return {
        g: [S.generate_micrograph(S._image_rng(spec, g, i), g, 256) for i in range(4)]
        for g in range(len(S.GROUPS))
    }


# --------------------------------------------------------------------------- generator


@pytest.mark.parametrize("group", [0, 1, 2])
def test_generate_shapes_and_values(group: int) -> None:
    image, mask = S.generate_micrograph(np.random.default_rng(0), group, size=128)
    assert image.shape == mask.shape == (128, 128)
    assert image.dtype == mask.dtype == np.uint8
    assert mask.max() <= 3
    assert image.std() > 5  # not a flat image


def test_all_classes_present_at_full_size() -> None:
    for group in range(3):
        _, mask = S.generate_micrograph(np.random.default_rng(100 + group), group)
        assert mask.shape == (376, 376)
        assert set(np.unique(mask)) == {0, 1, 2, 3}, group


def test_generate_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        S.generate_micrograph(np.random.default_rng(0), 3)
    with pytest.raises(ValueError):
        S.generate_micrograph(np.random.default_rng(0), 0, size=8)


def test_class_fractions_per_group(samples) -> None:
    for group, pairs in samples.items():
        hist = sum(np.bincount(m.ravel(), minlength=4) for _, m in pairs)
        frac = hist / hist.sum()
        assert frac[0] > 0.7, (group, frac)
        assert 0.03 < frac[1] < 0.2, (group, frac)
        assert 0.01 < frac[2] < 0.06, (group, frac)
        assert 0.001 < frac[3] < 0.03, (group, frac)
        assert frac[3] == frac.min(), (group, frac)


def test_morphology_evolves_with_holding_time(samples) -> None:
    def network_pieces(g: int) -> float:
        return float(np.mean([measure.label(m == 1, connectivity=2).max() for _, m in samples[g]]))

    def particle_shape(g: int) -> tuple[float, float]:
        props = [
            p
            for _, m in samples[g]
            for p in measure.regionprops(measure.label(m == 2))
            if p.area >= 10
        ]
        eccentricity = float(np.mean([p.eccentricity for p in props]))
        return eccentricity, float(np.mean([p.solidity for p in props]))

    pieces = [network_pieces(g) for g in range(3)]
    assert pieces[0] < pieces[1] < pieces[2], pieces  # continuous -> broken -> spheroidised
    ecc0, sol0 = particle_shape(0)
    ecc2, sol2 = particle_shape(2)
    assert ecc2 < ecc0 - 0.1, (ecc0, ecc2)  # fewer needles
    assert sol2 > sol0 + 0.05, (sol0, sol2)  # rounder particles


def test_classes_overlap_in_intensity(samples) -> None:
    """A per-pixel grey-level rule must not be able to solve the task."""
    pairs = [p for g in range(3) for p in samples[g]]
    train, test = pairs[::2], pairs[1::2]
    lut = ib.fit_intensity_classifier([i for i, _ in train], [m for _, m in train], 4)
    preds = [ib.predict_intensity(lut, i) for i, _ in test]
    dice, per_class = ib.pooled_foreground_dice(preds, [m for _, m in test], 4)
    assert dice < 0.5, per_class


# --------------------------------------------------------------------------- spec and folder


def test_spec_validation_and_cache_key() -> None:
    assert S.SyntheticSpec().cache_key() == S.SyntheticSpec().cache_key()
    assert S.SyntheticSpec(counts=[66, 60, 72]).counts == (66, 60, 72)
    keys = {
        S.SyntheticSpec().cache_key(),
        S.SyntheticSpec(seed=1).cache_key(),
        S.SyntheticSpec(size=256).cache_key(),
        S.SyntheticSpec(counts=(1, 2, 3)).cache_key(),
        S.SyntheticSpec(test_fraction=0.3).cache_key(),
    }
    assert len(keys) == 5
    assert all(k.startswith(f"synthetic-v{S.GENERATOR_VERSION}-") for k in keys)
    for bad in [dict(counts=(1, 2)), dict(counts=(0, 0, 0)), dict(size=4), dict(test_fraction=1.0)]:
        with pytest.raises(ValueError):
            S.SyntheticSpec(**bad)


def test_folder_format(small_dataset: Path) -> None:
    root = small_dataset
    assert (root / "classes.txt").read_text().split() == list(S.CLASS_NAMES)
    with open(root / "meta.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == ["id", "group"]
    ids = [r["id"] for r in rows]
    assert ids == [f"{p}_{i:03d}" for p in ("15", "45", "90") for i in range(3)]
    prefix_to_group = dict(zip(("15", "45", "90"), S.GROUPS))
    assert all(prefix_to_group[r["id"].split("_")[0]] == r["group"] for r in rows)
    for image_id in ids:
        image = np.asarray(Image.open(root / "images" / f"{image_id}.png"))
        mask = np.asarray(Image.open(root / "masks" / f"{image_id}.png"))
        assert image.shape == mask.shape == (128, 128)
        assert image.dtype == mask.dtype == np.uint8 and mask.max() <= 3
    assert sorted(p.stem for p in (root / "images").iterdir()) == sorted(ids)

    splits = json.loads((root / "splits.json").read_text())
    assert splits["train"] == sorted(splits["train"]) and splits["test"] == sorted(splits["test"])
    assert not set(splits["train"]) & set(splits["test"])
    assert set(splits["train"]) | set(splits["test"]) == set(ids)
    for prefix in ("15", "45", "90"):  # round(0.2 * 3) = 1 test image per group
        assert sum(i.startswith(prefix + "_") for i in splits["test"]) == 1

    info = json.loads((root / "synthetic.json").read_text())
    assert info["generator_version"] == S.GENERATOR_VERSION
    assert info["counts"] == [3, 3, 3] and info["size"] == 128 and info["seed"] == 7
    assert S.is_finished_dataset(root)
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_deterministic_and_seed_dependent(tmp_path: Path, small_dataset: Path) -> None:
    again = S.write_dataset(tmp_path / "again", SMALL, progress=False)
    assert _files(again) == _files(small_dataset)
    other = S.write_dataset(
        tmp_path / "other", S.SyntheticSpec(counts=(1, 0, 0), size=128, seed=8), progress=False
    )
    first = "images/15_000.png"
    assert (other / first).read_bytes() != (small_dataset / first).read_bytes()


def test_images_do_not_depend_on_counts(tmp_path: Path, small_dataset: Path) -> None:
    # Per-image seeding: adding images to a group does not change the existing ones.
    spec = S.SyntheticSpec(counts=(1, 0, 2), size=128, seed=7)
    fewer = S.write_dataset(tmp_path / "fewer", spec, progress=False)
    for image_id in ("15_000", "90_000", "90_001"):
        for sub in ("images", "masks"):
            assert (fewer / sub / f"{image_id}.png").read_bytes() == (
                small_dataset / sub / f"{image_id}.png"
            ).read_bytes()


def test_write_refuses_foreign_folder_and_replaces_own(tmp_path: Path) -> None:
    spec = S.SyntheticSpec(counts=(1, 0, 0), size=64)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        S.write_dataset(foreign, spec, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign"]

    empty = tmp_path / "empty"
    empty.mkdir()
    S.write_dataset(empty, spec, progress=False)
    assert S.is_finished_dataset(empty)
    S.write_dataset(empty, S.SyntheticSpec(counts=(0, 1, 0), size=64), progress=False)
    assert sorted(p.stem for p in (empty / "images").iterdir()) == ["45_000"]


def test_ensure_dataset_generates_once(tmp_path: Path, monkeypatch) -> None:
    spec = S.SyntheticSpec(counts=(1, 1, 0), size=64)
    calls: list[Path] = []
    real_write = S.write_dataset

    def counting_write(out, spec=spec, progress=True):
        calls.append(Path(out))
        return real_write(out, spec, progress)

    monkeypatch.setattr(S, "write_dataset", counting_write)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(S.ensure_dataset(tmp_path, spec, False)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [tmp_path / spec.cache_key()] * 4
    marker = tmp_path / spec.cache_key() / "synthetic.json"
    mtime = marker.stat().st_mtime_ns
    assert S.ensure_dataset(tmp_path, spec, progress=False) == results[0]
    assert len(calls) == 1 and marker.stat().st_mtime_ns == mtime


# --------------------------------------------------------------------------- CLI


def test_cli_writes_dataset_stats_and_preview(tmp_path: Path, capsys) -> None:
    out, png = tmp_path / "ds", tmp_path / "preview.png"
    argv = ["--out", str(out), "--counts", "2,2,2", "--size", "64", "--seed", "3"]
    rc = S.main([*argv, "--stats", "--preview", str(png), "--no-progress"])
    assert rc == 0
    table = capsys.readouterr().out
    header = "| group | images | " + " | ".join(S.CLASS_NAMES) + " |"
    assert header in table
    for group in (*S.GROUPS, "all"):
        assert re.search(rf"^\| {re.escape(group)} \| \d+ \|", table, re.M), group
    assert json.loads((out / "synthetic.json").read_text())["seed"] == 3
    assert Image.open(png).size[0] > 200
    # Re-running over a finished dataset is allowed.
    assert S.main([*argv, "--no-progress"]) == 0


@pytest.mark.parametrize(
    "extra",
    [
        ["--counts", "1,2"],
        ["--counts", "a,b,c"],
        ["--size", "0"],
        ["--test-fraction", "1.5"],
        ["--seed", "-1"],
    ],
)
def test_cli_bad_arguments_exit_2(tmp_path: Path, extra: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        S.main(["--out", str(tmp_path / "x"), *extra])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_refuses_foreign_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "mine.txt").write_text("data")
    with pytest.raises(SystemExit) as exc:
        S.main(["--out", str(tmp_path), "--counts", "1,0,0", "--size", "64"])
    assert exc.value.code == 2
    assert "refusing" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_cli_module_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pscl.data.synthetic", "--out", str(tmp_path), "--size", "big"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "--size" in proc.stderr


# --------------------------------------------------------------------------- intensity baseline


def test_intensity_lut_by_hand() -> None:
    images = [
        np.array([[10, 10, 20], [20, 30, 30]], np.uint8),
        np.array([[10, 20, 30], [40, 40, 40]], np.uint8),
    ]
    masks = [
        np.array([[0, 1, 1], [1, 2, 255]], np.uint8),
        np.array([[1, 1, 2], [0, 0, 3]], np.uint8),
    ]
    lut = ib.fit_intensity_classifier(images, masks, num_classes=4)
    assert lut.shape == (256,)
    # 10: {0,1,1} -> 1; 20: {1,1,1} -> 1; 30: {2,2} (255 ignored) -> 2; 40: {0,0,3} -> 0;
    # unseen levels get the most frequent class overall (class 1: 5 of 11 pixels).
    expected = np.full(256, 1, np.uint8)
    expected[30], expected[40] = 2, 0
    np.testing.assert_array_equal(lut, expected)
    np.testing.assert_array_equal(
        ib.predict_intensity(lut, images[1]), np.array([[1, 1, 2], [0, 0, 0]], np.uint8)
    )


def test_pooled_dice_by_hand() -> None:
    preds = [np.array([[0, 1, 1], [2, 2, 3]], np.uint8), np.array([[1, 1], [0, 3]], np.uint8)]
    masks = [np.array([[0, 1, 2], [2, 255, 3]], np.uint8), np.array([[1, 0], [0, 3]], np.uint8)]
    mean, per_class = ib.pooled_foreground_dice(preds, masks, num_classes=4)
    # class 1: |P|=4 |G|=2 inter=2; class 2: |P|=1 (255 ignored) |G|=2 inter=1;
    # class 3: |P|=2 |G|=2 inter=2
    assert per_class == pytest.approx([4 / 6, 2 / 3, 1.0])
    assert mean == pytest.approx((4 / 6 + 2 / 3 + 1.0) / 3)
    # Second image alone: classes 2 and 4 are absent everywhere, so they are left out.
    mean, per_class = ib.pooled_foreground_dice(preds[1:], masks[1:], num_classes=5)
    assert per_class[0] == pytest.approx(2 / 3) and per_class[2] == pytest.approx(1.0)
    assert np.isnan(per_class[1]) and np.isnan(per_class[3])
    assert mean == pytest.approx((2 / 3 + 1.0) / 2)


def test_evaluate_folder(tmp_path: Path, small_dataset: Path, capsys) -> None:
    result = ib.evaluate_folder(small_dataset)
    assert result["n_train"] == 6 and result["n_test"] == 3
    assert list(result["dice_per_class"]) == list(S.CLASS_NAMES[1:])
    assert 0.0 <= result["foreground_dice"] < 1.0

    # A folder whose grey level encodes the class exactly is solved perfectly.
    root = tmp_path / "toy"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("a\nb\nc\n")
    rng = np.random.default_rng(0)
    for name in ("t0", "t1", "v0"):
        mask = rng.integers(0, 3, (8, 8)).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
        Image.fromarray((mask * 80 + 10).astype(np.uint8)).save(root / "images" / f"{name}.png")
    (root / "splits.json").write_text(json.dumps({"train": ["t0", "t1"], "test": ["v0"]}))
    assert ib.evaluate_folder(root)["foreground_dice"] == pytest.approx(1.0)
    assert ib.main([str(root)]) == 0
    assert "foreground mean dice" in capsys.readouterr().out
