"""Hostile or damaged run folders, report and synth options, a broken cache entry, printed commands.

Every case checks the exit code (for the report: which runs it lists as unreadable), a message
fragment, that no traceback reaches the user, and that what earlier runs wrote is unchanged.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pscl.reporting.report import main as report_main

# ------------------------------------------------------------------ helpers
REPORT_FILES = {"results.md", "results.csv", "runs.csv", "per_image.csv", "label_efficiency.png", "gallery.png",
                "pretraining_curve.png"}


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root`` (read with open(), so a patched Path never interferes)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                found[str(path.relative_to(root))] = hashlib.sha256(handle.read()).hexdigest()
    return found


def exit_code(command: Callable[[list[str]], int], argv: list[str]) -> int:
    """A command's exit code, whether it returns it or argparse raises SystemExit."""
    try:
        return command(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def metrics(seed: int, dice: float = 0.6, **extra: object) -> dict:
    return {"method": "supervised", "num_labeled": 1, "label_seed": seed, "labeled_ids": ["img00"], "split": "test",
            "test": {"dice": dice, "acc": 0.9, "miou": dice - 0.1}, "protocol": "final", "test_history": [], **extra}


def write_run(folder: Path, seed: int, files: dict[str, str | bytes]) -> Path:
    """A run folder with its Hydra config and the given files (text or bytes)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(
        f"method:\n  name: supervised\ndata:\n  num_labeled: 1\n  label_seed: {seed}\n")
    for name, content in files.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    return folder


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    """Two finished rounds of supervised (Dice 0.6 and 0.8)."""
    root = tmp_path / "multirun"
    write_run(root / "0", 0, {"metrics.json": json.dumps(metrics(0, 0.6))})
    write_run(root / "1", 1, {"metrics.json": json.dumps(metrics(1, 0.8))})
    return root


# ------------------------------------------------------------------ pscl-report: damaged run folders
@dataclass
class Spoiled:
    """A run folder ``bad`` holding ``files``; the report must list it as failed with ``fragment``."""

    name: str
    files: dict[str, str | bytes]
    fragment: str


SPOILED = [
    Spoiled("list", {"metrics.json": "[1, 2]"}, "not a JSON object but a list"),
    Spoiled("number", {"metrics.json": "3.5"}, "not a JSON object but a float"),
    Spoiled("no_num_labeled", {"metrics.json": json.dumps({k: v for k, v in metrics(2).items() if k != "num_labeled"})},
            "no `num_labeled`"),
    Spoiled("no_method", {"metrics.json": json.dumps({k: v for k, v in metrics(2).items() if k != "method"})},
            "no `method`"),
    Spoiled("string_metrics", {"metrics.json": json.dumps(metrics(2, **{"test": {"dice": "0.9", "acc": "0.9"}}))},
            "`test.dice` is '0.9', not a number"),
    Spoiled("not_utf8", {"metrics.json": b'{"method": "\xff\xfe supervised"}'}, "UnicodeDecodeError"),
    Spoiled("not_json", {"metrics.json": '{"method": "supervised", '}, "JSONDecodeError"),
    Spoiled("split_not_a_name", {"metrics.json": json.dumps(metrics(2, split=["test"]))}, "`split` is ['test']"),
    Spoiled("bad_history", {"metrics.json": json.dumps(metrics(2, test_history=["x"]))},
            "`test_history` is not a list of mappings"),
    Spoiled("bad_snapshots", {"metrics.json": json.dumps(metrics(2, snapshots=[{"epoch": 1, "steps": 5,
                                                                                "test": {"dice": None}}]))},
            "`snapshots[0].test.dice` is 'None', not a number"),
    Spoiled("failed_with_unparsable_config",
            {"FAILED": "RuntimeError: out of memory\n", ".hydra/config.yaml": "a: [b\n"},
            "out of memory; its .hydra/config.yaml cannot be read"),
    Spoiled("grid_run_with_unparsable_overrides",
            {"metrics.json": json.dumps(metrics(2, split="val", val={"dice": 0.5, "acc": 0.9}, test=None)),
             ".hydra/overrides.yaml": "- method=supervised\n- [unclosed\n"}, "overrides.yaml: cannot be read"),
    Spoiled("grid_run_with_overrides_not_a_list",
            {"metrics.json": json.dumps(metrics(2, split="val", val={"dice": 0.5, "acc": 0.9}, test=None)),
             ".hydra/overrides.yaml": "method: supervised\n"}, "is not a list of overrides"),
]


def _listed(out: Path) -> dict[str, str]:
    """folder -> status in runs.csv."""
    with open(out / "runs.csv", newline="") as handle:
        return {Path(row["folder"]).name: row["status"] for row in csv.DictReader(handle)}


@pytest.mark.parametrize("case", SPOILED, ids=[c.name for c in SPOILED])
def test_report_lists_an_unreadable_run_and_writes_the_rest(case: Spoiled, multirun: Path, tmp_path: Path,
                                                            capsys) -> None:
    bad = write_run(multirun / "bad", 2, case.files)
    before = digests(multirun)
    out = tmp_path / "report"
    assert report_main([str(multirun), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    table = (out / "results.md").read_text()
    listed = [line for line in table.splitlines() if line.startswith("* failed:") and f"`{bad}`" in line]
    assert len(listed) == 1 and case.fragment in listed[0], table
    assert "| supervised | 1 | 2" in table  # the two good rounds are still reported
    assert _listed(out) == {"0": "ok", "1": "ok", "bad": "failed"}
    assert digests(multirun) == before
    assert {p.name for p in out.iterdir()} <= REPORT_FILES


def test_report_lists_a_metrics_file_it_may_not_read(multirun: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """A permission error (simulated: the tests may run as root, who reads anything) costs that run only."""
    bad = write_run(multirun / "bad", 2, {"metrics.json": json.dumps(metrics(2))})
    before = digests(multirun)
    real = Path.read_bytes

    def refusing(self: Path) -> bytes:
        if self == bad / "metrics.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", refusing)
    out = tmp_path / "report"
    assert report_main([str(multirun), "--out", str(out)]) == 0
    monkeypatch.undo()
    assert "Traceback" not in capsys.readouterr().err
    assert f"`{bad}` - unreadable metrics.json (PermissionError" in (out / "results.md").read_text()
    assert _listed(out)["bad"] == "failed" and digests(multirun) == before


def test_report_ignores_a_broken_multirun_yaml_and_writes_only_its_own_files(multirun: Path, capsys) -> None:
    (multirun / "multirun.yaml").write_bytes(b"hydra: [\xff\n")
    before = digests(multirun)
    assert report_main([str(multirun)]) == 0  # the report goes into the multirun folder itself
    assert "Traceback" not in capsys.readouterr().err
    after = digests(multirun)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) <= REPORT_FILES and "* failed" not in (multirun / "results.md").read_text()


def test_report_leaves_out_damaged_prediction_images(multirun: Path, make_folder, tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    """A truncated PNG, a prediction of an image the data folder lacks, a class the data has not, one over
    the pixel limit: each is left out with a note; the tables, per_image.csv and the gallery are written
    from the rest."""
    import numpy as np
    from PIL import Image

    data = make_folder("data", n=4)
    for seed in (0, 1):
        folder = multirun / str(seed)
        (folder / "metrics.json").write_text(json.dumps(metrics(seed, data_root=str(data))))
        (folder / "predictions").mkdir()
        Image.fromarray(np.ones((64, 80), np.uint8)).save(folder / "predictions" / "img01.png")
        Image.fromarray(np.ones((64, 80), np.uint8)).save(folder / "predictions" / "stray.png")
        Image.fromarray(np.full((64, 80), 7, np.uint8)).save(folder / "predictions" / "img02.png")
        (folder / "predictions" / "img00.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        if seed == 1:  # over the pixel limit set below
            Image.fromarray(np.ones((100, 100), np.uint8)).save(folder / "predictions" / "img01.png")
    monkeypatch.setenv("PSCL_MAX_IMAGE_PIXELS", "6000")  # above 64 x 80, below 100 x 100: a stand-in bomb
    before = digests(multirun)
    out = tmp_path / "report"
    assert report_main([str(multirun), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "img00.png left out: cannot be read as an image" in err and "class 7 is not one of" in err
    assert "1/predictions/img01.png left out" in err and "PSCL_MAX_IMAGE_PIXELS" in err
    assert "Traceback" not in err and digests(multirun) == before
    with open(out / "per_image.csv", newline="") as handle:
        assert sorted(row["image"] for row in csv.DictReader(handle)) == ["img01"]
    assert (out / "gallery.png").is_file() and {p.name for p in out.iterdir()} <= REPORT_FILES


# ------------------------------------------------------------------ pscl-report: bad options
@dataclass
class BadOption:
    name: str
    args: Callable[[Path, Path], list[str]]  # (multirun, tmp_path) -> argv
    fragment: str


def _a_file(tmp: Path) -> Path:
    (tmp / "a_file").write_text("not a folder\n")
    return tmp / "a_file"


def _no_runs(tmp: Path) -> Path:
    (tmp / "empty" / "logs").mkdir(parents=True)
    return tmp / "empty"


BAD_OPTIONS = [
    BadOption("out_is_a_file", lambda m, t: [str(m), "--out", str(_a_file(t))], "is a file, not a folder"),
    BadOption("out_below_a_file", lambda m, t: [str(m), "--out", str(_a_file(t) / "report")], "cannot be created"),
    BadOption("no_runs", lambda m, t: [str(_no_runs(t))], "holds no runs to report"),
    BadOption("not_a_folder", lambda m, t: [str(t / "nowhere")], "nowhere: is not a folder"),
    BadOption("negative_gallery", lambda m, t: [str(m), "--gallery-images", "-1"], "must be 0 or more, got -1"),
    BadOption("gallery_not_a_number", lambda m, t: [str(m), "--gallery-images", "x"], "expected a whole number"),
    BadOption("paper_without_history", lambda m, t: [str(m), "--protocol", "paper"], "rerun it with eval=paper"),
]


@pytest.mark.parametrize("case", BAD_OPTIONS, ids=[c.name for c in BAD_OPTIONS])
def test_report_bad_options_exit_2_with_one_message(case: BadOption, multirun: Path, tmp_path: Path,
                                                    capsys) -> None:
    argv = case.args(multirun, tmp_path)
    before = digests(tmp_path)
    assert exit_code(report_main, argv) == 2
    err = capsys.readouterr().err
    assert case.fragment in err and "pscl-report: error:" in err and "Traceback" not in err
    assert digests(tmp_path) == before  # nothing written, nothing changed


def test_report_crash_is_one_line_saying_it_is_a_bug(multirun: Path, capsys, monkeypatch) -> None:
    import pscl.reporting.report as report

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("an internal mistake")

    monkeypatch.setattr(report, "summarize", broken)
    before = digests(multirun)
    monkeypatch.delenv("PSCL_DEBUG", raising=False)
    assert report_main([str(multirun)]) == 1
    err = capsys.readouterr().err
    assert "pscl-report: crashed: RuntimeError: an internal mistake" in err and "bug" in err
    assert "Traceback" not in err and digests(multirun) == before
    monkeypatch.setenv("PSCL_DEBUG", "1")
    assert report_main([str(multirun)]) == 1
    assert "Traceback" in capsys.readouterr().err  # PSCL_DEBUG=1 keeps it


def test_report_command_line_in_a_subprocess(multirun: Path, tmp_path: Path) -> None:
    """The module's own entry point: exit codes and stderr as a user sees them."""
    import subprocess

    write_run(multirun / "bad", 2, {"metrics.json": "[]"})
    before = digests(multirun)
    run = [sys.executable, "-m", "pscl.reporting.report"]
    good = subprocess.run([*run, str(multirun), "--out", str(tmp_path / "r")], capture_output=True, text=True,
                          timeout=120)
    bad = subprocess.run([*run, str(multirun), "--out", str(_a_file(tmp_path))], capture_output=True, text=True,
                         timeout=120)
    assert good.returncode == 0 and "not a JSON object but a list" in good.stdout, good.stderr
    assert bad.returncode == 2 and "is a file, not a folder" in bad.stderr
    assert "Traceback" not in good.stderr + bad.stderr and digests(multirun) == before


# ------------------------------------------------------------------ pscl-synth: options
SYNTH_CASES = [
    ("out_below_a_file", lambda t: ["--out", str(_a_file(t) / "ds")], "is a file, so nothing can be written"),
    ("out_is_a_file", lambda t: ["--out", str(_a_file(t))], "is a file; pass a folder"),
    ("negative_count", lambda t: ["--out", str(t / "ds"), "--counts=-1,2,2"], "non-negative counts"),
    ("negative_seed", lambda t: ["--out", str(t / "ds"), "--seed", "-3"], "must be >= 0"),
    ("preview_below_a_file", lambda t: ["--out", str(t / "ds"), "--preview", str(_a_file(t) / "p.png")],
     "is a file, so nothing can be written"),
    ("preview_is_a_folder", lambda t: ["--out", str(t / "ds"), "--preview", str(t)], "is a folder; pass the name"),
]


@pytest.mark.parametrize("name, args, fragment", SYNTH_CASES, ids=[c[0] for c in SYNTH_CASES])
def test_synth_bad_options_exit_2_before_writing(name: str, args: Callable[[Path], list[str]], fragment: str,
                                                 tmp_path: Path, capsys) -> None:
    from pscl.data import synthetic

    argv = [*args(tmp_path), "--counts", "1,0,0", "--size", "32", "--no-progress"]
    before = digests(tmp_path)
    assert exit_code(synthetic.main, argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and "pscl-synth: error:" in err and "Traceback" not in err
    assert digests(tmp_path) == before and not (tmp_path / "ds").exists()


def test_synth_write_failure_is_one_message(tmp_path: Path, capsys, monkeypatch) -> None:
    """A disk that refuses the write (simulated: root writes anywhere) is a user error, not a crash."""
    from pscl.data import synthetic

    def refusing(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(synthetic, "write_dataset", refusing)
    assert synthetic.main(["--out", str(tmp_path / "ds"), "--counts", "1,0,0", "--size", "32"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the dataset (Permission denied)" in err and "Traceback" not in err


# ------------------------------------------------------------------ the pretraining cache repairs itself
class _Pool:
    """The two things pretrain_or_reuse asks of a data module for a label-free method."""

    labeled_ids = ["img00"]

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def pretraining_pool(self) -> list[Path]:
        return self.files

    def labeled_mask_files(self) -> list[Path]:
        return []


def test_a_planted_cache_entry_is_moved_aside_and_replaced(make_folder, tmp_path: Path, caplog,
                                                           monkeypatch) -> None:
    from conftest import compose_config, write_crafted_checkpoint

    import pscl.training.pretraining as pretraining_module
    from pscl.training import pretrain_cache
    from pscl.integrity import hash_file
    from pscl.models.transfer import save_pretrained

    root = make_folder(n=4)
    pool = _Pool(sorted((root / "images").glob("*.png")))
    runs: list[Path] = []

    def fake_pretrain(cfg, datamodule, output_dir: Path) -> pretraining_module.Pretraining:
        runs.append(output_dir)
        weights = {"encoder.w": torch.full((3,), float(len(runs)))}
        save_pretrained(weights, output_dir / "pretrain" / "pretrained.pt", {"method": "simclr"})
        return pretraining_module.Pretraining(weights, {"reused": False, "key": None, "source": "fake"}, [])

    monkeypatch.setattr(pretraining_module, "pretrain", fake_pretrain)
    overrides = ["method=simclr", "data=folder", f"data.root={root}"]
    cfg = compose_config(overrides, tmp_path / "run1")
    key = pretrain_cache.pretraining_key(pretrain_cache.pretraining_config(cfg, pool.files))
    entry = pretrain_cache.cache_folder(cfg.paths.cache_dir, "simclr", key)
    marker = tmp_path / "payload_ran"
    write_crafted_checkpoint(entry / "pretrained.pt", marker)
    (entry / "entry.json").write_text(json.dumps({"sha256": {"pretrained.pt": hash_file(entry / "pretrained.pt")}}))

    with caplog.at_level(logging.WARNING, logger="pscl.pretrain_cache"):
        first = pretraining_module.pretrain_or_reuse(cfg, pool, tmp_path / "run1")
    (aside,) = entry.parent.glob(f"{entry.name}.broken-*")
    assert runs == [tmp_path / "run1"] and not first.info["reused"]
    assert "refused" in caplog.text and str(entry) in caplog.text and str(aside) in caplog.text
    assert pretrain_cache.verify(entry) is None and (aside / "pretrained.pt").is_file()  # kept for inspection

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pscl.pretrain_cache"):
        second = pretraining_module.pretrain_or_reuse(compose_config(overrides, tmp_path / "run2"), pool, tmp_path / "run2")
    assert runs == [tmp_path / "run1"] and second.info["reused"]  # no second pretraining
    assert torch.equal(second.weights["encoder.w"], torch.ones(3))
    assert [r.getMessage() for r in caplog.records if r.name == "pscl.pretrain_cache"] == []
    assert not marker.exists()


def test_store_replaces_a_broken_entry_but_keeps_a_healthy_one(tmp_path: Path, caplog) -> None:
    """reuse_pretraining=false skips the lookup: store itself must not keep a broken entry forever."""
    from conftest import write_crafted_checkpoint

    from pscl.training import pretrain_cache
    from pscl.integrity import hash_file
    from pscl.models.transfer import save_pretrained

    entry = tmp_path / "cache" / "pretrained" / "simclr-0123"
    marker = tmp_path / "payload_ran"
    write_crafted_checkpoint(entry / "pretrained.pt", marker)
    (entry / "entry.json").write_text(json.dumps({"sha256": {"pretrained.pt": hash_file(entry / "pretrained.pt")}}))
    good = save_pretrained({"encoder.w": torch.ones(2)}, tmp_path / "run" / "pretrained.pt", {})
    with caplog.at_level(logging.WARNING, logger="pscl.pretrain_cache"):
        assert pretrain_cache.store(entry, good, {"method": "simclr"}) == entry / "pretrained.pt"
    assert "moved it aside" in caplog.text and pretrain_cache.lookup(entry, []) is not None
    stored = digests(entry)
    other = save_pretrained({"encoder.w": torch.zeros(2)}, tmp_path / "other" / "pretrained.pt", {})
    pretrain_cache.store(entry, other, {"method": "simclr"})
    assert digests(entry) == stored and not marker.exists()  # write-once for a healthy entry


# ------------------------------------------------------------------ printed commands run as printed
TRICKY = ["plain", "/runs/a b/pretrained.pt", "it's", 'say "hi"', "a=b", "a,b", "/home/jürgen/p.pt", "$HOME",
          "back\\", "quote\\'", " padded ", "5", "true", "null", "[1,2]"]


def through_bash(arguments: str) -> list[str]:
    """The words a real shell makes of ``arguments`` (as a user pasting the printed command gets)."""
    import shutil
    import subprocess

    if shutil.which("bash") is None:
        return shlex.split(arguments)
    done = subprocess.run(["bash", "-c", f"printf '%s\\0' {arguments}"], capture_output=True, timeout=30, check=True)
    return done.stdout.decode().split("\0")[:-1]


@pytest.mark.parametrize("value", TRICKY)
def test_command_arg_survives_the_shell_and_hydra(value: str) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pscl.runs.quoting import command_arg

    argument = command_arg(value, "pretrained_ckpt")
    (override,) = shlex.split(argument)
    assert through_bash(argument) == [override]
    (parsed,) = OverridesParser.create().parse_overrides([override])
    assert parsed.key_or_group == "pretrained_ckpt" and parsed.value() == value
    assert shlex.split(command_arg(value)) == through_bash(command_arg(value)) == [value]  # shell quoting only


def test_predict_command_quotes_its_paths(tmp_path: Path) -> None:
    from pscl.training.pipeline import predict_command

    run, data = tmp_path / "runs ü" / "it's", tmp_path / "data $x"
    (data / "images").mkdir(parents=True)
    words = shlex.split(predict_command(run, str(data)))
    assert through_bash(predict_command(run, str(data))) == words
    assert words == ["pscl-predict", str(run), str(data / "images"), "--out", str(run / "predict")]


def test_the_printed_finetune_command_runs_as_printed(make_folder, tmp_path: Path, capsys, monkeypatch) -> None:
    """stage=pretrain in a folder with a space and a non-ASCII character; the printed fine-tuning command
    (run overrides kept: a backbone other than the default) fine-tunes from that pretraining."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from pscl.runs.quoting import hydra_value
    from pscl.training.app import run_cli

    root = make_folder("my data ü", n=6)  # a carried override that needs Hydra's quotes too
    run_dir = tmp_path / "runs ü" / "pre"
    tiny = ["data=folder", f"data.root={hydra_value(str(root))}", "backbone=unet_small", "backbone.widths=[8,16,32,64]",
            "logger=csv", "data.crop_size=32", "data.batch_size=2", "data.samples_per_epoch=4",
            "data.unlabeled_batch_size=2", "method=simclr", "method.pretrain_epochs=1", "trainer.max_epochs=1"]
    monkeypatch.setenv("PSCL_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setenv("PSCL_CACHE_DIR", str(tmp_path / "cache"))
    placement = f"hydra.run.dir={hydra_value(str(run_dir))}"  # quoted for Hydra: a space and a ü
    monkeypatch.setattr(sys, "argv", ["pscl-train", *tiny, "stage=pretrain", placement])
    GlobalHydra.instance().clear()
    assert run_cli() == 0
    out = capsys.readouterr().out
    command = out.split("fine-tune with\n", 1)[1].splitlines()[0].strip()
    words = shlex.split(command)
    assert through_bash(command) == words
    assert words[0] == "pscl-train" and "stage=pretrain" not in words and "backbone=unet_small" in words
    assert f"pretrained_ckpt={hydra_value(str(run_dir / 'pretrain' / 'pretrained.pt'))}" in words
    before = digests(run_dir)

    monkeypatch.setattr(sys, "argv", words)  # as printed: argv[0] is the program name
    GlobalHydra.instance().clear()
    assert run_cli() == 0, capsys.readouterr().err
    (finetuned,) = [p.parent for p in (tmp_path / "logs").rglob("metrics.json")]
    record = json.loads((finetuned / "metrics.json").read_text())
    assert record["test"]["dice"] >= 0 and record["transferred_keys"] > 0
    assert record["pretraining"]["source"] == str(run_dir / "pretrain" / "pretrained.pt")
    saved = OmegaConf.load(finetuned / ".hydra" / "config.yaml")
    assert saved.backbone.widths == [8, 16, 32, 64] and saved.stage == "finetune" and saved.data.root == str(root)
    assert digests(run_dir) == before  # the pretraining run is left as it was
