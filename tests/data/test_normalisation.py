"""``data.normalisation``: ``dataset`` is today's, ``per_image`` ignores brightness and contrast everywhere
(training crops, pretraining views, evaluation, pscl-predict, the TorchScript export)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BACKBONE, CLASSES, _backbone, compose_config, draw_sample
from pscl.data.transforms import normalise_whole_image, standardise_image
from pscl.models.model_file import load_trained_model, save_model

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402

TINY = ["backbone=unet_small", "backbone.widths=[8,16,32,64]", "logger=csv", "data.crop_size=32"]
# brightness and contrast change a * x + b: a = 1/2 keeps the 8-bit levels exact (see _levels)
SCALE, SHIFT = 0.5, 64


def _levels(seed: int = 0, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """An 8-bit grey micrograph with even levels only, so SCALE * k + SHIFT is an exact 8-bit level."""
    image, _ = draw_sample(np.random.default_rng(seed), *size, 3)
    return ((image * 254).round().astype(np.uint8) // 2) * 2


def _changed(levels: np.ndarray) -> np.ndarray:
    return (levels // 2 + SHIFT).astype(np.uint8)  # = SCALE * levels + SHIFT, inside [64, 191]


def _as_float(levels: np.ndarray) -> np.ndarray:
    return (levels.astype(np.float32) / 255)[..., None]


def _logits(network: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        return network(tensor)


# ------------------------------------------------------------------------- the normalisation
def test_per_image_ignores_brightness_and_contrast() -> None:
    image = _as_float(_levels())
    changed = SCALE * image + SHIFT / 255
    assert 0 <= changed.min() and changed.max() <= 1
    a = normalise_whole_image(image, (0.0,), (1.0,), "per_image")
    b = normalise_whole_image(changed, (0.0,), (1.0,), "per_image")
    assert np.allclose(a, b, atol=1e-5)
    network = _backbone()
    logits_a, logits_b = _logits(network, a), _logits(network, b)
    assert torch.allclose(logits_a, logits_b, atol=1e-4)
    assert torch.equal(logits_a.argmax(1), logits_b.argmax(1))
    # dataset statistics do see the change
    assert not np.allclose(normalise_whole_image(image, (0.5,), (0.2,)), normalise_whole_image(changed, (0.5,), (0.2,)))


def test_dataset_normalisation_is_unchanged(make_folder) -> None:
    from pscl.data.datamodule import MicrographDataModule
    from pscl.data.io import read_image

    root = make_folder(n=6, size=(48, 64), splits={"train": [f"img0{i}" for i in range(5)], "test": ["img05"]})
    dm = MicrographDataModule(root=root, crop_size=32, batch_size=2, samples_per_epoch=4)
    dm.setup()
    assert dm.normalisation == "dataset"
    train = np.stack([read_image(root / "images" / f"img0{i}.png", 1) for i in range(5)])
    mean, std = float(train.mean()), float(train.std())
    assert dm.mean == pytest.approx((mean,), abs=1e-6) and dm.std == pytest.approx((std,), abs=1e-6)
    test = read_image(root / "images" / "img05.png", 1)
    item = dm.whole_image_dataset(["img05"])[0]["image"]
    assert torch.allclose(item, torch.from_numpy((test - mean) / std).permute(2, 0, 1), atol=1e-5)
    # the training crops are today's pipeline, bit for bit
    before = A.Compose([A.RandomCrop(height=32, width=32, p=1.0), A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0),
                        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.8),
                        A.Normalize(mean=dm.mean, std=dm.std, max_pixel_value=1.0, p=1.0)])
    now = dm.labeled_dataset()
    before.set_random_seed(7)
    now.reseed(7)
    image, mask = dm._images[dm.labeled_ids[0]], dm._masks[dm.labeled_ids[0]]
    for _ in range(3):
        assert torch.equal(now[0]["image"], torch.from_numpy(before(image=image, mask=mask)["image"]).permute(2, 0, 1))


def test_a_constant_image_becomes_finite_zeros() -> None:
    from pscl.data.datasets import LabeledDataset
    from pscl.data.transforms import test_transform

    constant = np.full((24, 24, 1), 0.3, np.float32)  # its float32 mean is off by an ulp
    assert np.array_equal(standardise_image(constant), np.zeros_like(constant))
    dataset = LabeledDataset([constant], [np.zeros((24, 24), np.uint8)], ["flat"],
                             test_transform((0.0,), (1.0,), "per_image"), per_image=True)
    image = dataset[0]["image"]
    assert torch.isfinite(image).all() and not image.any()


def test_pretraining_views_are_standardised_with_the_whole_image() -> None:
    from pscl.data.datasets import ViewsDataset
    from pscl.data.views_with_geometry import TwoViews

    image = _as_float(_levels(size=(48, 48)))
    changed = SCALE * image + SHIFT / 255
    items = []
    for source in (image, changed):
        views = TwoViews(32, (0.0,), (1.0,), jitter=0.0, seed=3)  # the data module's mean and std under per_image
        dataset = ViewsDataset([Path("a.png")], ["a"], [0], views, cache={"a": source}, per_image=True)
        items.append(dataset[0])
    for key in ("x0", "x1"):
        assert torch.allclose(items[0][key], items[1][key], atol=1e-4)
    # a crop keeps its place in the image's intensities: not zero mean / unit std by itself
    assert abs(float(items[0]["x0"].mean())) > 1e-3 or abs(float(items[0]["x0"].std()) - 1) > 1e-3


# -------------------------------------------------------------------------------- model files
def _per_image_model(folder: Path) -> Path:
    return save_model(folder / "model.pt", _backbone(seed=1), BACKBONE, CLASSES, (0.0,), (1.0,), "supervised", {},
                      normalisation="per_image")


def test_pscl_predict_applies_the_recorded_normalisation(tmp_path: Path) -> None:
    from pscl.predict.cli import EXIT_OK, run

    model_file = _per_image_model(tmp_path / "run")
    assert load_trained_model(model_file).normalisation == "per_image"
    levels = _levels(seed=2)
    (tmp_path / "images").mkdir()
    Image.fromarray(levels).save(tmp_path / "images" / "original.png")
    Image.fromarray(_changed(levels)).save(tmp_path / "images" / "changed.png")
    assert run([str(model_file), str(tmp_path / "images"), "--out", str(tmp_path / "out")]) == EXIT_OK
    masks = [np.asarray(Image.open(tmp_path / "out" / "masks" / f"{name}.png")) for name in ("original", "changed")]
    assert np.array_equal(masks[0], masks[1]) and len(np.unique(masks[0])) > 1
    record = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert record["normalisation"]["mode"] == "per_image"


def _rewrite(model_file: Path, **changes: object) -> Path:
    blob = torch.load(model_file, weights_only=True)
    for key, value in changes.items():
        if value is None:
            del blob[key]
        else:
            blob[key] = value
    torch.save(blob, model_file)
    return model_file


def test_an_old_model_file_loads_as_dataset_and_a_bad_value_is_refused(tmp_path: Path, capsys) -> None:
    from pscl.predict.cli import EXIT_USER_ERROR, run

    old = _rewrite(_per_image_model(tmp_path / "old"), normalisation=None)
    assert load_trained_model(old).normalisation == "dataset"
    weird = _rewrite(_per_image_model(tmp_path / "weird"), normalisation="weird")
    (tmp_path / "images").mkdir()
    Image.fromarray(_levels()).save(tmp_path / "images" / "m.png")
    assert run([str(weird), str(tmp_path / "images"), "--out", str(tmp_path / "out")]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert str(weird) in err and "'weird'" in err and "Traceback" not in err


def test_the_torchscript_export_standardises_each_image(tmp_path: Path) -> None:
    from pscl.predict.export import run

    model_file = _per_image_model(tmp_path / "run")
    assert run([str(model_file)]) == 0
    contract = json.loads((tmp_path / "run" / "export" / "model.ts.json").read_text())
    assert contract["input"]["normalisation"] == "per_image"
    assert "own per-channel mean" in contract["input"]["normalisation_steps"]
    exported = torch.jit.load(str(tmp_path / "run" / "export" / "model.ts.pt"))
    model = load_trained_model(model_file)
    changed = _as_float(_changed(_levels(seed=4)))
    expected = _logits(model.backbone, normalise_whole_image(changed, model.mean, model.std, model.normalisation))
    x = torch.from_numpy(changed.transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        got = exported(x)
        by_hand = exported.network((exported.standardise(x) - exported.mean) / exported.std)  # the tiling recipe
        flat = exported(torch.full((1, 1, 16, 16), 0.3))
    assert torch.allclose(got, expected, atol=1e-4) and torch.equal(got, by_hand)
    assert torch.isfinite(flat).all()


# -------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("method", [["method=supervised"],
                                    ["method=simclr", "method.pretrain_steps=2", "data.unlabeled_batch_size=2"]],
                         ids=["supervised", "simclr"])
def test_training_with_per_image_records_it_in_the_model(method: list[str], make_folder, tmp_path: Path,
                                                         monkeypatch) -> None:
    import pscl.data.datasets as datasets
    from pscl.training.pipeline import train

    standardised: list[str] = []
    original = datasets._standardise_views
    monkeypatch.setattr(datasets, "_standardise_views",
                        lambda item, image: (standardised.append("views"), original(item, image))[1])
    root = make_folder(n=6)
    cfg = compose_config(["data=folder", f"data.root={root}", *TINY, *method, "trainer.max_epochs=1",
                          "data.samples_per_epoch=4", "data.normalisation=per_image"], tmp_path / "run")
    results = train(cfg)
    assert bool(standardised) == (method[0] == "method=simclr")  # pretraining views, standardised per image
    assert np.isfinite(results["test"]["dice"])
    model = load_trained_model(tmp_path / "run")
    assert (model.normalisation, model.mean, model.std) == ("per_image", (0.0,), (1.0,))


def test_a_bogus_normalisation_is_a_config_error(make_folder, tmp_path: Path, monkeypatch, capsys) -> None:
    from hydra.core.global_hydra import GlobalHydra

    from pscl.training.app import run_cli
    from conftest import _reopen_log_streams

    root = make_folder(n=6)
    monkeypatch.setattr(sys, "argv", ["pscl-train", "data=folder", f"data.root={root}", *TINY,
                                      "data.normalisation=bogus", f"hydra.run.dir={tmp_path / 'run'}"])
    monkeypatch.setenv("PSCL_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("PSCL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    GlobalHydra.instance().clear()
    _reopen_log_streams(monkeypatch)
    assert run_cli() == 2
    err = capsys.readouterr().err
    assert "config `data.normalisation`" in err and "'bogus'" in err and "Traceback" not in err


def test_the_pretraining_key_depends_on_the_normalisation(make_folder, tmp_path: Path) -> None:
    from pscl.training import pretrain_cache

    root = make_folder(n=4)
    pool = sorted((root / "images").glob("*.png"))

    def key(*overrides: str) -> str:
        cfg = compose_config(["data=folder", f"data.root={root}", "method=simclr", *overrides], tmp_path / "run")
        return pretrain_cache.pretraining_key(pretrain_cache.pretraining_config(cfg, pool))

    dataset, per_image = key("data.normalisation=dataset"), key("data.normalisation=per_image")
    assert dataset != per_image and key() == per_image  # per_image is the default
    # dataset keeps the key it had before the setting existed: cached pretrainings stay reusable
    assert dataset == key("~data.normalisation")
