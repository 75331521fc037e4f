"""What pscl reads never costs a traceback: text files in any common encoding, images over the pixel limit.

The ``pscl-predict`` side runs the command in-process (``pscl.predict.cli.run``) with one small model
file per module (a seeded UNet, as in ``tests/predict/test_predict.py``); the training side is in the table of
``tests/bad_inputs/test_bad_inputs.py``. Here also: :func:`pscl.data.text.read_text`, the pixel limit
(``PSCL_MAX_IMAGE_PIXELS``) and the intensity baseline's reading of a data folder.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BACKBONE, CLASSES, _backbone, _images, _reopen_log_streams, draw_sample, write_image
from pscl.data.io import DEFAULT_MAX_IMAGE_PIXELS, image_size, max_image_pixels, read_image
from pscl.data.text import read_text
from pscl.errors import ConfigError, DataError
from pscl.predict.cli import EXIT_OK, EXIT_SOME_FAILED, EXIT_USER_ERROR, run
from pscl.models.model_file import save_model

GROUP = "Glühen 500 °C"
BOMB_SIDE = 15000  # 225 MP declared in a few KB: over the default limit of about 179 MP


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small model for the whole module: ``<run>/model.pt``."""
    return save_model(tmp_path_factory.mktemp("run") / "model.pt", _backbone(), BACKBONE, CLASSES, (0.55,), (0.2,),
                      "pscl_simclr", {"method": {"name": "pscl_simclr"}})


@pytest.fixture(autouse=True)
def _default_pixel_limit(monkeypatch) -> None:
    monkeypatch.delenv("PSCL_MAX_IMAGE_PIXELS", raising=False)


@pytest.fixture(autouse=True)
def _live_log_streams(monkeypatch) -> None:
    """Warnings are logged here; handlers an in-process pscl-train of an earlier test left on its
    closed capture would print "--- Logging error ---" instead."""
    _reopen_log_streams(monkeypatch)


def _hashes(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _bomb(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (BOMB_SIDE, BOMB_SIDE)).save(path)
    return path


def _meta_bytes(encoding: str) -> bytes:
    text = f"id,group,pixel_size_um\r\nm0,{GROUP},0.5\r\nm1,{GROUP},\r\nm2,as cast,2\r\n"
    return text.encode(encoding)


# ------------------------------------------------------------------------------- read_text
@pytest.mark.parametrize("encoding, warned", [("utf-8", None), ("utf-8-sig", None), ("cp1252", "Windows-1252"),
                                              ("latin-1", "Windows-1252")])
def test_read_text_reads_every_common_encoding(tmp_path: Path, caplog, encoding: str, warned: str | None) -> None:
    path = tmp_path / "meta.csv"
    path.write_bytes(_meta_bytes(encoding))
    with caplog.at_level(logging.WARNING, logger="pscl.data"):
        text = read_text(path, "meta.csv")
    assert text.startswith("id,group") and GROUP in text  # the byte-order mark is not part of `id`
    warnings_ = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if warned is None:
        assert warnings_ == []
    else:
        assert warnings_ == [f"{path} is not UTF-8: read it as {warned}; if accented letters of the meta.csv look "
                             "wrong, save it as UTF-8 text (in a spreadsheet program: Save As > CSV UTF-8)"]


def test_read_text_falls_back_to_latin1_for_bytes_windows_1252_lacks(tmp_path: Path, caplog) -> None:
    path = tmp_path / "classes.txt"
    path.write_bytes(b"matrix\nphase \x81\n")  # 0x81 is undefined in Windows-1252
    with caplog.at_level(logging.WARNING, logger="pscl.data"):
        assert read_text(path, "classes.txt") == "matrix\nphase \x81\n"
    assert "read it as Latin-1" in caplog.text


@pytest.mark.parametrize("content, fragment", [
    ("id,group\nm0,a\n".encode("utf-16"), "NUL bytes (UTF-16 text)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "NUL bytes (a binary file or UTF-16 text)"),
    (b"id,group\x1b[0m\nm0,a\n", "control characters '\\x1b'"),
])
def test_read_text_refuses_what_is_not_text(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "meta.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_text(path, "meta.csv")
    message = str(info.value)
    assert message.startswith(f"{path}: is not text") and fragment in message
    assert message.endswith("fix: save it as UTF-8 text (in a spreadsheet program: Save As > CSV UTF-8)")


def test_read_text_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"classes.txt: cannot be read \(Is a directory\)"):
        read_text((tmp_path / "classes.txt").mkdir() or tmp_path / "classes.txt", "classes.txt")


# --------------------------------------------------------------------------- the pixel limit
@pytest.mark.parametrize("value, limit", [("", DEFAULT_MAX_IMAGE_PIXELS), ("0", None), ("none", None),
                                          (" None ", None), ("250000000", 250_000_000), ("1_000", 1000)])
def test_the_pixel_limit_comes_from_the_environment(monkeypatch, value: str, limit: int | None) -> None:
    monkeypatch.setenv("PSCL_MAX_IMAGE_PIXELS", value)
    assert max_image_pixels() == limit
    assert DEFAULT_MAX_IMAGE_PIXELS == 178_956_970  # Pillow's own refusal threshold


@pytest.mark.parametrize("value", ["-1", "lots", "1e9", "2.5"])
def test_a_bad_pixel_limit_is_a_config_error(monkeypatch, value: str) -> None:
    monkeypatch.setenv("PSCL_MAX_IMAGE_PIXELS", value)
    with pytest.raises(ConfigError) as info:
        max_image_pixels()
    assert str(info.value).startswith(f"config `PSCL_MAX_IMAGE_PIXELS`: must be a whole number of pixels, or 0 or "
                                      f"none for no limit, got {value!r}")


def test_an_image_over_the_limit_is_refused_from_its_header_without_pillows_own_check(tmp_path: Path) -> None:
    path = _bomb(tmp_path / "bomb.png")
    assert path.stat().st_size < 1_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail here
        with pytest.raises(DataError) as info:
            read_image(path)
    assert str(info.value) == (
        f"{path}: is 15000x15000 px (225.0 MP), over the limit of 178956970 px (179.0 MP) on the pixels pscl decodes "
        "from one image (a guard against decompression bombs); it was not decoded\n  fix: if the image is genuine, "
        "raise the limit: PSCL_MAX_IMAGE_PIXELS=225000000 (or PSCL_MAX_IMAGE_PIXELS=none for no limit); otherwise "
        "replace or remove the file")
    assert Image.MAX_IMAGE_PIXELS is None  # pscl's check replaces Pillow's, which would refuse in Image.open


def test_the_limit_reads_tiff_headers_and_can_be_lifted(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "stack.tif"
    write_image(path, np.full((40, 50), 0.5), bits=16)
    monkeypatch.setenv("PSCL_MAX_IMAGE_PIXELS", "1999")
    with pytest.raises(DataError, match=r"stack.tif: is 50x40 px \(0.0 MP\), over the limit of 1999 px"):
        read_image(path)
    monkeypatch.setenv("PSCL_MAX_IMAGE_PIXELS", "2000")
    assert read_image(path).shape == (40, 50, 1) and image_size(path) == (50, 40)
    monkeypatch.setenv("PSCL_MAX_IMAGE_PIXELS", "none")
    assert image_size(_bomb(tmp_path / "bomb.png")) == (BOMB_SIDE, BOMB_SIDE)  # the header only: nothing decoded


# ------------------------------------------------------------------------------ pscl-predict
@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-8-sig"])
def test_predict_reads_meta_csv_in_any_common_encoding(model_file: Path, tmp_path: Path, capsys,
                                                        encoding: str) -> None:
    _images(tmp_path / "batch", 3)
    meta = tmp_path / "meta.csv"
    meta.write_bytes(_meta_bytes(encoding))
    before = _hashes(tmp_path / "batch") | {"meta.csv": hashlib.sha256(meta.read_bytes()).hexdigest()}
    out = tmp_path / "out"
    assert run([str(model_file), str(tmp_path / "batch"), "--meta", str(meta), "--out", str(out)]) == EXIT_OK
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"groups and pixel sizes from {meta}" in err
    groups = {r["name"]: r["images"] for r in _rows(out / "summary.csv") if r["level"] == "group"}
    assert groups == {GROUP: "2", "as cast": "1"}
    images = json.loads((out / "predict.json").read_text(encoding="utf-8"))["images"]
    # `id` was found despite a byte-order mark, and the groups kept their letters
    assert {i["image"]: (i["group"], i["pixel_size_um"]) for i in images} == {
        "m0": (GROUP, 0.5), "m1": (GROUP, None), "m2": ("as cast", 2.0)}
    assert _hashes(tmp_path / "batch") | {"meta.csv": hashlib.sha256(meta.read_bytes()).hexdigest()} == before


def test_predict_refuses_a_utf16_meta_csv_before_writing(model_file: Path, tmp_path: Path, capsys) -> None:
    _images(tmp_path / "batch", 1)
    meta = tmp_path / "meta.csv"
    meta.write_bytes(_meta_bytes("utf-16"))
    out = tmp_path / "out"
    assert run([str(model_file), str(tmp_path / "batch"), "--meta", str(meta), "--out", str(out)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"pscl-predict: error: {meta}: is not text: it holds NUL bytes (UTF-16 text)" in err
    assert "fix: save it as UTF-8 text" in err and "Traceback" not in err
    assert not out.exists()


def test_an_image_over_the_pixel_limit_fails_alone(model_file: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "batch"
    _images(folder, 2)
    bomb = _bomb(folder / "bomb.png")
    before = _hashes(folder)
    out = tmp_path / "out"
    assert run([str(model_file), str(folder), "--out", str(out)]) == EXIT_SOME_FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{bomb}: is 15000x15000 px (225.0 MP), over the limit" in err
    errors = _rows(out / "errors.csv")
    assert [Path(e["image"]).name for e in errors] == ["bomb.png"]
    assert "is 15000x15000 px (225.0 MP)" in errors[0]["error"]
    assert "PSCL_MAX_IMAGE_PIXELS=225000000" in errors[0]["error"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["m0.png", "m1.png"]  # the batch went on
    assert np.asarray(Image.open(out / "masks" / "m0.png")).shape == (48, 64)
    assert _hashes(folder) == before


def test_a_lowered_pixel_limit_refuses_larger_images_only(model_file: Path, tmp_path: Path, monkeypatch,
                                                          capsys) -> None:
    folder = tmp_path / "batch"
    _images(folder, 1, size=(40, 48))
    write_image(folder / "wide16.tif", draw_sample(np.random.default_rng(1), 48, 64, 3)[0], bits=16)
    monkeypatch.setenv("PSCL_MAX_IMAGE_PIXELS", "2000")
    out = tmp_path / "out"
    assert run([str(model_file), str(folder), "--out", str(out)]) == EXIT_SOME_FAILED
    assert "Traceback" not in capsys.readouterr().err
    errors = _rows(out / "errors.csv")
    assert [Path(e["image"]).name for e in errors] == ["wide16.tif"]
    assert "is 64x48 px (0.0 MP), over the limit of 2000 px" in errors[0]["error"]
    assert [p.name for p in (out / "masks").iterdir()] == ["m0.png"]


def test_a_bad_pixel_limit_stops_predict_before_anything_is_written(model_file: Path, tmp_path: Path, monkeypatch,
                                                                    capsys) -> None:
    _images(tmp_path / "batch", 1)
    monkeypatch.setenv("PSCL_MAX_IMAGE_PIXELS", "-5")
    out = tmp_path / "out"
    assert run([str(model_file), str(tmp_path / "batch"), "--out", str(out)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "pscl-predict: error: config `PSCL_MAX_IMAGE_PIXELS`: must be a whole number" in err
    assert "Traceback" not in err and not out.exists()


# ------------------------------------------------------------------ the intensity baseline
def test_the_intensity_baseline_reads_any_encoding_and_names_a_bad_file(make_folder, tmp_path: Path,
                                                                         monkeypatch, capsys) -> None:
    from pscl.reporting import intensity_baseline

    root = make_folder(n=4, splits={"train": ["img00", "img01", "img02"], "test": ["img03"]})
    (root / "classes.txt").write_bytes("Matrix\nAusscheidung – fein\nKarbid\n".encode("cp1252"))
    result = intensity_baseline.evaluate_folder(root)
    assert list(result["dice_per_class"]) == ["Ausscheidung – fein", "Karbid"]
    monkeypatch.setenv("PSCL_MAX_IMAGE_PIXELS", "5000")  # the images are 80x64 = 5120 px
    assert intensity_baseline.main([str(root)]) == EXIT_USER_ERROR
    assert f"{root / 'images' / 'img00.png'}: is 80x64 px (0.0 MP), over the limit of 5000 px" in \
        capsys.readouterr().err
    monkeypatch.delenv("PSCL_MAX_IMAGE_PIXELS")
    (root / "splits.json").write_bytes('{"train": ["img00"], "test": ["img03"]}'.encode("utf-16"))
    assert intensity_baseline.main([str(root)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert f"{root / 'splits.json'}: is not text: it holds NUL bytes (UTF-16 text)" in err
    assert "Traceback" not in err
