"""pscl-predict and pscl-export on bad inputs: never destroy an input, never leave a partial output,
never print a traceback.

Each case runs the command in-process (``pscl.predict.cli.run`` / ``pscl.predict.export.run``) in a
sandbox holding a pscl data folder, a loose folder of images and whatever the case prepares, and
compares the sha256 of every file (and the name of every folder) of the sandbox and of the model
before and after. One model file is written per module (a seeded UNet with trained-like BatchNorm
statistics, as in ``tests/predict/test_predict.py``), so the table stays fast.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BACKBONE, CLASSES, _backbone, _images, draw_sample, write_image
from pscl.predict import export as export_cli
from pscl.predict.cli import run as predict
from pscl.models.model_file import save_model

IMAGE_SIZE = (40, 48)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small model for the whole module: ``<run>/model.pt``."""
    run_dir = tmp_path_factory.mktemp("run")
    return save_model(run_dir / "model.pt", _backbone(), BACKBONE, CLASSES, (0.55,), (0.2,), "pscl_simclr",
                      {"method": {"name": "pscl_simclr"}})


def _data_folder(root: Path, n: int = 3) -> Path:
    """A pscl data folder: images/, hand-annotated masks/ and classes.txt."""
    rng = np.random.default_rng(5)
    for i in range(n):
        image, mask = draw_sample(rng, *IMAGE_SIZE, len(CLASSES))
        write_image(root / "images" / f"m{i}.png", image)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / "masks" / f"m{i}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def _snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file and a marker for every folder under ``roots``: any change shows."""
    seen: dict[str, str] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            seen[str(path)] = "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------- what a case prepares
def _user_file_in_out(relative: str) -> Callable[[Path], None]:
    def prepare(tmp: Path) -> None:
        target = tmp / "out" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("the user's own file")
    return prepare


def _inputs_inside_out(tmp: Path) -> None:
    _images(tmp / "work" / "images", 2, IMAGE_SIZE)


def _out_is_a_file(tmp: Path) -> None:
    (tmp / "out").write_text("a file where --out should be")


def _empty_folder(tmp: Path) -> None:
    (tmp / "empty").mkdir()


def _not_a_run(tmp: Path) -> None:
    (tmp / "not_a_run").mkdir()


def _existing_export(*names: str, pscl: bool = True) -> Callable[[Path], None]:
    """Files in ``tmp/exp``; a ``.json`` is pscl-export's contract when ``pscl``, else a user's own file."""
    def prepare(tmp: Path) -> None:
        (tmp / "exp").mkdir()
        for name in names:
            text = json.dumps({"format": "pscl-torchscript/1"}) if pscl and name.endswith(".json") else f"my {name}"
            (tmp / "exp" / name).write_text(text)
    return prepare


@dataclass
class Case:
    """``command`` (predict or export) on ``args``, with ``{model}``, ``{run}``, ``{data}``, ``{loose}``,
    ``{out}`` and ``{tmp}`` filled in, after ``prepare`` (if any) spoiled the sandbox."""

    name: str
    command: str
    args: list[str]
    code: int
    fragment: str
    prepare: Callable[[Path], None] | None = None


LOOSE = ["{model}", "{loose}", "--out", "{out}"]
CASES = [
    # the output folder: never an input, never a data folder, never a file pscl-predict did not write
    Case("out is the data folder, overwrite", "predict", ["{model}", "{data}/images", "--out", "{data}", "--overwrite"],
         2, "is a pscl data folder"),
    Case("out is the data folder", "predict", ["{model}", "{data}/images", "--out", "{data}"], 2,
         "is a pscl data folder"),
    Case("out inside the data folder's masks", "predict",
         ["{model}", "{loose}", "--out", "{data}/masks", "--overwrite"], 2, "masks/ of the pscl data folder"),
    Case("out holds the input folder, overwrite", "predict",
         ["{model}", "{tmp}/work/images", "--out", "{tmp}/work", "--overwrite"], 2, "holds the input image",
         _inputs_inside_out),
    Case("out is an input image", "predict", ["{model}", "{loose}", "--out", "{loose}/m0.png", "--overwrite"], 2,
         "is an input image"),
    Case("a user's table where summary.csv goes, overwrite", "predict", [*LOOSE, "--overwrite"], 2,
         "summary.csv", _user_file_in_out("summary.csv")),
    Case("a user's file where a mask goes, overwrite", "predict", [*LOOSE, "--overwrite"], 2, "masks/m1.png",
         _user_file_in_out("masks/m1.png")),
    Case("a predict.json that is not pscl-predict's, overwrite", "predict", [*LOOSE, "--overwrite"], 2,
         "predict.json", _user_file_in_out("predict.json")),
    Case("non-empty out", "predict", LOOSE, 2, "already holds files", _user_file_in_out("notes.txt")),
    Case("out is a file", "predict", LOOSE, 2, "not a folder", _out_is_a_file),
    # options
    Case("pixel size inf", "predict", [*LOOSE, "--pixel-size-um", "inf"], 2, "--pixel-size-um"),
    Case("pixel size nan", "predict", [*LOOSE, "--pixel-size-um", "nan"], 2, "--pixel-size-um"),
    Case("pixel size negative", "predict", [*LOOSE, "--pixel-size-um", "-1"], 2, "--pixel-size-um"),
    Case("tile too small", "predict", [*LOOSE, "--tile", "8"], 2, "--tile"),
    Case("negative overlap", "predict", [*LOOSE, "--overlap", "-1"], 2, "--overlap"),
    Case("overlap as large as half the tile", "predict", [*LOOSE, "--tile", "64", "--overlap", "32"], 2, "--overlap"),
    Case("zero batch size", "predict", [*LOOSE, "--batch-size", "0"], 2, "--batch-size"),
    Case("negative min particle size", "predict", [*LOOSE, "--min-particle-px", "-1"], 2, "--min-particle-px"),
    Case("unknown device", "predict", [*LOOSE, "--device", "gpu"], 2, "--device"),
    Case("a GPU that is not there", "predict", [*LOOSE, "--device", "cuda:99"], 2, "--device"),
    Case("tile not a number", "predict", [*LOOSE, "--tile", "abc"], 2, "invalid int value"),
    # model and inputs
    Case("a folder that is not a run", "predict", ["{tmp}/not_a_run", "{loose}", "--out", "{out}"], 2,
         "not a finished pscl run", _not_a_run),
    Case("no images", "predict", ["{model}", "{tmp}/empty", "--out", "{out}"], 2, "no image files", _empty_folder),
    # export: every file it would write is checked first
    Case("export over an existing contract", "export", ["{model}", "--out", "{tmp}/exp/m.pt"], 2,
         "m.json: already exists", _existing_export("m.json")),
    Case("export over an existing model file", "export", ["{model}", "--out", "{tmp}/exp/m.pt"], 2,
         "m.pt: already exists", _existing_export("m.pt")),
    Case("export onto the model it reads, overwrite", "export", ["{model}", "--out", "{model}", "--overwrite"], 2,
         "is the model file"),
    Case("export over a user's files, overwrite", "export", ["{model}", "--out", "{tmp}/exp/m.pt", "--overwrite"], 2,
         "is not an earlier pscl-export", _existing_export("m.pt", "m.json", pscl=False)),
    Case("export over a user's model file alone, overwrite", "export",
         ["{model}", "--out", "{tmp}/exp/m.pt", "--overwrite"], 2, "is not an earlier pscl-export",
         _existing_export("m.pt")),
    Case("export onto a run's own config, overwrite", "export",
         ["{model}", "--out", "{tmp}/exp/config.yaml", "--overwrite"], 2, "is not an earlier pscl-export",
         _existing_export("config.yaml")),
    Case("export to a .json name", "export", ["{model}", "--out", "{tmp}/exp/m.json"], 2, "m.json"),
    Case("export to a folder", "export", ["{model}", "--out", "{tmp}/exp"], 2, "is a folder", _existing_export()),
    Case("export of a folder that is not a run", "export", ["{tmp}/not_a_run", "--out", "{tmp}/exp/m.pt"], 2,
         "not a finished pscl run", _not_a_run),
]


def _sandbox(tmp: Path) -> dict[str, Path]:
    """The data folder and the loose images every case starts from."""
    _data_folder(tmp / "data")
    _images(tmp / "loose", 3, IMAGE_SIZE)
    return {"data": tmp / "data", "loose": tmp / "loose", "out": tmp / "out", "tmp": tmp}


def _fill(text: str, places: dict[str, Path]) -> str:
    for key, value in places.items():
        text = text.replace("{" + key + "}", str(value))
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, model_file: Path, tmp_path: Path, capsys) -> None:
    places = {**_sandbox(tmp_path), "model": model_file, "run": model_file.parent}
    if case.prepare:
        case.prepare(tmp_path)
    before = _snapshot(tmp_path, model_file.parent)
    command = predict if case.command == "predict" else export_cli.run
    code = command([_fill(a, places) for a in case.args])
    err = capsys.readouterr().err
    assert code == case.code, err
    assert case.fragment in err, err
    assert "Traceback" not in err
    assert _snapshot(tmp_path, model_file.parent) == before  # inputs, masks and --out all untouched


# --------------------------------------------------------------------------------- --overwrite
def test_overwrite_replaces_only_the_files_an_earlier_predict_recorded(model_file: Path, tmp_path: Path,
                                                                       capsys) -> None:
    places = _sandbox(tmp_path)
    out = places["out"]
    assert predict([str(model_file), str(places["loose"]), "--out", str(out)]) == 0
    record = json.loads((out / "predict.json").read_text())
    assert set(record["outputs"]) == {f"{kind}/m{i}.png" for kind in ("masks", "overlays") for i in range(3)} | {
        "phases.csv", "particles.csv", "summary.csv", "summary.png", "errors.csv", "predict.json"}
    (out / "notes.txt").write_text("the user's notes")
    (out / "masks" / "m0.png").write_bytes(b"stale")  # an output of the earlier batch: replaced
    inputs = _snapshot(places["loose"], places["data"])
    assert predict([str(model_file), str(places["loose"]), "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "the user's notes"
    assert np.asarray(Image.open(out / "masks" / "m0.png")).shape == IMAGE_SIZE
    assert _snapshot(places["loose"], places["data"]) == inputs

    # a new image whose outputs the user already has a file for: refused, nothing written
    _images(tmp_path / "more", 4, IMAGE_SIZE)
    (out / "overlays" / "m3.png").write_text("the user's overlay")
    before = _snapshot(tmp_path, model_file.parent)
    assert predict([str(model_file), str(tmp_path / "more"), "--out", str(out), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "overlays/m3.png" in err and "Traceback" not in err
    assert _snapshot(tmp_path, model_file.parent) == before


def test_overwrite_over_an_older_record_without_the_list_of_files(model_file: Path, tmp_path: Path) -> None:
    """predict.json from before pscl kept ``outputs``: the files of the images it names are pscl's."""
    places = _sandbox(tmp_path)
    out = places["out"]
    assert predict([str(model_file), str(places["loose"]), "--out", str(out)]) == 0
    record = json.loads((out / "predict.json").read_text())
    for key in ("outputs", "earlier_outputs", "state"):
        del record[key]
    (out / "predict.json").write_text(json.dumps(record))
    assert predict([str(model_file), str(places["loose"]), "--out", str(out), "--overwrite"]) == 0


def test_an_interrupted_batch_can_be_replaced_with_overwrite(model_file: Path, tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    import pscl.predict.runner as runner

    places = _sandbox(tmp_path)
    segment = runner.segment
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return segment(*args, **kwargs)

    monkeypatch.setattr(runner, "segment", interrupted)
    assert predict([str(model_file), str(places["loose"]), "--out", str(places["out"])]) == 130
    assert json.loads((places["out"] / "predict.json").read_text())["state"] == "running"
    monkeypatch.setattr(runner, "segment", segment)
    assert predict([str(model_file), str(places["loose"]), "--out", str(places["out"]), "--overwrite"]) == 0
    assert json.loads((places["out"] / "predict.json").read_text())["state"] == "done"
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------------------ per-image failures
def test_a_1x1_image_among_good_ones_is_listed_and_the_others_are_done(model_file: Path, tmp_path: Path,
                                                                        capsys) -> None:
    places = _sandbox(tmp_path)
    Image.new("L", (1, 1), 128).save(places["loose"] / "dot.png")
    Image.new("L", (30, 5), 128).save(places["loose"] / "strip.png")
    inputs = _snapshot(places["loose"], model_file.parent)
    assert predict([str(model_file), str(places["loose"]), "--out", str(places["out"])]) == 3
    assert "Traceback" not in capsys.readouterr().err
    errors = {Path(r["image"]).name: r["error"] for r in _rows(places["out"] / "errors.csv")}
    assert set(errors) == {"dot.png", "strip.png"}
    assert "is 1x1 px; pscl-predict needs at least 8x8 px" in errors["dot.png"]
    assert "is 30x5 px" in errors["strip.png"]
    assert sorted(p.stem for p in (places["out"] / "masks").iterdir()) == ["m0", "m1", "m2"]
    assert _snapshot(places["loose"], model_file.parent) == inputs


def test_a_crash_in_one_image_lands_in_errors_csv_and_the_rest_are_done(model_file: Path, tmp_path: Path,
                                                                         monkeypatch, capsys) -> None:
    import pscl.predict.runner as runner

    places = _sandbox(tmp_path)
    segment, calls = runner.segment, []

    def crash_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise IndexError("index 7 is out of bounds")
        return segment(*args, **kwargs)

    monkeypatch.setattr(runner, "segment", crash_on_the_second)
    inputs = _snapshot(places["loose"], model_file.parent)
    assert predict([str(model_file), str(places["loose"]), "--out", str(places["out"])]) == 3
    assert "Traceback" not in capsys.readouterr().err
    (error,) = _rows(places["out"] / "errors.csv")
    assert Path(error["image"]).name == "m1.png" and "IndexError: index 7 is out of bounds" in error["error"]
    assert sorted(p.stem for p in (places["out"] / "masks").iterdir()) == ["m0", "m2"]
    assert {r["image"] for r in _rows(places["out"] / "phases.csv")} == {"m0", "m2"}
    assert _snapshot(places["loose"], model_file.parent) == inputs


def test_when_every_image_fails_the_tables_and_the_record_are_still_written(model_file: Path, tmp_path: Path,
                                                                            capsys) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    assert predict([str(model_file), str(folder), "--out", str(out)]) == 3
    assert "Traceback" not in capsys.readouterr().err
    assert len(_rows(out / "errors.csv")) == 2
    for table in ("phases.csv", "particles.csv", "summary.csv"):
        assert (out / table).is_file() and _rows(out / table) == []
    record = json.loads((out / "predict.json").read_text())
    assert record["state"] == "done" and len(record["failed"]) == 2 and record["images"] == []


def test_a_bug_outside_the_images_is_one_line_not_a_traceback(model_file: Path, tmp_path: Path, monkeypatch,
                                                              capsys) -> None:
    import pscl.predict.runner as runner

    places = _sandbox(tmp_path)

    def broken_tables(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(runner, "_write_tables", broken_tables)
    inputs = _snapshot(places["loose"], model_file.parent)
    assert predict([str(model_file), str(places["loose"]), "--out", str(places["out"])]) == 1
    err = capsys.readouterr().err
    assert "pscl-predict: crashed: ZeroDivisionError" in err and "Traceback" not in err
    assert _snapshot(places["loose"], model_file.parent) == inputs


# ------------------------------------------------------------------------------------------ export
def test_export_overwrite_replaces_the_model_and_its_contract(model_file: Path, tmp_path: Path) -> None:
    _existing_export("m.pt", "m.json")(tmp_path)
    model_before = _snapshot(model_file.parent)
    assert export_cli.run([str(model_file), "--out", str(tmp_path / "exp" / "m.pt"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "exp" / "m.json").read_text())["class_names"] == list(CLASSES)
    assert isinstance(torch.jit.load(str(tmp_path / "exp" / "m.pt")), torch.jit.ScriptModule)
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["m.json", "m.pt"]
    assert _snapshot(model_file.parent) == model_before


def test_a_crash_while_scripting_leaves_no_file_behind(model_file: Path, tmp_path: Path, monkeypatch,
                                                       capsys) -> None:
    def broken_script(*args, **kwargs):
        raise RuntimeError("scripting failed")

    monkeypatch.setattr(torch.jit, "script", broken_script)
    assert export_cli.run([str(model_file), "--out", str(tmp_path / "exp" / "m.pt")]) == 1
    err = capsys.readouterr().err
    assert "pscl-export: crashed: RuntimeError" in err and "Traceback" not in err
    assert not (tmp_path / "exp").exists()


def test_a_crash_while_serialising_keeps_the_earlier_files_whole(model_file: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    _existing_export("m.pt", "m.json")(tmp_path)
    before = _snapshot(tmp_path)

    def broken_save(*args, **kwargs):
        raise RuntimeError("serialisation failed")

    monkeypatch.setattr(torch.jit, "save", broken_save)
    assert export_cli.run([str(model_file), "--out", str(tmp_path / "exp" / "m.pt"), "--overwrite"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert _snapshot(tmp_path) == before  # the earlier pair is kept whole, no *.partial or temporary file
