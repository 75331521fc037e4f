"""A table of bad inputs: each gives its exit code and a one-line message naming the key or file.

Cases run pscl-train's command line in-process (``pscl.training.app.run_cli`` on a patched ``sys.argv``),
so the table stays fast; ``test_the_real_command_line`` checks two of them in a subprocess.
Exit codes: 2 a user error, 3 a diverged training (tests/runs/test_run_states.py), 1 a crash; a few
cases are inputs that must *work* (code 0). Every case leaves the data folder as it was: the
sha256 of each of its files is the same afterwards, and no file was added or removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import _reopen_log_streams, run_cli as run_subprocess, write_crafted_checkpoint, write_image

TINY = ["backbone=unet_small", "backbone.widths=[8,16,32,64]", "logger=csv", "data.crop_size=32"]
QUICK = ["trainer.max_epochs=1", "data.samples_per_epoch=4"]  # cases that must train: one step
GROUP = "Glühen 500 °C"  # a group name as a German spreadsheet writes it
BOMB_SIDE = 15000  # 225 MP: over Pillow's 179 MP decompression-bomb threshold, a few KB as a 1-bit PNG


@dataclass
class Case:
    """``args`` (with ``{root}``/``{tmp}`` filled in) on a folder that ``prepare`` may spoil."""

    name: str
    args: list[str]
    code: int
    fragment: str
    prepare: Callable[[Path, Path], None] | None = None
    folder: bool = True
    env: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # fragments the message must not hold (e.g. a fix that cannot work)


def _remove_mask(root: Path, tmp: Path) -> None:
    (root / "masks" / "img03.png").unlink()


def _corrupt_unlabeled(root: Path, tmp: Path) -> None:
    (root / "unlabeled").mkdir(exist_ok=True)
    (root / "unlabeled" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")


def _small_unlabeled(root: Path, tmp: Path) -> None:
    (root / "unlabeled").mkdir(exist_ok=True)
    Image.new("L", (20, 20), 128).save(root / "unlabeled" / "tiny.png")


def _crafted_ckpt(root: Path, tmp: Path) -> None:
    write_crafted_checkpoint(tmp / "evil.pt", tmp / "payload-ran")


def _meta_without_header(root: Path, tmp: Path) -> None:
    (root / "meta.csv").write_text("img00,a\nimg01,b\n")


def _bad_splits(root: Path, tmp: Path) -> None:
    (root / "splits.json").write_text("{not json")


def _file_as_log_dir(root: Path, tmp: Path) -> None:
    (tmp / "blocked").write_text("a file where the log folder should be")


def _empty_classes(root: Path, tmp: Path) -> None:
    (root / "classes.txt").write_text("")


def _meta(root: Path, encoding: str) -> None:
    lines = ["id,group"] + [f"img{i:02d},{GROUP if i % 2 else 'as cast'}" for i in range(6)]
    (root / "meta.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))


def _latin1_meta(root: Path, tmp: Path) -> None:
    _meta(root, "latin-1")


def _bom_meta(root: Path, tmp: Path) -> None:
    _meta(root, "utf-8-sig")


def _utf16_meta(root: Path, tmp: Path) -> None:
    _meta(root, "utf-16")


def _binary_classes(root: Path, tmp: Path) -> None:
    (root / "classes.txt").write_bytes((root / "masks" / "img00.png").read_bytes())


def _cp1252_classes(root: Path, tmp: Path) -> None:
    (root / "classes.txt").write_bytes("Matrix\nAusscheidung – fein\nKarbid ‘M23C6’\n".encode("cp1252"))


def _latin1_splits(root: Path, tmp: Path) -> None:
    splits = {"note": f"geteilt nach {GROUP}", "train": [f"img{i:02d}" for i in range(5)], "test": ["img05"]}
    (root / "splits.json").write_bytes(json.dumps(splits, ensure_ascii=False).encode("latin-1"))


def _bomb(path: Path) -> None:
    path.parent.mkdir(exist_ok=True)
    Image.new("1", (BOMB_SIDE, BOMB_SIDE)).save(path)


def _bomb_in_images(root: Path, tmp: Path) -> None:
    _bomb(root / "images" / "img02.png")


def _bomb_in_unlabeled(root: Path, tmp: Path) -> None:
    _bomb(root / "unlabeled" / "huge.png")


def _tiff_image(root: Path, tmp: Path) -> None:
    (root / "images" / "img00.png").unlink()
    write_image(root / "images" / "img00.tif", np.full((64, 80), 0.5), bits=16)


def _small_images(root: Path, tmp: Path) -> None:
    for mask in (root / "masks").iterdir():
        Image.new("L", (12, 12), 100).save(root / "images" / mask.name)
        Image.new("L", (12, 12), 1).save(mask)


def _tiny_unlabeled(root: Path, tmp: Path) -> None:
    (root / "unlabeled").mkdir(exist_ok=True)
    Image.new("L", (5, 5), 128).save(root / "unlabeled" / "tiny.png")


def _tiny_test_image(root: Path, tmp: Path) -> None:
    (root / "splits.json").write_text(json.dumps({"train": [f"img{i:02d}" for i in range(5)], "test": ["img05"]}))
    Image.new("L", (5, 5), 128).save(root / "images" / "img05.png")
    Image.new("L", (5, 5), 1).save(root / "masks" / "img05.png")


CASES = [
    Case("negative label seed", ["data.label_seed=-1"], 2, "config `data.label_seed`: must be an integer >= 0"),
    Case("label seed not a number", ["data.label_seed=abc"], 2, "config `data.label_seed`"),
    Case("unknown method", ["method=nonexistent"], 2, "method/nonexistent"),
    Case("unknown option", ["no_such_option=1"], 2, "no_such_option"),
    Case("temperature below lightly's", ["method=simclr", "method.temperature=1e-9"], 2, "config `method.temperature`"),
    Case("zero batch size", ["data.batch_size=0"], 2, "config `data.batch_size`"),
    Case("zero epochs", ["trainer.max_epochs=0"], 2, "config `trainer.max_epochs`"),
    Case("crop too small", ["data.crop_size=4"], 2, "config `data.crop_size`"),
    Case("jitter above 1", ["data.jitter=2"], 2, "config `data.jitter`"),
    Case("momentum of 1", ["method=moco", "method.momentum=1.0"], 2, "config `method.momentum`"),
    Case("ratio above 1", ["method=pscl_simclr", "method.global_local_ratio=1.5"], 2,
         "config `method.global_local_ratio`"),
    Case("negative seed", ["seed=-3"], 2, "config `seed`"),
    Case("negative learning rate", ["method.finetune.decoder_lr=-0.1"], 2, "config `method.finetune.decoder_lr`"),
    Case("negative learning rate, old key", ["method.finetune_decoder_lr=-0.1"], 2, "config `method.finetune.decoder_lr`"),
    Case("unknown stage", ["stage=sideways"], 2, "config `stage`"),
    Case("num_labeled not a number", ["data.num_labeled=zero"], 2, "config `data.num_labeled`"),
    Case("unknown eval split", ["eval.split=train"], 2, "config `eval.split`"),
    Case("unknown class weights", ["finetune.class_weights=magic"], 2, "config `finetune.class_weights`"),
    Case("snapshot at epoch 0", ["method=simclr", "snapshot_epochs=[0]"], 2, "config `snapshot_epochs`"),
    Case("negative checkpoint interval", ["checkpoint.finetune_every_n_epochs=-1"], 2,
         "config `checkpoint.finetune_every_n_epochs`"),
    Case("class weights of the wrong length", ["data.class_weights=[1,2]"], 2, "config `data.class_weights`"),
    Case("no data folder", ["data.root=null"], 2, "config `data.root`"),
    Case("missing data folder", ["data.root={tmp}/no/such/folder"], 2, "no/such/folder"),
    Case("missing mask", [], 2, "img03", _remove_mask),
    Case("corrupt unlabelled image", ["method=simclr"], 2, "broken.png: cannot be read as an image",
         _corrupt_unlabeled),
    Case("unlabelled image smaller than the crop", ["method=simclr"], 2,
         "tiny.png: is 20x20, smaller than data.crop_size=32", _small_unlabeled),
    Case("crafted pretrained_ckpt", ["method=simclr", "stage=finetune", "pretrained_ckpt={tmp}/evil.pt"], 2,
         "evil.pt: refused: loading it would run code", _crafted_ckpt),
    Case("missing pretrained_ckpt", ["method=simclr", "stage=finetune", "pretrained_ckpt={tmp}/absent.pt"], 2,
         "absent.pt: checkpoint not found"),
    Case("meta.csv without header", [], 2, "meta.csv needs the header", _meta_without_header),
    Case("splits.json not JSON", [], 2, "splits.json: not valid JSON", _bad_splits),
    Case("empty classes.txt", [], 2, "classes.txt", _empty_classes),
    Case("log folder under a file", [], 2, "blocked", _file_as_log_dir, env={"PSCL_LOG_DIR": "{tmp}/blocked/logs"}),
    # text files in any common encoding (pscl.data.text)
    Case("Latin-1 meta.csv is read", QUICK, 0, "meta.csv is not UTF-8: read it as Windows-1252", _latin1_meta),
    Case("UTF-8 meta.csv with a byte-order mark is read", QUICK, 0, "test Dice", _bom_meta,
         absent=("not UTF-8", "needs the header")),
    Case("UTF-16 meta.csv", [], 2, "meta.csv: is not text: it holds NUL bytes (UTF-16 text)", _utf16_meta),
    Case("binary classes.txt", [], 2, "classes.txt: is not text: it holds NUL bytes", _binary_classes),
    Case("Windows-1252 classes.txt is read", QUICK, 0, "classes.txt is not UTF-8: read it as Windows-1252",
         _cp1252_classes),
    Case("Latin-1 splits.json is read", QUICK, 0, "splits.json is not UTF-8: read it as Windows-1252",
         _latin1_splits),
    # images over the pixel limit are refused from their header, before decoding (pscl.data.io)
    Case("image over the pixel limit", [], 2, f"img02.png: is {BOMB_SIDE}x{BOMB_SIDE} px (225.0 MP), over the limit",
         _bomb_in_images),
    Case("unlabelled image over the pixel limit", ["method=simclr", "data.unlabeled_batch_size=2"], 2,
         "huge.png: is 15000x15000 px (225.0 MP), over the limit of 178956970 px", _bomb_in_unlabeled),
    Case("TIFF over a lowered pixel limit", [], 2, "img00.tif: is 80x64 px (0.0 MP), over the limit of 1000 px",
         _tiff_image, env={"PSCL_MAX_IMAGE_PIXELS": "1000"}),
    Case("pixel limit not a number", [], 2, "config `PSCL_MAX_IMAGE_PIXELS`: must be a whole number of pixels",
         env={"PSCL_MAX_IMAGE_PIXELS": "lots"}),
    Case("pixel limit raised above the images", QUICK, 0, "test Dice", env={"PSCL_MAX_IMAGE_PIXELS": "5120"}),
    # batches BatchNorm cannot train on (pscl.checks.config.check_batch_sizes)
    Case("simclr on pool batches of one", ["method=simclr", "data.unlabeled_batch_size=1"], 2,
         "config `data.unlabeled_batch_size`: is 1 but method=simclr needs at least 2 images"),
    Case("byol on pool batches of one", ["method=byol", "data.unlabeled_batch_size=1"], 2,
         "config `data.unlabeled_batch_size`: is 1 but method=byol needs at least 2 images"),
    Case("moco on pool batches of one 8 px crop", ["method=moco", "data.unlabeled_batch_size=1", "data.crop_size=8"],
         2, "config `data.unlabeled_batch_size`: is 1 but data.crop_size=8 leaves the network's bottleneck 1x1 px"),
    Case("fine-tuning batches of one 8 px crop", ["data.batch_size=1", "data.crop_size=8"], 2,
         "config `data.batch_size`: is 1 but data.crop_size=8 leaves the network's bottleneck 1x1 px"),
    Case("simclr on a pool of 5 in batches of 2", [*QUICK, "method=simclr", "data.unlabeled_batch_size=2",
                                                    "method.pretrain_epochs=1"], 0, "test Dice"),
    Case("last fine-tuning batch of one 8 px crop is dropped",
         [*QUICK, "data.batch_size=4", "data.samples_per_epoch=5", "data.crop_size=8"], 0, "test Dice"),
    Case("whole images of 12 px in batches of one", ["data.crop_size=null", "data.batch_size=1"], 2,
         "config `data.batch_size`: is 1 but a whole image of 12 px leaves the network's bottleneck 1x1 px",
         _small_images),
    # sizes are checked for the images a run reads, and the fix is one that works
    Case("tiny unlabelled image, supervised run", QUICK, 0, "test Dice", _tiny_unlabeled),
    Case("tiny unlabelled image, pretraining", ["method=simclr", "data.unlabeled_batch_size=2"], 2,
         "tiny.png: is 5x5, smaller than data.crop_size=32, so pretraining cannot crop it", _tiny_unlabeled,
         absent=("crop_size<=",)),
    Case("tiny test image", [], 2, "img05.png: is 5x5, smaller than 8 px, the least the network takes; evaluation "
         "reads it", _tiny_test_image, absent=("crop_size<=",)),
]


def _hashes(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _fill(text: str, root: Path, tmp: Path) -> str:
    return text.replace("{root}", str(root)).replace("{tmp}", str(tmp))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, make_folder, tmp_path: Path, monkeypatch, capsys) -> None:
    from hydra.core.global_hydra import GlobalHydra

    from pscl.training.app import run_cli

    root = make_folder(n=6)
    if case.prepare:
        case.prepare(root, tmp_path)
    args = ["data=folder", f"data.root={root}", *TINY, *[_fill(a, root, tmp_path) for a in case.args]]
    monkeypatch.setattr(sys, "argv", ["pscl-train", *args])
    monkeypatch.setenv("PSCL_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("PSCL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for key, value in case.env.items():
        monkeypatch.setenv(key, _fill(value, root, tmp_path))
    GlobalHydra.instance().clear()
    _reopen_log_streams(monkeypatch)
    before = _hashes(root)
    code = run_cli()
    out, err = capsys.readouterr()
    assert code == case.code, err
    said = err if case.code else out + err  # a run that works logs its warnings and summary on stdout
    assert case.fragment in said, said
    assert not [fragment for fragment in case.absent if fragment in said]
    assert "Traceback" not in err
    assert not (tmp_path / "payload-ran").exists()
    assert _hashes(root) == before  # data folders are never written: nothing changed, added or removed


def test_a_failed_single_run_leaves_failed_not_running(make_folder, tmp_path: Path, monkeypatch, capsys) -> None:
    from hydra.core.global_hydra import GlobalHydra

    from pscl.training.app import run_cli

    root = make_folder(n=6)
    _remove_mask(root, tmp_path)
    monkeypatch.setattr(sys, "argv", ["pscl-train", "data=folder", f"data.root={root}", *TINY,
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    monkeypatch.setenv("PSCL_CACHE_DIR", str(tmp_path / "cache"))
    GlobalHydra.instance().clear()
    assert run_cli() == 2
    assert (tmp_path / "run" / "FAILED").read_text().startswith(f"{root / 'masks'}") or \
        "img03" in (tmp_path / "run" / "FAILED").read_text().splitlines()[0]
    assert not (tmp_path / "run" / "RUNNING").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_the_real_command_line(make_folder, tmp_path: Path) -> None:
    """Exit codes and messages through the installed entry point, Hydra's own errors included."""
    root = make_folder(n=6)
    bad_seed = run_subprocess(["data=folder", f"data.root={root}", *TINY, "data.label_seed=-1"], tmp_path)
    assert bad_seed.returncode == 2 and "config `data.label_seed`" in bad_seed.stderr
    unknown = run_subprocess(["method=nonexistent"], tmp_path)
    assert unknown.returncode == 2 and "method/nonexistent" in unknown.stderr
    assert "Traceback" not in bad_seed.stderr + unknown.stderr


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp1252", "latin-1"])
def test_meta_csv_groups_are_the_same_in_every_common_encoding(make_folder, caplog, encoding: str) -> None:
    from pscl.data.index import index_folder

    root = make_folder(n=6)
    _meta(root, encoding)
    with caplog.at_level(logging.WARNING, logger="pscl.data"):
        index = index_folder(root)
    assert {s.id: s.group for s in index.samples.values()} == {
        f"img{i:02d}": GROUP if i % 2 else "as cast" for i in range(6)}
    assert index.groups() == (GROUP, "as cast")
    warned = [r.getMessage() for r in caplog.records if "is not UTF-8" in r.getMessage()]
    assert warned == ([] if encoding.startswith("utf-8") else
                      [f"{root / 'meta.csv'} is not UTF-8: read it as Windows-1252; if accented letters of the "
                       "meta.csv look wrong, save it as UTF-8 text (in a spreadsheet program: Save As > CSV UTF-8)"])


@pytest.mark.parametrize("method, refused", [("simclr", True), ("byol", True), ("moco", False), ("densecl", False),
                                             ("pscl_simclr", False), ("pscl_moco", False), ("supervised", False)])
def test_pool_batches_of_one_are_refused_for_the_methods_that_cannot_train_on_them(
        tmp_path: Path, method: str, refused: bool) -> None:
    from conftest import compose_config
    from pscl.checks import check_batch_sizes
    from pscl.errors import ConfigError

    cfg = compose_config([f"method={method}", "data.unlabeled_batch_size=1", "data.crop_size=32"], tmp_path / "run")
    if refused:
        with pytest.raises(ConfigError, match=f"is 1 but method={method} needs at least 2 images") as info:
            check_batch_sizes(cfg)
        assert str(info.value).endswith("fix: set data.unlabeled_batch_size=2 or more (the pool must hold that "
                                        "many images)")
    else:
        check_batch_sizes(cfg)
    # fine-tuning from given weights never pretrains, so the pool's batch size does not matter
    check_batch_sizes(compose_config([f"method={method}", "data.unlabeled_batch_size=1", "stage=finetune",
                                      f"pretrained_ckpt={tmp_path / 'w.pt'}"], tmp_path / "ft"))
    one_pixel = compose_config([f"method={method}", "data.unlabeled_batch_size=1", "data.crop_size=8"],
                               tmp_path / "small")
    if method == "supervised":
        check_batch_sizes(one_pixel)  # no pool batches; fine-tuning batches hold data.batch_size=4 crops
    else:  # an 8 px crop leaves the bottleneck 1x1: every method needs two
        with pytest.raises(ConfigError, match="config `data.unlabeled_batch_size`: is 1 but"):
            check_batch_sizes(one_pixel)
