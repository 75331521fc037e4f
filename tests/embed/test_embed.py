"""pscl-embed: 2-D maps of per-pixel features, one panel per network, on a hand-written run folder."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pscl.embed.cli import run
from pscl.embed.features import pick_pixels, renormalise, split_settings
from pscl.embed.maps import embed_2d
from pscl.embed.networks import pretrained_network, random_network, read_run
from pscl.errors import EXIT_USER_ERROR
from pscl.models.unet import UNet
from pscl.models.model_file import save_model
from pscl.models.transfer import save_pretrained

CLASSES = ("matrix", "phase1", "phase2")
BACKBONE = {"_target_": "pscl.models.unet.UNet", "widths": [8, 16, 16, 32], "channels_last": False,
            "checkpoint_blocks": "none"}
K = 12  # pixels per class: t-SNE on a few dozen points takes well under a second


def _unet(seed: int) -> UNet:
    torch.manual_seed(seed)
    return UNet(1, len(CLASSES), widths=BACKBONE["widths"]).eval()


def _write_run(folder: Path, data_root: Path, method: str, pretrained: bool) -> Path:
    """A run folder as pscl-train leaves it, written by hand: weights, metrics.json, .hydra/config.yaml."""
    if pretrained:
        save_pretrained(_unet(1).transferable_state_dict(), folder / "pretrain" / "pretrained.pt", {"method": method})
    save_model(folder / "model.pt", _unet(2), BACKBONE, CLASSES, (0.6,), (0.2,), method, {"method": {"name": method}})
    probe = {"dice": 0.612, "pretrained": pretrained, "random_init": {"dice": 0.401}}
    metrics = {"method": method, "data_root": str(data_root), "split": "test", "test": {"dice": 0.75}, "probe": probe}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / ".hydra").mkdir(parents=True)
    config = {"seed": 0, "method": {"name": method}, "backbone": BACKBONE,
              "data": {"root": str(data_root), "in_channels": 1, "split_seed": 0, "test_fraction": 0.2}}
    OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    return folder


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny images: a second intra-op thread only waits for a busy core (2-core CI), so use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_root(make_folder) -> Path:
    ids = [f"img{i:02d}" for i in range(6)]
    return make_folder(n=6, size=(48, 48), splits={"train": ids[:3], "test": ids[3:]})


@pytest.fixture
def runs(data_root: Path, tmp_path: Path) -> list[Path]:
    return [_write_run(tmp_path / "runs" / "pscl", data_root, "pscl_simclr", pretrained=True),
            _write_run(tmp_path / "runs" / "sup", data_root, "supervised", pretrained=False)]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_network_gets_a_panel_with_every_class(runs: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "maps" / "embed.png"
    assert run([*map(str, runs), "--out", str(out), "--pixels-per-class", str(K), "--images", "2"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = _rows(out.with_suffix(".csv"))
    networks = {row["network"] for row in rows}
    assert networks == {"random init", "pscl_simclr pretrained", "pscl_simclr fine-tuned", "supervised"}
    for network in networks:
        assert {row["class"] for row in rows if row["network"] == network} == set(CLASSES)
    per_network = Counter(row["network"] for row in rows)
    assert len(set(per_network.values())) == 1  # the same pixels in every panel
    assert len(rows) <= len(networks) * len(CLASSES) * K
    assert all(np.isfinite(float(row["x"])) and np.isfinite(float(row["y"])) for row in rows)
    assert "4 panels" in capsys.readouterr().out


def test_the_same_seed_gives_the_same_points(runs: list[Path], tmp_path: Path) -> None:
    tables = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / name / "embed.png"
        assert run([str(runs[0]), "--out", str(out), "--pixels-per-class", str(K), "--seed", str(seed)]) == 0
        tables.append(out.with_suffix(".csv").read_text())
    assert tables[0] == tables[1]
    assert tables[0] != tables[2]


def test_a_folder_that_is_not_a_run_exits_2_naming_it(tmp_path: Path, capsys) -> None:
    stray = tmp_path / "holiday_photos"
    stray.mkdir()
    code = run([str(stray), "--out", str(tmp_path / "embed.png")])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR
    assert str(stray) in err and "not a pscl run" in err and "Traceback" not in err
    assert not (tmp_path / "embed.png").exists()


def test_a_run_without_its_data_folder_asks_for_data(runs: list[Path], data_root: Path, tmp_path: Path,
                                                     capsys) -> None:
    moved = data_root.rename(tmp_path / "moved")
    out = tmp_path / "embed.png"
    assert run([str(runs[0]), "--out", str(out)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "--data" in err and "Traceback" not in err
    assert run([str(runs[0]), "--out", str(out), "--data", str(moved), "--pixels-per-class", str(K)]) == 0


def test_bad_options_are_one_message(runs: list[Path], tmp_path: Path, capsys) -> None:
    for extra in (["--images", "0"], ["--pixels-per-class", "0"], ["--out", str(tmp_path / "embed.jpg")]):
        argv = [str(runs[0]), "--out", str(tmp_path / "embed.png"), *extra]
        assert run(argv) == EXIT_USER_ERROR
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "Traceback" not in err


def test_titles_carry_steps_and_probe_dice(runs: list[Path]) -> None:
    pscl = read_run(runs[0])
    assert pscl.pretrained is not None and pscl.finetuned and pscl.method == "pscl_simclr"
    assert "probe Dice 0.612" in pretrained_network(pscl, 1, len(CLASSES), 0).title
    assert "probe Dice 0.401" in random_network(pscl, 1, len(CLASSES), 0).title
    assert "probe Dice" not in random_network(pscl, 1, len(CLASSES), 5).title  # another seed: not the floor


def test_without_pretrained_pt_the_last_snapshot_is_mapped(runs: list[Path]) -> None:
    folder = runs[0]
    (folder / "pretrain" / "pretrained.pt").unlink()
    for steps in (190, 57):
        snapshot = folder / "pretrain" / "snapshots" / f"step_{steps:04d}.pt"
        save_pretrained(_unet(steps).transferable_state_dict(), snapshot, {"method": "pscl_simclr", "steps": steps})
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["snapshots"] = [{"steps": 57, "probe": {"dice": 0.5}}, {"steps": 190, "probe": {"dice": 0.65}}]
    (folder / "metrics.json").write_text(json.dumps(metrics))
    pscl = read_run(folder)
    assert pscl.pretrained is not None and pscl.pretrained.name == "step_0190.pt"
    assert pretrained_network(pscl, 1, len(CLASSES), 0).title.endswith("190 steps · probe Dice 0.650")


def test_pick_pixels_is_per_class_seeded_and_skips_ignored() -> None:
    masks = [np.array([[0, 0, 1], [255, 2, 2]]), np.array([[0, 1, 1], [1, 255, 0]])]
    picks = pick_pixels(masks, 3, 2, seed=0)
    assert Counter(picks.label.tolist()) == {0: 2, 1: 2, 2: 2}
    for image, flat, label in zip(picks.image, picks.flat, picks.label):
        assert masks[image].ravel()[flat] == label
    again = pick_pixels(masks, 3, 2, seed=0)
    assert np.array_equal(picks.flat, again.flat) and np.array_equal(picks.image, again.image)


def test_split_settings_keep_plain_values_only() -> None:
    config = {"root": "/data", "layout": "${oc.env:LAYOUT}", "split_seed": 3, "test_fraction": 0.25,
              "val_fraction": True, "normalisation": "per_image", "batch_size": 4}
    assert split_settings(config) == {"split_seed": 3, "test_fraction": 0.25, "normalisation": "per_image"}
    assert split_settings(None) == {}


def test_embed_2d_is_seeded_and_two_dimensional() -> None:
    rows = np.random.default_rng(0).normal(size=(40, 50))
    a, b = embed_2d(rows, seed=1), embed_2d(rows, seed=1)
    assert a.shape == (40, 2) and np.array_equal(a, b)


def test_renormalise_gives_the_model_its_own_statistics() -> None:
    raw = torch.rand(1, 4, 4)
    ours = (raw - 0.5) / 0.25
    theirs = renormalise(ours, ((0.5,), (0.25,)), ((0.6,), (0.2,)))
    assert torch.allclose(theirs, (raw - 0.6) / 0.2, atol=1e-6)


def test_online_probe_logs_pixels_to_the_projector(make_folder, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from pscl.training.online_probe import OnlineProbe
    from pscl.data.datamodule import MicrographDataModule

    root = make_folder(name="probe_data", n=4, size=(48, 48), splits={"train": ["img00", "img01"],
                                                                       "test": ["img02", "img03"]})
    datamodule = MicrographDataModule(root=root, crop_size=32, num_labeled=1)
    datamodule.setup("fit")
    backbone = _unet(0).train()
    trainer = SimpleNamespace(loggers=[CSVLogger(tmp_path / "csv"), TensorBoardLogger(tmp_path / "tb", name="")],
                              datamodule=datamodule, global_step=7)
    state = torch.random.get_rng_state()
    OnlineProbe(1, projector_pixels=5)._project(trainer, SimpleNamespace(backbone=backbone))
    assert backbone.training and torch.equal(state, torch.random.get_rng_state())
    trainer.loggers[1].experiment.flush()
    metadata = list((tmp_path / "tb").rglob("metadata.tsv"))
    assert len(metadata) == 1 and "00007" in str(metadata[0])
    assert set(metadata[0].read_text().split()) <= set(CLASSES)
    assert list((tmp_path / "tb").rglob("projector_config.pbtxt"))
