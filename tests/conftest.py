"""Shared fixtures: tiny data folders written on the fly, and Hydra configs composed for tests;
below them, the helpers that test modules in several folders share."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    import torch
    from pscl.models.unet import UNet
    from pscl.modules.pscl import PSCLModule

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

SHARED_NASA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nasa_superalloy"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@contextmanager
def benchmark_modules(*names: str) -> Iterator[tuple[ModuleType, ...]]:
    """The named ``benchmarks/`` scripts (not a package) imported as modules, with the folder on
    ``sys.path`` only while the context is open."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield tuple(importlib.import_module(name) for name in names)
    finally:
        sys.path.remove(str(BENCHMARKS))


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


# Helpers that test modules in several folders share (from conftest import ...); a test module
# never imports another test module, so each runs alone and from any folder.

# A small seeded UNet with trained-like BatchNorm statistics, and loose images, for pscl-predict and
# pscl-export (tests/predict, tests/bad_inputs, tests/data/test_normalisation.py).
CLASSES = ("matrix", "phase1", "phase2")
BACKBONE = {"_target_": "pscl.models.unet.UNet", "widths": [8, 16, 16, 32], "channels_last": False,
            "checkpoint_blocks": "none"}


def _backbone(in_channels: int = 1, seed: int = 0) -> UNet:
    import torch

    from pscl.models.unet import UNet

    torch.manual_seed(seed)
    return with_trained_batchnorm(UNet(in_channels, len(CLASSES), widths=BACKBONE["widths"]))


def with_trained_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with non-trivial BatchNorm statistics, as after training (drawn from
    the global torch generator)."""
    import torch
    from torch import nn

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(10)
    return model.eval()


def _images(folder: Path, n: int = 3, size: tuple[int, int] = (48, 64)) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        image, _ = draw_sample(rng, *size, 3)
        paths.append(folder / f"m{i}.png")
        write_image(paths[-1], image)
    return paths


# Files and configs that run code when read unsafely (tests/integrity, tests/bad_inputs).
class _Payload:
    """Pickles to a call of ``Path.touch(marker)``: loading it unsafely creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def write_crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A ``pretrained.pt`` look-alike whose pickle runs code (touches ``marker``) when loaded unsafely."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"backbone": {"encoder.w": torch.zeros(2)}, "meta": _Payload(marker)}, path)
    return path


def hub_repo(folder: Path, marker: Path) -> Path:
    """A local torch.hub repository whose ``hubconf.py`` creates ``marker`` when it is imported."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hubconf.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n\n"
        "def m(*args, **kwargs):\n    raise RuntimeError('the hub model itself')\n")
    return folder


def hub_config(tmp_path: Path, marker: Path) -> dict:
    """A backbone config that starts with ``pscl.models.`` but reaches ``torch.hub.load``."""
    return {"_target_": "pscl.models.unet.torch.hub.load", "repo_or_dir": str(hub_repo(tmp_path / "hub", marker)),
            "model": "m", "source": "local"}


def nested_config(marker: Path) -> dict:
    """A real backbone whose setting is a nested node that opens (creates) ``marker``."""
    return {"_target_": "pscl.models.unet.UNet",
            "widths": {"_target_": "builtins.open", "file": str(marker), "mode": "w"}}


def _reopen_log_streams(monkeypatch) -> None:
    """Point log handlers left on an earlier test's closed capture (Lightning adds one to its logger
    at import) at this test's stderr, so that a run that trains logs instead of printing
    "--- Logging error ---" with a traceback."""
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in logging.root.manager.loggerDict)]
    for handler in {h for logger in loggers for h in getattr(logger, "handlers", [])}:
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            monkeypatch.setattr(handler, "stream", sys.stderr)


# Interrupted and resumed runs (tests/runs/test_resume.py, tests/e2e/test_resume_kill.py,
# tests/data/test_labeled_ids.py).
TINY_SYNTH = ["data.synthetic.counts=[2,2,2]", "data.synthetic.size=96", "data.crop_size=64",
              "data.unlabeled_batch_size=3", "backbone=unet_small", "backbone.widths=[8,16,32,64]", "logger=csv",
              "data.samples_per_epoch=4", "data.batch_size=2", "trainer.deterministic=true",
              "checkpoint.pretrain_every_n_epochs=1", "checkpoint.finetune_every_n_epochs=1",
              "method.pretrain_epochs=4", "trainer.max_epochs=4"]


class Interrupted(RuntimeError):
    """Stands in for a kill."""


def comparable(metrics: dict) -> dict:
    """What must not change with an interruption: the reported metrics (no timings, no paths)."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("seconds", "wall_time_s")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    keys = ("test", "probe", "snapshots", "test_history", "labeled_ids", "transferred_keys")
    return strip({k: metrics[k] for k in keys if k in metrics})


def interrupt_at_epoch(module_class: type, epoch: int, monkeypatch) -> None:
    """``module_class`` raises :class:`Interrupted` at the first step of ``epoch``, once."""
    original = module_class.training_step
    fired = []

    def training_step(self, batch, batch_idx):
        if self.current_epoch == epoch and not fired:
            fired.append(True)
            raise Interrupted(f"simulated kill at epoch {epoch}")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(module_class, "training_step", training_step)


# A PSCL pretraining batch (tests/modules/test_pscl.py, tests/contrastive/test_bf16.py).
WIDTHS = (8, 16, 32, 64)


def make_batch(module: PSCLModule, size: int = 64, unlabeled: int = 3, seed: int = 0) -> dict:
    """A pretraining batch built with the module's own views from random micrograph-like images."""
    import numpy as np
    from torch.utils.data import default_collate

    rng = np.random.default_rng(seed)
    views = module.views((0.5,), (0.2,), size)
    views.reseed(seed)
    mask = np.zeros((size, size), np.uint8)
    mask[: size // 2, : size // 2] = 1
    mask[size // 2:, size // 2:] = 2
    mask[: size // 4, size // 2:] = 3
    image = (0.3 + 0.15 * mask + 0.05 * rng.standard_normal((size, size))).astype(np.float32)[..., None]
    labeled = views(image, mask)
    labeled["group"] = 0
    items = []
    for b in range(unlabeled):
        other = np.roll(image, shift=(7 * b, 5 * b), axis=(0, 1))
        item = views(other)
        item["group"] = b % 2
        items.append(item)
    return {"labeled": default_collate([labeled]), "unlabeled": default_collate(items)}


# pscl-predict and pscl-export on a trained run (tests/predict/test_predict*.py, test_export*.py).
def assert_predict_gives_the_runs_test_predictions(run_dir: Path, root: Path, results: dict, tmp_path: Path) -> None:
    """pscl-predict on the run's test images, from the run folder and from its last checkpoint,
    writes the masks the run wrote in ``predictions/``, pixel for pixel, and they score the run's
    test Dice."""
    import torch

    from pscl.metrics import SegmentationMetrics
    from pscl.models.model_file import load_trained_model
    from pscl.predict.cli import EXIT_OK, run

    test_ids = sorted(p.stem for p in (run_dir / "predictions").glob("*.png"))
    assert test_ids
    images = [str(root / "images" / f"{i}.png") for i in test_ids]
    for source, out in ((run_dir, tmp_path / "out"), (run_dir / "checkpoints" / "last.ckpt", tmp_path / "out_ckpt")):
        assert run([str(source), *images, "--out", str(out)]) == EXIT_OK
        metrics = SegmentationMetrics(load_trained_model(source).class_names)
        for i in test_ids:
            predicted = np.array(Image.open(out / "masks" / f"{i}.png"))
            assert np.array_equal(predicted, np.asarray(Image.open(run_dir / "predictions" / f"{i}.png")))
            truth = np.array(Image.open(root / "masks" / f"{i}.png"))
            metrics.update(torch.from_numpy(predicted).long()[None], torch.from_numpy(truth).long()[None])
        assert metrics.compute()["dice"] == results["test"]["dice"]


# the child process cannot import pscl: the module name is blocked before anything else runs
_EXPORTED_CHILD = """
import sys
sys.modules["pscl"] = None
import torch
try:
    import pscl  # noqa: F401
    raise SystemExit("pscl is importable in the child")
except ImportError:
    pass
model = torch.jit.load(sys.argv[1])
inputs = torch.load(sys.argv[2])
torch.save([model(x) for x in inputs], sys.argv[3])
"""


def run_exported_without_pscl(exported: Path, inputs: Sequence, tmp_path: Path) -> list:
    """The outputs of a TorchScript export on each of ``inputs``, computed by a child Python
    process that cannot import pscl (plain PyTorch only)."""
    import torch

    torch.save(list(inputs), tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", _EXPORTED_CHILD, str(exported), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                   check=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return torch.load(tmp_path / "y.pt")
