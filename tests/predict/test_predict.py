"""pscl-predict: model files, inputs, bad files, the output folder, units, and the run's own test Dice."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omegaconf import OmegaConf

from conftest import (BACKBONE, CLASSES, _backbone, _images, assert_predict_gives_the_runs_test_predictions,
                      compose_config, draw_sample, write_image)
from pscl.errors import DataError
from pscl.integrity import UnsafeCheckpointError
from pscl.predict.cli import EXIT_OK, EXIT_SOME_FAILED, EXIT_USER_ERROR, run
from pscl.predict.inputs import collect_images, read_meta
from pscl.models.model_file import load_trained_model, save_model


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return save_model(tmp_path / "run" / "model.pt", _backbone(), BACKBONE, CLASSES, (0.55,), (0.2,), "pscl_simclr",
                      {"method": {"name": "pscl_simclr"}})


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------- model files
def test_model_file_round_trip(model_file: Path) -> None:
    model = load_trained_model(model_file)
    assert (model.class_names, model.in_channels, model.mean, model.std, model.method) == (
        CLASSES, 1, (0.55,), (0.2,), "pscl_simclr")
    x = torch.randn(1, 1, 40, 48)
    with torch.no_grad():
        assert torch.equal(model.backbone(x), _backbone()(x))
    assert not model.backbone.training
    assert load_trained_model(model_file.parent).class_names == CLASSES  # the run folder finds model.pt


def _tamper(model_file: Path, **changes: object) -> Path:
    blob = torch.load(model_file, weights_only=True)
    blob.update(changes)
    torch.save(blob, model_file)
    return model_file


def test_a_model_file_cannot_name_another_callable(model_file: Path) -> None:
    _tamper(model_file, backbone_config={"_target_": "os.system", "command": "touch /tmp/pscl_owned"})
    with pytest.raises(DataError, match="not one of the classes pscl builds from a file"):
        load_trained_model(model_file)


def test_weights_that_do_not_fit_the_channels_or_classes_are_refused(model_file: Path) -> None:
    _tamper(model_file, in_channels=3, mean=[0.5] * 3, std=[0.2] * 3)
    with pytest.raises(DataError, match=r"do not fit a backbone with 3 input channel\(s\) and 3 classes"):
        load_trained_model(model_file)
    _tamper(model_file, in_channels=1, mean=[0.5], std=[0.2], class_names=["a", "b", "c", "d"])
    with pytest.raises(DataError, match="4 classes"):
        load_trained_model(model_file)


class _Payload:
    def __reduce__(self):  # what a crafted checkpoint does on load
        return (print, ("this must never run",))


def test_a_pickled_file_is_refused_and_nothing_runs(tmp_path: Path, capsys) -> None:
    torch.save({"format": "pscl-model/1", "x": _Payload()}, tmp_path / "model.pt")
    with pytest.raises(UnsafeCheckpointError):
        load_trained_model(tmp_path / "model.pt")
    assert "must never run" not in capsys.readouterr().out


def test_a_folder_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a finished pscl run"):
        load_trained_model(tmp_path)


# ------------------------------------------------------------------------------------ inputs
def test_inputs_are_files_folders_and_globs(tmp_path: Path) -> None:
    paths = _images(tmp_path / "a", 2) + _images(tmp_path / "b" / "deep", 1)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    assert collect_images([str(tmp_path / "a")]) == [p.resolve() for p in paths[:2]]
    assert collect_images([str(tmp_path / "b" / "**" / "*.png")]) == [paths[2].resolve()]
    assert collect_images([str(paths[0]), str(tmp_path / "a")]) == [p.resolve() for p in paths[:2]]  # no repeats
    with pytest.raises(DataError, match="no image files"):
        collect_images([str(tmp_path / "a" / "*.jpg")])
    with pytest.raises(DataError, match="not found"):
        collect_images([str(tmp_path / "missing.png")])


def test_two_images_that_would_write_the_same_outputs_are_refused(tmp_path: Path) -> None:
    _images(tmp_path / "a", 1)
    _images(tmp_path / "b", 1)
    with pytest.raises(DataError, match="same outputs `m0"):
        collect_images([str(tmp_path / "a"), str(tmp_path / "b")])


def test_meta_csv_with_a_bad_pixel_size_names_the_line(tmp_path: Path) -> None:
    meta = tmp_path / "meta.csv"
    meta.write_text("id,group,pixel_size_um\nm0,a,0.5\nm1,b,\nm2,b,-1\n")
    with pytest.raises(DataError, match="line 4: pixel_size_um '-1'"):
        read_meta(meta)
    meta.write_text("id,group,pixel_size_um\nm0,a,0.5\nm1,,\n")
    assert read_meta(meta)["m0"].pixel_size_um == 0.5 and read_meta(meta)["m1"].group is None


# ------------------------------------------------------------------------------------- the CLI
def test_bad_files_do_not_stop_the_batch_and_are_listed(model_file: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "images"
    _images(folder, 2)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rng = np.random.default_rng(1)
    write_image(folder / "wide16.tif", draw_sample(rng, 40, 56, 3)[0], bits=16)
    write_image(folder / "colour.png", draw_sample(rng, 40, 56, 3)[0], rgb=True)
    out = tmp_path / "out"
    assert run([str(model_file), str(folder), "--out", str(out)]) == EXIT_SOME_FAILED
    errors = _rows(out / "errors.csv")
    assert [Path(e["image"]).name for e in errors] == ["broken.png"]
    assert "cannot be read as an image" in errors[0]["error"]
    assert "broken.png" in capsys.readouterr().err
    done = sorted(p.stem for p in (out / "masks").glob("*.png"))
    assert done == ["colour", "m0", "m1", "wide16"]
    assert sorted(p.stem for p in (out / "overlays").glob("*.png")) == done
    mask = np.asarray(Image.open(out / "masks" / "wide16.png"))
    assert mask.shape == (40, 56) and mask.dtype == np.uint8 and mask.max() < len(CLASSES)
    phases = _rows(out / "phases.csv")
    assert len(phases) == 4 * len(CLASSES)
    for image in done:
        fractions = [float(r["area_fraction"]) for r in phases if r["image"] == image]
        assert sum(fractions) == pytest.approx(1.0, abs=1e-5)
        assert all(r["area_um2"] == "" for r in phases)  # no pixel size: pixels only
    summary = _rows(out / "summary.csv")
    assert {r["unit"] for r in summary} == {"px"}
    assert [r["name"] for r in summary if r["level"] == "image"] == done
    assert Image.open(out / "summary.png").format == "PNG"
    record = json.loads((out / "predict.json").read_text())
    assert record["units"] == "px" and record["method"] == "pscl_simclr" and len(record["failed"]) == 1


def test_every_image_done_exits_zero_and_masks_match_the_network(model_file: Path, tmp_path: Path) -> None:
    (path,) = _images(tmp_path / "images", 1)
    out = tmp_path / "out"
    assert run([str(model_file), str(path), "--out", str(out), "--probabilities"]) == EXIT_OK
    image = np.asarray(Image.open(path), dtype=np.float32) / 255.0
    with torch.no_grad():
        logits = _backbone()(torch.from_numpy((image - 0.55) / 0.2)[None, None])
    mask = np.asarray(Image.open(out / "masks" / "m0.png"))
    assert (mask == logits.argmax(1)[0].numpy()).mean() > 0.999  # the normalisation is the run's
    probabilities = np.load(out / "probabilities" / "m0.npy")
    assert probabilities.shape == (3, 48, 64) and probabilities.dtype == np.float16
    assert _rows(out / "errors.csv") == []


def test_a_non_empty_output_folder_is_refused_unless_overwrite(model_file: Path, tmp_path: Path, capsys) -> None:
    _images(tmp_path / "images", 1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    assert run([str(model_file), str(tmp_path / "images"), "--out", str(out)]) == EXIT_USER_ERROR
    assert "already holds files" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert run([str(model_file), str(tmp_path / "images"), "--out", str(out), "--overwrite"]) == EXIT_OK
    assert (out / "keep.txt").read_text() == "earlier work" and (out / "masks" / "m0.png").is_file()


def test_crop_bottom_removes_the_information_band(model_file: Path, tmp_path: Path, capsys) -> None:
    _images(tmp_path / "images", 1, size=(60, 64))
    assert run([str(model_file), str(tmp_path / "images"), "--out", str(tmp_path / "out"),
                "--crop-bottom", "12"]) == EXIT_OK
    assert np.asarray(Image.open(tmp_path / "out" / "masks" / "m0.png")).shape == (48, 64)
    assert run([str(model_file), str(tmp_path / "images"), "--out", str(tmp_path / "out2"),
                "--crop-bottom", "60"]) == EXIT_SOME_FAILED
    assert "removes the whole image" in _rows(tmp_path / "out2" / "errors.csv")[0]["error"]


def test_pixel_sizes_come_from_meta_csv_or_the_command_line(model_file: Path, tmp_path: Path) -> None:
    _images(tmp_path / "data" / "images", 3)
    (tmp_path / "data" / "meta.csv").write_text("id,group,pixel_size_um\nm0,a,0.5\nm1,a,\nm2,b,2\n")
    out = tmp_path / "out"
    assert run([str(model_file), str(tmp_path / "data" / "images"), "--out", str(out),
                "--pixel-size-um", "0.1", "--min-particle-px", "0"]) == EXIT_OK
    size = {"m0": 0.5, "m1": 0.1, "m2": 2.0}  # meta.csv first; the command line for the others
    for row in _rows(out / "phases.csv"):
        assert float(row["area_um2"]) == pytest.approx(int(row["area_px"]) * size[row["image"]] ** 2, rel=1e-5)
    for row in _rows(out / "particles.csv"):
        s = size[row["image"]]
        assert float(row["equivalent_diameter_um"]) == pytest.approx(float(row["equivalent_diameter_px"]) * s, rel=1e-5)
    groups = {r["name"]: r for r in _rows(out / "summary.csv") if r["level"] == "group"}
    assert set(groups) == {"a", "b"} and groups["a"]["images"] == "2" and groups["a"]["unit"] == "um"


def test_bad_arguments_are_one_message(model_file: Path, tmp_path: Path, capsys) -> None:
    _images(tmp_path / "images", 1)
    for extra, expected in ((["--pixel-size-um", "0"], "--pixel-size-um"), (["--tile", "8"], "tile"),
                            (["--crop-bottom", "-3"], "--crop-bottom")):
        assert run([str(model_file), str(tmp_path / "images"), "--out", str(tmp_path / "o"), *extra]) == EXIT_USER_ERROR
        assert expected in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------- the run's own model, end to end
def test_predict_on_a_runs_test_images_gives_its_test_dice_exactly(make_folder, tmp_path: Path, capsys) -> None:
    from pscl.training.pipeline import train

    root = make_folder(n=10, size=(64, 72), groups=["x", "y"])
    overrides = ["data=folder", f"data.root={root}", "data.crop_size=32", "data.batch_size=4",
                 "data.samples_per_epoch=16", "backbone=unet_small", "backbone.widths=[8,16,32,64]",
                 "logger=csv", "trainer.max_epochs=6", "data.num_labeled=2"]
    run_dir = tmp_path / "run"
    cfg = compose_config(overrides, run_dir)
    results = train(cfg)
    # a checkpoint is read with the run's Hydra config (which pscl-train writes; train() alone does not)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    assert f"pscl-predict {run_dir} {root / 'images'}" in capsys.readouterr().out  # the command it prints
    assert len(list((run_dir / "predictions").glob("*.png"))) == 2
    assert_predict_gives_the_runs_test_predictions(run_dir, root, results, tmp_path)
