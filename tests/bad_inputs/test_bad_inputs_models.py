"""Bad model files, run configs and resume folders, through the commands a user runs.

Every case runs ``pscl-predict``, ``pscl-export`` or ``pscl-train resume=`` in-process and
asserts the exit code, a fragment of the one message, no traceback, that no planted code ran
(a marker file never appears), and that every file already there (the run folder, the data
folder, earlier outputs) is unchanged. tests/integrity/test_security.py holds the unit tests and the teeth.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import draw_sample, hub_config, nested_config, tree_hashes, write_crafted_checkpoint, write_image

from pscl.models.model_file import save_model

CLASSES = ("matrix", "phase1", "phase2")
BACKBONE = {"_target_": "pscl.models.unet.UNet", "widths": [8, 16, 16, 32], "channels_last": False,
            "checkpoint_blocks": "none"}
TINY = ["backbone=unet_small", "backbone.widths=[8,16,32,64]", "logger=csv", "data.crop_size=32"]


def _model_blob(tmp: Path) -> dict:
    from pscl.models.unet import UNet

    torch.manual_seed(0)
    path = save_model(tmp / "good" / "model.pt", UNet(1, 3, widths=BACKBONE["widths"]).eval(), BACKBONE, CLASSES,
                      (0.5,), (0.2,), "supervised", {"method": {"name": "supervised"}})
    return torch.load(path, weights_only=True)


def _write_model(tmp: Path, **changes: object) -> Path:
    blob = _model_blob(tmp)
    blob.update(changes)
    path = tmp / "run" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return path


def _old_run(tmp: Path, backbone_yaml: str) -> Path:
    """A run folder from before model.pt: checkpoints/last.ckpt and .hydra/config.yaml."""
    blob = _model_blob(tmp)
    run = tmp / "run"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / ".hydra").mkdir(exist_ok=True)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in blob["state_dict"].items()},
                "hyper_parameters": {"class_names": list(CLASSES)},
                "MicrographDataModule": {"mean": [0.5], "std": [0.2]}}, run / "checkpoints" / "last.ckpt")
    (run / ".hydra" / "config.yaml").write_text(f"method:\n  name: supervised\ndata:\n  in_channels: 1\n{backbone_yaml}")
    return run


def _images(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(2):
        image, _ = draw_sample(rng, 40, 48, 3)
        write_image(folder / f"m{i}.png", image)
    return folder


# ------------------------------------------------------------------- model files: predict and export
@dataclass
class ModelCase:
    """A model file made by ``make(tmp, marker)`` (returns the path given to the command)."""

    name: str
    make: Callable[[Path, Path], Path]
    fragment: str
    code: int = 2


def _only_format(tmp: Path) -> Path:
    path = tmp / "run" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "pscl-model/1", "state_dict": {}}, path)
    return path


def _hub(tmp: Path, marker: Path) -> Path:
    return _write_model(tmp, backbone_config=hub_config(tmp, marker))


def _nested(tmp: Path, marker: Path) -> Path:
    return _write_model(tmp, backbone_config=nested_config(marker))


def _truncated(tmp: Path, marker: Path) -> Path:
    path = _write_model(tmp)
    path.write_bytes(path.read_bytes()[:500])
    return path


def _pickled(tmp: Path, marker: Path) -> Path:
    return write_crafted_checkpoint(tmp / "run" / "model.pt", marker)


def _old_run_hub(tmp: Path, marker: Path) -> Path:
    repo = hub_config(tmp, marker)["repo_or_dir"]
    return _old_run(tmp, "backbone:\n  _target_: pscl.models.unet.torch.hub.load\n"
                         f"  repo_or_dir: '{repo}'\n  model: m\n  source: local\n")


MODEL_CASES = [
    ModelCase("target reaching torch.hub.load", _hub, "is not one of the classes pscl builds from a file"),
    ModelCase("nested target", _nested, "`backbone_config.widths._target_`"),
    ModelCase("partial target", lambda t, m: _write_model(t, backbone_config={**BACKBONE, "_partial_": True}),
              "`backbone_config._partial_`"),
    ModelCase("non-pscl target", lambda t, m: _write_model(t, backbone_config={"_target_": "torch.nn.Identity"}),
              "'torch.nn.Identity', which is not one of the classes"),
    ModelCase("interpolation in the config",
              lambda t, m: _write_model(t, backbone_config={**BACKBONE, "checkpoint_blocks": "${oc.env:HOME}"}),
              "holds an interpolation"),
    ModelCase("unknown backbone setting", lambda t, m: _write_model(t, backbone_config={**BACKBONE, "depth": 9}),
              "settings ['depth'] that pscl.models.unet.UNet does not take"),
    ModelCase("absurd widths", lambda t, m: _write_model(t, backbone_config={**BACKBONE, "widths": [2**20] * 4}),
              "its weights do not fit a backbone"),
    ModelCase("empty class list", lambda t, m: _write_model(t, class_names=[]), "lists 0 class name(s)"),
    ModelCase("one class", lambda t, m: _write_model(t, class_names=["matrix"]), "at least two distinct classes"),
    ModelCase("repeated class", lambda t, m: _write_model(t, class_names=["a", "a", "b"]), "with repeats"),
    ModelCase("class names not strings", lambda t, m: _write_model(t, class_names=[1, 2, 3]),
              "class names that are not a list of names"),
    ModelCase("two input channels", lambda t, m: _write_model(t, in_channels=2, mean=[0.5] * 2, std=[0.2] * 2),
              "takes 2 input channels"),
    ModelCase("zero standard deviation", lambda t, m: _write_model(t, std=[0.0]),
              "input standard deviation of 0"),
    ModelCase("non-finite mean", lambda t, m: _write_model(t, mean=[float("nan")]), "non-finite input mean"),
    ModelCase("statistics for the wrong channels", lambda t, m: _write_model(t, std=[0.2, 0.2]),
              "statistics for 2 channel(s) but 1"),
    ModelCase("mean not numbers", lambda t, m: _write_model(t, mean="0.5"), "input mean that is not a list"),
    ModelCase("non-finite weights", lambda t, m: _write_model(t, state_dict={
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in _model_blob(t)["state_dict"].items()}),
        "its weights hold non-finite values"),
    ModelCase("sparse weights", lambda t, m: _write_model(t, state_dict={
        k: v.to_sparse() if v.is_floating_point() and v.dim() == 1 else v for k, v in _model_blob(t)["state_dict"].items()}),
        "a pscl model holds plain dense real tensors"),
    ModelCase("weights not a mapping", lambda t, m: _write_model(t, state_dict=[1, 2]), "holds no network weights"),
    ModelCase("missing entries", lambda t, m: _only_format(t), "lacks the entries"),
    ModelCase("truncated model file", _truncated, "cannot be read as a checkpoint"),
    ModelCase("model file needing a pickle", _pickled, "refused: loading it would run code"),
    ModelCase("old run: config reaching torch.hub.load", _old_run_hub, "is not one of the classes pscl builds"),
    ModelCase("old run: config not YAML", lambda t, m: _old_run(t, "backbone: [unclosed\n"),
              "cannot be read as a run config"),
    ModelCase("old run: interpolation in the backbone", lambda t, m: _old_run(
        t, "backbone:\n  _target_: pscl.models.unet.UNet\n  widths: ${oc.create:[8,16,16,32]}\n"),
        "holds an interpolation"),
    ModelCase("old run: no backbone", lambda t, m: _old_run(t, ""), "has no `backbone` section"),
]


def _run_quietly(command: Callable[[list[str]], int], argv: list[str], capsys) -> tuple[int, str]:
    code = command(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", MODEL_CASES, ids=[c.name for c in MODEL_CASES])
def test_bad_model_file_in_predict(case: ModelCase, tmp_path: Path, capsys) -> None:
    from pscl.predict.cli import run

    marker = tmp_path / "payload-ran"
    source = case.make(tmp_path, marker)
    images = _images(tmp_path / "images")
    before = tree_hashes(tmp_path)
    code, err = _run_quietly(run, [str(source), str(images), "--out", str(tmp_path / "out")], capsys)
    assert code == case.code, err
    assert case.fragment in err and str(source) in err
    assert "Traceback" not in err and "weights_only=False" not in err
    assert not marker.exists()
    assert tree_hashes(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", [c for c in MODEL_CASES if c.name in {
    "target reaching torch.hub.load", "nested target", "truncated model file", "model file needing a pickle",
    "zero standard deviation", "old run: config reaching torch.hub.load"}], ids=lambda c: c.name)
def test_bad_model_file_in_export(case: ModelCase, tmp_path: Path, capsys) -> None:
    from pscl.predict.export import run

    marker = tmp_path / "payload-ran"
    source = case.make(tmp_path, marker)
    before = tree_hashes(tmp_path)
    code, err = _run_quietly(run, [str(source), "--out", str(tmp_path / "exported" / "m.ts.pt")], capsys)
    assert code == case.code, err
    assert case.fragment in err and "Traceback" not in err
    assert not marker.exists()
    assert tree_hashes(tmp_path) == before and not (tmp_path / "exported").exists()


def test_checkpoint_hyper_parameters_are_read_as_data(tmp_path: Path, capsys) -> None:
    """A target planted among a checkpoint's hyper-parameters is never built: they are read as values."""
    from pscl.predict.cli import run

    marker = tmp_path / "payload-ran"
    run_folder = _old_run(tmp_path, "backbone:\n" + "".join(f"  {k}: {v}\n" for k, v in BACKBONE.items()))
    ckpt = run_folder / "checkpoints" / "last.ckpt"
    blob = torch.load(ckpt, weights_only=True)
    blob["hyper_parameters"]["backbone"] = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    blob["hyper_parameters"]["class_weights"] = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    torch.save(blob, ckpt)
    code = run([str(run_folder), str(_images(tmp_path / "images")), "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    assert not marker.exists() and len(list((tmp_path / "out" / "masks").glob("*.png"))) == 2


# ------------------------------------------------------------------------------------ resume
def _resumable(root: Path, tmp: Path, overrides: list[str] | None = None) -> Path:
    """A run folder as pscl-train leaves it when killed: its overrides, RUNNING, no metrics."""
    run = tmp / "run"
    (run / ".hydra").mkdir(parents=True)
    saved = overrides if overrides is not None else ["data=folder", f"data.root={root}", *TINY]
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in saved))
    (run / "RUNNING").write_text("{}\n")
    return run


def _resume(run: Path, tmp: Path, monkeypatch, capsys, value: str | None = None) -> tuple[int, str]:
    from hydra.core.global_hydra import GlobalHydra

    from pscl.training.app import run_cli

    monkeypatch.setattr(sys, "argv", ["pscl-train", f"resume={value or run}"])
    monkeypatch.setenv("PSCL_CACHE_DIR", str(tmp / "cache"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    GlobalHydra.instance().clear()
    code = run_cli()
    return code, capsys.readouterr().err


def _sweep(tmp: Path, task: list[str], hydra: list[str]) -> Path:
    sweep = tmp / "sweep"
    sweep.mkdir()
    lines = ["hydra:", "  overrides:", "    hydra:", *[f"    - {o}" for o in hydra], "    task:",
             *[f"    - {o}" for o in task]]
    (sweep / "multirun.yaml").write_text("\n".join(lines) + "\n")
    return sweep


@dataclass
class ResumeCase:
    """``prepare(root, tmp, marker)`` returns the folder given to ``resume=``."""

    name: str
    prepare: Callable[[Path, Path, Path], Path]
    fragment: str


def _with_override(override: str) -> Callable[[Path, Path, Path], Path]:
    def prepare(root: Path, tmp: Path, marker: Path) -> Path:
        repo = hub_config(tmp, marker)["repo_or_dir"]
        return _resumable(root, tmp, ["data=folder", f"data.root={root}", *TINY,
                                      override.replace("{repo}", str(repo)).replace("{marker}", str(marker))])
    return prepare


def _broken_checkpoint(content: Callable[[Path, Path], None]) -> Callable[[Path, Path, Path], Path]:
    def prepare(root: Path, tmp: Path, marker: Path) -> Path:
        run = _resumable(root, tmp)
        (run / "checkpoints").mkdir()
        content(run / "checkpoints" / "last.ckpt", marker)
        return run
    return prepare


def _truncated_ckpt(path: Path, marker: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 1}, path)
    path.write_bytes(path.read_bytes()[:300])


RESUME_CASES = [
    ResumeCase("target override", _with_override("backbone._target_=pscl.models.unet.torch.hub.load"),
               "sets a key Hydra would act on"),
    ResumeCase("nested target override", _with_override("+data.evil._target_=builtins.open"),
               "sets a key Hydra would act on"),
    ResumeCase("group option outside pscl", _with_override("method=../../../../tmp/evil"),
               "not one of pscl's `method` configs"),
    ResumeCase("hydra search path", _with_override("hydra.searchpath=[file://{repo}]"),
               "changes Hydra's own settings"),
    ResumeCase("hydra environment", _with_override("hydra.job.env_set.LD_PRELOAD={marker}"),
               "changes Hydra's own settings"),
    ResumeCase("overrides not a list", lambda r, t, m: (_resumable(r, t), (t / "run" / ".hydra" / "overrides.yaml")
                                                         .write_text("method: simclr\n"))[0],
               "is not a list of overrides"),
    ResumeCase("overrides not YAML", lambda r, t, m: (_resumable(r, t), (t / "run" / ".hydra" / "overrides.yaml")
                                                       .write_text("- [unclosed\n"))[0], "cannot be read"),
    ResumeCase("interpolation building a target",
               _with_override("logger.csv.name='${oc.create:{_target_:builtins.open,file:{marker},mode:w}}'"),
               "holds an interpolation"),
    ResumeCase("override Hydra cannot parse", _with_override("data.root=/tmp/ü ü"),
               "holds an override Hydra cannot read"),
    ResumeCase("multirun: launcher setup commands",
               lambda r, t, m: _sweep(t, ["method=simclr"], ["hydra.mode=MULTIRUN", "hydra/launcher=slurm",
                                                              f"hydra.launcher.setup=[touch {m}]"]),
               "not one a pscl run writes"),
    ResumeCase("multirun: hydra callback",
               lambda r, t, m: _sweep(t, ["method=simclr"], ["hydra.mode=MULTIRUN",
                                                              "+hydra.callbacks.x._target_=builtins.open"]),
               "sets a key Hydra would act on"),
    ResumeCase("multirun: task override of hydra",
               lambda r, t, m: _sweep(t, ["hydra.launcher.setup=[x]"], ["hydra.mode=MULTIRUN"]),
               "changes Hydra's own settings"),
    ResumeCase("multirun: overrides not strings",
               lambda r, t, m: (_sweep(t, [], []), (t / "sweep" / "multirun.yaml").write_text(
                   "hydra:\n  overrides:\n    task:\n    - {a: 1}\n"))[0], "is not a list of overrides"),
    ResumeCase("truncated last.ckpt", _broken_checkpoint(_truncated_ckpt), "cannot be read as a checkpoint"),
    ResumeCase("last.ckpt needing a pickle", _broken_checkpoint(lambda p, m: write_crafted_checkpoint(p, m)),
               "refused: loading it would run code"),
    ResumeCase("last.ckpt that is no checkpoint", _broken_checkpoint(lambda p, m: torch.save([1, 2], p)),
               "is not a Lightning checkpoint"),
]


@pytest.mark.parametrize("case", RESUME_CASES, ids=[c.name for c in RESUME_CASES])
def test_bad_resume_folder(case: ResumeCase, make_folder, tmp_path: Path, monkeypatch, capsys) -> None:
    root = make_folder(n=6)
    marker = tmp_path / "payload-ran"
    folder = case.prepare(root, tmp_path, marker)
    before = tree_hashes(root, folder)
    code, err = _resume(folder, tmp_path, monkeypatch, capsys)
    assert code == 2, err
    assert case.fragment in err and "Traceback" not in err and "weights_only=False" not in err
    assert not marker.exists()
    after = tree_hashes(root, folder)
    markers = ("RUNNING", "FAILED", "train.log")  # the run's state: RUNNING becomes FAILED, with the log
    assert {k: v for k, v in after.items() if not k.endswith(markers)} == \
        {k: v for k, v in before.items() if not k.endswith(markers)}  # nothing else was added or changed
    if "ckpt" in case.name:
        assert "move it aside" in err and (folder / "FAILED").is_file()
    else:  # a refused replay never starts the run: its state is as it was
        assert not (folder / "FAILED").exists() and after == before


def test_resume_accepts_any_path_a_run_can_be_written_to(make_folder, tmp_path: Path, monkeypatch, capsys) -> None:
    """A run under a folder with spaces and non-ASCII letters resumes as typed or Hydra-quoted,
    and resuming never rewrites its .hydra/ record."""
    from hydra.core.global_hydra import GlobalHydra

    from pscl.training.app import run_cli

    root = make_folder(n=6)
    run = tmp_path / "my runs ü" / "a b'c"
    monkeypatch.setenv("PSCL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["pscl-train", "data=folder", f"data.root={root}", *TINY,
                                      "trainer.max_epochs=2", "checkpoint.finetune_every_n_epochs=1",
                                      "hydra.run.dir='" + str(run).replace("'", "\\'") + "'"])
    GlobalHydra.instance().clear()
    assert run_cli() == 0, capsys.readouterr().err
    record = tree_hashes(run / ".hydra")
    assert len(record) == 3 and "resume=" not in (run / ".hydra" / "overrides.yaml").read_text()
    finished = (run / "metrics.json").read_text()
    code, err = _resume(run, tmp_path, monkeypatch, capsys)  # typed as is: a finished run is left alone
    assert code == 0, err
    assert (run / "metrics.json").read_text() == finished and tree_hashes(run / ".hydra") == record
    (run / "metrics.json").unlink()  # now as if killed after its last checkpoint
    (run / "RUNNING").write_text("{}\n")
    quoted = "'" + str(run).replace("'", "\\'") + "'"
    code, err = _resume(run, tmp_path, monkeypatch, capsys, value=quoted)
    assert code == 0, err
    assert "resuming from" in err or (run / "metrics.json").is_file()
    assert (run / "metrics.json").is_file() and not (run / "RUNNING").exists()
    assert tree_hashes(run / ".hydra") == record
