"""Shared fixtures: tiny data folders written on the fly, and Hydra configs composed for tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SHARED_NASA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nasa_superalloy"


def draw_sample(rng: np.random.Generator, height: int, width: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A grey image with bright discs (class 1) and dark squares (class 2, ...) on a mid-grey matrix."""
    mask = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for c in range(1, num_classes):
        for _ in range(3):
            cy, cx = rng.integers(0, height), rng.integers(0, width)
            r = rng.integers(4, max(5, min(height, width) // 6))
            if c % 2:
                mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = c
            else:
                mask[(abs(yy - cy) <= r) & (abs(xx - cx) <= r)] = c
    levels = np.linspace(0.45, 0.9, num_classes)[np.r_[0, np.arange(num_classes - 1, 0, -1)]]
    image = levels[mask] + rng.normal(0, 0.04, mask.shape)
    return np.clip(image, 0, 1), mask


def write_image(path: Path, image01: np.ndarray, bits: int = 8, rgb: bool = False) -> None:
    """Save a [0, 1] grey image as 8/16-bit grey or RGB in the format given by the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 16:
        array = (image01 * 65535).round().astype(np.uint16)
    else:
        array = (image01 * 255).round().astype(np.uint8)
    if rgb:
        array = np.repeat(array[..., None], 3, axis=-1)
    if path.suffix.lower() in {".tif", ".tiff"}:
        import tifffile

        tifffile.imwrite(path, array)
    else:
        Image.fromarray(array).save(path)


@pytest.fixture
def make_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory for a pscl-format data folder; returns its root."""

    def make(name: str = "data", n: int = 8, size: tuple[int, int] = (64, 80), num_classes: int = 3,
             suffix: str = ".png", bits: int = 8, rgb: bool = False, splits: dict | None = None,
             groups: Sequence[str] | None = None, unlabeled: int = 0, seed: int = 0) -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(seed)
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        for i in range(n):
            image, mask = draw_sample(rng, *size, num_classes)
            write_image(root / "images" / f"img{i:02d}{suffix}", image, bits, rgb)
            Image.fromarray(mask).save(root / "masks" / f"img{i:02d}.png")
        for i in range(unlabeled):
            image, _ = draw_sample(rng, *size, num_classes)
            write_image(root / "unlabeled" / f"extra{i:02d}.png", image)
        (root / "classes.txt").write_text("\n".join(["matrix"] + [f"phase{c}" for c in range(1, num_classes)]) + "\n")
        if groups:
            lines = ["id,group"] + [f"img{i:02d},{groups[i % len(groups)]}" for i in range(n)]
            (root / "meta.csv").write_text("\n".join(lines) + "\n")
        if splits is not None:
            (root / "splits.json").write_text(json.dumps(splits))
        return root

    return make


def compose_config(overrides: Sequence[str], output_dir: Path):
    """The real `train` config composed with `overrides`, writing into `output_dir`."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pscl.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir.parent / "logs")
        cfg.paths.cache_dir = str(output_dir.parent / "cache")
    return cfg


def run_cli(args: Sequence[str], cwd: Path, cache: Path | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    """``pscl-train ARGS`` in a subprocess, logging under ``cwd/logs``, without Hydra's full tracebacks."""
    env = {**os.environ, "PSCL_LOG_DIR": str(cwd / "logs"), "PSCL_CACHE_DIR": str(cache or cwd / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "pscl.train", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def texture_sample(rng: np.random.Generator, size: int, num_classes: int = 3,
                   cells: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A grey image whose classes differ by texture only: every class has the same mean and std.

    Regions are Voronoi cells with random classes; class 0 is fine-grained noise, class 1
    coarse-grained noise, class 2 a two-level speckle, all invariant to flips and rot90 (the
    views of PSCL), so a rotation-invariant representation can still tell them apart.
    """
    from scipy.ndimage import gaussian_filter

    yy, xx = np.mgrid[:size, :size]
    seeds = rng.uniform(0, size, (cells, 2))
    nearest = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    classes = np.r_[np.arange(num_classes), rng.integers(0, num_classes, cells - num_classes)]
    mask = rng.permutation(classes)[nearest].astype(np.uint8)

    def standardised(field: np.ndarray) -> np.ndarray:
        return (field - field.mean()) / (field.std() + 1e-8)

    fine = standardised(gaussian_filter(rng.normal(size=(size, size)), 0.6))
    coarse = standardised(gaussian_filter(rng.normal(size=(size, size)), 2.5))
    speckle = standardised(np.sign(gaussian_filter(rng.normal(size=(size, size)), 1.2)))
    textures = [fine, coarse, speckle][:num_classes]
    image = np.choose(mask, textures)
    return np.clip(0.5 + 0.15 * image, 0, 1), mask


def write_texture_folder(root: Path, n_train: int = 24, n_test: int = 6, size: int = 96, seed: int = 0) -> Path:
    """A pscl data folder of :func:`texture_sample` images with a fixed train/test split."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = [f"tex{i:03d}" for i in range(n_train + n_test)]
    for sample_id in ids:
        image, mask = texture_sample(rng, size)
        write_image(root / "images" / f"{sample_id}.png", image)
        Image.fromarray(mask).save(root / "masks" / f"{sample_id}.png")
    (root / "classes.txt").write_text("fine\ncoarse\nspeckle\n")
    (root / "splits.json").write_text(json.dumps({"train": ids[:n_train], "test": ids[n_train:]}))
    return root


def tree_hashes(*folders: Path) -> dict[str, str]:
    """``{path: sha256}`` of every file under ``folders`` (absent folders hold none): compare before
    and after a command to show that it changed, added and removed nothing there."""
    import hashlib

    hashes = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")) if Path(folder).exists() else []:
            if path.is_file():
                hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes
