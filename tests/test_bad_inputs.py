"""A table of bad inputs: each gives its exit code and a one-line message naming the key or file.

Cases run pscl-train's command line in-process (``pscl.train.run_cli`` on a patched ``sys.argv``),
so the table stays fast; ``test_the_real_command_line`` checks two of them in a subprocess.
Exit codes: 2 a user error, 3 a diverged training (tests/test_run_states.py), 1 a crash.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli as run_subprocess
from test_integrity import write_crafted_checkpoint

TINY = ["backbone=unet_small", "backbone.widths=[8,16,32,64]", "logger=csv", "data.crop_size=32"]


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
    Case("negative learning rate", ["method.finetune_decoder_lr=-0.1"], 2, "config `method.finetune_decoder_lr`"),
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
]


def _fill(text: str, root: Path, tmp: Path) -> str:
    return text.replace("{root}", str(root)).replace("{tmp}", str(tmp))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, make_folder, tmp_path: Path, monkeypatch, capsys) -> None:
    from hydra.core.global_hydra import GlobalHydra

    from pscl.train import run_cli

    root = make_folder(n=6)
    if case.prepare:
        case.prepare(root, tmp_path)
    args = [f"data=folder", f"data.root={root}", *TINY, *[_fill(a, root, tmp_path) for a in case.args]]
    monkeypatch.setattr(sys, "argv", ["pscl-train", *args])
    monkeypatch.setenv("PSCL_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("PSCL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for key, value in case.env.items():
        monkeypatch.setenv(key, _fill(value, root, tmp_path))
    GlobalHydra.instance().clear()
    code = run_cli()
    err = capsys.readouterr().err
    assert code == case.code, err
    assert case.fragment in err
    assert "Traceback" not in err
    assert not (tmp_path / "payload-ran").exists()
    written = sorted(p.name for p in root.rglob("*") if p.is_file())
    assert not [name for name in written if name.endswith((".tmp", ".ckpt", ".pt"))]  # data folders never written


def test_a_failed_single_run_leaves_failed_not_running(make_folder, tmp_path: Path, monkeypatch, capsys) -> None:
    from hydra.core.global_hydra import GlobalHydra

    from pscl.train import run_cli

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
