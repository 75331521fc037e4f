"""pscl-select: ranking a pool for annotation on planted pools whose right answer is known."""

from __future__ import annotations

import builtins
import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from scipy.ndimage import gaussian_filter

from pscl.errors import EXIT_USER_ERROR
from pscl.select.cli import run
from pscl.select.features import intensity_features, network_features, patch_grid
from pscl.select.pool import dataset_pool
from pscl.select.strategies import coverage, typical
from pscl.models.transfer import save_pretrained

OUTPUTS = ("selection.csv", "selection.json", "contact_sheet.png")
BACKBONE = {"_target_": "pscl.models.unet.UNet", "widths": [8, 16, 16, 32], "channels_last": False,
            "checkpoint_blocks": "none"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny images: a second intra-op thread only waits for a busy core (2-core CI), so use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _texture(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A standardised texture: fine or coarse noise, or a two-level speckle."""
    noise = rng.normal(size=(size, size))
    field = {"fine": gaussian_filter(noise, 0.6), "coarse": gaussian_filter(noise, 2.5),
             "speckle": np.sign(gaussian_filter(noise, 1.2))}[kind]
    return (field - field.mean()) / (field.std() + 1e-8)


def _save(path: Path, image01: np.ndarray) -> None:
    Image.fromarray((np.clip(image01, 0, 1) * 255).round().astype(np.uint8)).save(path)


def write_planted_pool(root: Path, size: int = 96, shared_field: bool = False, seed: int = 0) -> Path:
    """Three textures, one rare: five ``fine<k>`` and five ``coarse<k>`` images, brightness offset by
    (k - 2) / 100, and one ``speckle`` image (the rare texture, at a higher contrast).

    With ``shared_field`` the images of a texture share one noise field, so they differ by their
    offset only and ``<texture>2`` is the exact centre of its group.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for kind in ("fine", "coarse"):
        base = _texture(rng, size, kind)
        for k in range(5):
            field = base if shared_field else _texture(rng, size, kind)
            _save(root / f"{kind}{k}.png", 0.5 + (k - 2) * 0.01 + 0.12 * field)
    _save(root / "speckle.png", 0.5 + 0.2 * _texture(rng, size, "speckle"))
    return root


def _table(out: Path) -> list[dict[str, str]]:
    with open(out / "selection.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _ids(out: Path) -> list[str]:
    return json.loads((out / "selection.json").read_text())["ids"]


def _texture_of(image_id: str) -> str:
    return image_id.rstrip("0123456789")


# ---------------------------------------------------------------- the strategies on planted pools
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coverage_picks_one_image_per_texture_including_the_rare_one(tmp_path: Path, seed: int, capsys) -> None:
    pool = write_planted_pool(tmp_path / "pool")
    out = tmp_path / "out"
    assert run([str(pool), "--budget", "3", "--out", str(out), "--patch-size", "32", "--seed", str(seed)]) == 0
    chosen = _ids(out)
    assert sorted(_texture_of(i) for i in chosen) == ["coarse", "fine", "speckle"]
    rows = _table(out)
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and [r["image"] for r in rows] == chosen
    scores = [float(r["score"]) for r in rows]
    # each score is the patch mass newly covered: positive, at most all of it, greedy so non-increasing
    assert all(0 < s <= 1 for s in scores) and scores == sorted(scores, reverse=True)
    assert "chose 3 of 11 images by coverage (intensity features)" in capsys.readouterr().out


def test_typical_picks_the_central_image_of_each_cluster(tmp_path: Path) -> None:
    pool = write_planted_pool(tmp_path / "pool", shared_field=True)
    out = tmp_path / "out"
    assert run([str(pool), "--budget", "3", "--out", str(out), "--strategy", "typical", "--patch-size", "16"]) == 0
    rows = _table(out)
    assert sorted(r["image"] for r in rows) == ["coarse2", "fine2", "speckle"]
    # clusters ranked by size: the two groups of five first, the rare image (a cluster of one, no score) last
    assert rows[2]["image"] == "speckle" and rows[2]["score"] == "" and rows[2]["cluster"] == "2"
    assert [r["cluster"] for r in rows[:2]] == ["0", "1"] and all(float(r["score"]) > 0 for r in rows[:2])


def test_typical_prefers_the_image_with_the_closest_neighbours() -> None:
    # one cluster on a line: 0, 1, 2, 3, 10 -> the point 2 is nearest its neighbours on average
    rows = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    picks = typical(rows, 1, seed=0)
    assert [p.index for p in picks] == [2] and picks[0].cluster == 0
    assert picks[0].score == pytest.approx(1 / np.mean([1, 1, 2, 8]))


def test_coverage_covers_a_rare_cluster_before_a_second_common_image() -> None:
    # images 0-3 hold patches of one common kind, image 4 of a rare one: three patches each
    rows = np.concatenate([np.zeros((12, 2)), np.full((3, 2), 5.0)])
    owners = np.repeat(np.arange(5), 3)
    picks = coverage(rows, owners, 5, 2, seed=0)
    assert [p.index for p in picks] == [0, 4]  # the common kind first (ties broken by id), then the rare one
    assert [p.score for p in picks] == pytest.approx([12 / 15, 3 / 15])
    # a budget of the whole pool takes every image once (coverage starts again once all is covered)
    assert sorted(p.index for p in coverage(rows, owners, 5, 5, seed=0)) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- a data folder: train ids only
@pytest.fixture
def data_root(make_folder) -> Path:
    ids = [f"img{i:02d}" for i in range(10)]
    return make_folder(n=10, size=(48, 48), splits={"train": ids[:7], "test": ids[7:]}, unlabeled=2)


def _record_opened(monkeypatch) -> list[Path]:
    """Every file opened from now on, through Pillow, ``open`` or ``io.open`` (``Path.read_text``)."""
    opened: list[Path] = []

    def recording(real: Callable) -> Callable:
        def wrapper(file, *args, **kwargs):
            if isinstance(file, (str, Path)):
                opened.append(Path(file).resolve())
            return real(file, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(PIL.Image, "open", recording(PIL.Image.open))
    monkeypatch.setattr(builtins, "open", recording(builtins.open))
    monkeypatch.setattr(io, "open", recording(io.open))
    return opened


@pytest.mark.parametrize("strategy,features", [("coverage", "intensity"), ("typical", "random"),
                                               ("random", None)])
def test_selection_never_opens_a_mask_or_a_test_image(data_root: Path, tmp_path: Path, monkeypatch,
                                                      strategy: str, features: str | None) -> None:
    out = tmp_path / "out"
    opened = _record_opened(monkeypatch)
    argv = [str(data_root), "--budget", "2", "--out", str(out), "--strategy", strategy, "--patch-size", "16"]
    assert run(argv + (["--features", features] if features else [])) == 0
    monkeypatch.undo()
    images = {p for p in opened if p.suffix == ".png" and p.parent.name != out.name}
    train = {(data_root / "images" / f"img{i:02d}.png").resolve() for i in range(7)}
    assert not [p for p in opened if "masks" in p.parts], "a mask was opened"
    assert images == train  # every training image, and no test, unlabeled or other image
    assert set(_ids(out)) <= {f"img{i:02d}" for i in range(7)}


def test_the_candidates_are_the_ids_training_trains_on(make_folder) -> None:
    from pscl.data.datamodule import MicrographDataModule

    seeded = make_folder("seeded", n=12, size=(32, 32), groups=["a", "b"])  # no splits.json: a grouped draw
    fixed = make_folder("fixed", n=12, size=(32, 32), splits={"train": [f"img{i:02d}" for i in range(9)],
                                                               "test": ["img09", "img10", "img11"]})
    for root, split_seed, test_fraction, val_fraction in ((seeded, 0, 0.2, 0.0), (seeded, 3, 0.25, 0.2),
                                                          (fixed, 1, 0.2, 0.3)):  # the last carves val from train
        pool = dataset_pool(root, split_seed=split_seed, test_fraction=test_fraction, val_fraction=val_fraction)
        data = MicrographDataModule(root=root, crop_size=None, split_seed=split_seed, test_fraction=test_fraction,
                                    val_fraction=val_fraction)
        data.setup("fit")
        assert data.index is not None and data.index.val_ids == () or val_fraction > 0
        assert pool.ids == tuple(sorted(data.index.train_ids))
        assert len(pool.ids) < (9 if root == fixed else 12)


def test_training_annotates_the_selected_images(data_root: Path, tmp_path: Path) -> None:
    from pscl.data.datamodule import MicrographDataModule

    out = tmp_path / "out"
    assert run([str(data_root), "--budget", "3", "--out", str(out), "--strategy", "typical",
                "--patch-size", "16"]) == 0
    data = MicrographDataModule(root=data_root, crop_size=None, labeled_ids=str(out / "selection.json"))
    data.setup("fit")
    assert list(data.labeled_ids) == _ids(out)


# ---------------------------------------------------------------- seeds
@pytest.mark.parametrize("strategy", ["coverage", "typical"])
def test_the_same_seed_gives_the_same_selection(tmp_path: Path, strategy: str) -> None:
    pool = write_planted_pool(tmp_path / "pool", size=64)
    outs = [tmp_path / f"out{k}" for k in range(2)]
    for out in outs:
        assert run([str(pool), "--budget", "4", "--out", str(out), "--strategy", strategy, "--patch-size", "16",
                    "--seed", "7"]) == 0
    assert (outs[0] / "selection.csv").read_text() == (outs[1] / "selection.csv").read_text()
    first, second = (json.loads((out / "selection.json").read_text()) for out in outs)
    assert first["ids"] == second["ids"] and first["scores"] == second["scores"] and len(first["ids"]) == 4


def test_random_with_one_image_matches_the_label_seed_draws(data_root: Path, tmp_path: Path) -> None:
    from pscl.data.datamodule import MicrographDataModule

    for seed in range(10):
        out = tmp_path / f"out{seed}"
        assert run([str(data_root), "--budget", "1", "--out", str(out), "--strategy", "random",
                    "--seed", str(seed)]) == 0
        data = MicrographDataModule(root=data_root, crop_size=None, num_labeled=1, label_seed=seed)
        data.setup("fit")
        assert _ids(out) == list(data.labeled_ids), f"seed {seed}"


# ---------------------------------------------------------------- outputs
def test_outputs_say_what_was_chosen_and_how(data_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert run([str(data_root), "--budget", "3", "--out", str(out), "--patch-size", "16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)
    record = json.loads((out / "selection.json").read_text())
    assert record["strategy"] == "coverage" and record["features"] == "intensity" and record["budget"] == 3
    assert record["pool_size"] == record["ranked"] == 7 and record["skipped"] == []
    assert record["data"]["root"] == str(data_root.resolve()) and record["data"]["test_fraction"] == 0.2
    assert [r["image"] for r in _table(out)] == record["ids"] and len(record["scores"]) == 3
    assert record["command"].startswith("pscl-select ") and "--budget 3" in record["command"]
    with Image.open(out / "contact_sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 300
    summary = f"chose 3 of 7 images by coverage (intensity features) -> {out / 'selection.json'}"
    assert summary in capsys.readouterr().out


def test_an_earlier_selection_is_replaced_only_with_overwrite(data_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    argv = [str(data_root), "--budget", "1", "--out", str(out), "--strategy", "random"]
    assert run(argv) == 0
    (out / "notes.txt").write_text("mine")
    before = (out / "selection.json").read_text()
    assert run([*argv, "--seed", "5"]) == EXIT_USER_ERROR
    assert "already holds a selection" in capsys.readouterr().err and (out / "selection.json").read_text() == before
    assert run([*argv, "--seed", "5", "--overwrite"]) == 0
    assert json.loads((out / "selection.json").read_text())["seed"] == 5 and (out / "notes.txt").read_text() == "mine"


def test_out_may_not_be_the_data_folder_or_a_pool_folder(data_root: Path, tmp_path: Path, capsys) -> None:
    pool = write_planted_pool(tmp_path / "pool", size=32)
    for inputs, out in (([data_root], data_root), ([data_root], data_root / "images"), ([pool], pool)):
        before = sorted(p.name for p in out.iterdir())
        assert run([*map(str, inputs), "--budget", "1", "--out", str(out)]) == EXIT_USER_ERROR
        assert "nothing was written" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == before


# ---------------------------------------------------------------- features
def test_intensity_features_are_per_patch_statistics() -> None:
    image = np.zeros((70, 100, 1), np.float32)
    image[:, 50:] = 1.0  # left half black, right half white
    grid = patch_grid(70, 100, 32)
    assert (grid.rows, grid.cols, grid.top, grid.left) == (2, 3, 3, 2)
    rows = intensity_features(image, 32)
    assert rows.shape == (6, 8)
    assert rows[0, 0] == 0.0 and rows[2, 0] == 1.0  # cell means: black left, white right
    assert rows[1, 0] == pytest.approx(16 / 32)  # the middle cell, x 34-65, straddles the edge at x = 50
    flat = rows[[0, 2]]  # columns: mean, std, q10, q50, q90, three texture bands
    assert flat[:, [1, 5, 6, 7]] == pytest.approx(np.zeros((2, 4)), abs=1e-3)  # no spread, no texture
    assert np.all(flat[:, 2:5] == flat[:, :1])  # every quantile is the flat grey
    assert rows[1, 1] == pytest.approx(0.5) and np.all(rows[1, 5:] > 0.01)  # the edge: spread, and detail
    assert intensity_features(image[:20], 32).shape == (0, 8)


def test_network_features_average_every_map_over_each_patch() -> None:
    from pscl.models.unet import UNet

    torch.manual_seed(0)
    backbone = UNet(1, 2, widths=BACKBONE["widths"]).eval()
    image = torch.randn(1, 64, 96)
    rows = network_features(backbone, image, 32)
    with torch.no_grad():
        maps = backbone.forward_features(image.unsqueeze(0))
    expected = torch.cat([torch.nn.functional.adaptive_avg_pool2d(m, (2, 3))
                          for m in (maps["bottleneck"], *maps["decoder"])], dim=1)[0]
    assert rows.shape == (6, 32 + 16 + 16 + 8)
    assert np.allclose(rows, expected.flatten(1).T.numpy(), atol=1e-5)
    # a window of one patch reads each patch alone: same shape, the first cell as the network sees it alone
    alone = network_features(backbone, image, 32, window=32)
    assert alone.shape == rows.shape
    assert np.allclose(alone[0], network_features(backbone, image[:, :32, :32], 32)[0], atol=1e-5)


def _write_run(folder: Path, method: str, labeled_ids: list[str], data_root: Path | None = None) -> Path:
    """A run folder as pscl-train leaves it after pretraining, written by hand."""
    from pscl.models.unet import UNet

    torch.manual_seed(1)
    weights = UNet(1, 2, widths=BACKBONE["widths"]).transferable_state_dict()
    save_pretrained(weights, folder / "pretrain" / "pretrained.pt", {"method": method})
    metrics = {"method": method, "labeled_ids": labeled_ids, "data_root": str(data_root) if data_root else None}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / ".hydra").mkdir(parents=True)
    config = {"seed": 0, "method": {"name": method}, "backbone": BACKBONE, "data": {"in_channels": 1}}
    OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    return folder


def test_a_run_folder_gives_its_pretrained_network(data_root: Path, tmp_path: Path, capsys) -> None:
    simclr = _write_run(tmp_path / "runs" / "simclr", "simclr", ["img00"], data_root)
    out = tmp_path / "out"
    assert run([str(data_root), "--budget", "2", "--out", str(out), "--features", str(simclr),
                "--patch-size", "16"]) == 0
    captured = capsys.readouterr()
    record = json.loads((out / "selection.json").read_text())
    assert record["features"].startswith("simclr pretrained") and record["warnings"] == []
    assert "warning" not in captured.err  # SimCLR never saw a mask


def test_a_run_that_learnt_from_this_pools_labels_is_named(data_root: Path, tmp_path: Path, capsys) -> None:
    pscl = _write_run(tmp_path / "runs" / "pscl", "pscl_simclr", ["img01", "img03"])
    out = tmp_path / "out"
    assert run([str(data_root), "--budget", "2", "--out", str(out), "--features", str(pscl),
                "--strategy", "typical", "--patch-size", "16"]) == 0
    err = capsys.readouterr().err
    assert f"warning: the run {pscl}" in err and "img01, img03" in err and "not label-free" in err
    assert json.loads((out / "selection.json").read_text())["warnings"][0].startswith(f"the run {pscl}")


def test_a_supervised_run_gives_its_fine_tuned_model_and_is_named(data_root: Path, tmp_path: Path,
                                                                  capsys) -> None:
    from pscl.models.unet import UNet
    from pscl.models.model_file import save_model

    folder = tmp_path / "runs" / "supervised"
    torch.manual_seed(2)
    save_model(folder / "model.pt", UNet(1, 3, widths=BACKBONE["widths"]), BACKBONE, ("matrix", "phase1", "phase2"),
               (0.6,), (0.2,), "supervised", {"method": {"name": "supervised"}})
    (folder / "metrics.json").write_text(json.dumps({"method": "supervised", "labeled_ids": ["img99"],
                                                     "data_root": str(data_root)}))
    out = tmp_path / "out"
    assert run([str(data_root), "--budget", "2", "--out", str(out), "--features", str(folder),
                "--patch-size", "16"]) == 0
    err = capsys.readouterr().err
    record = json.loads((out / "selection.json").read_text())
    assert record["features"].startswith("supervised fine-tuned") and len(record["ids"]) == 2
    # its labelled image is not a candidate, but it was trained on this data folder
    assert f"warning: the run {folder}" in err and f"this pool's data folder {data_root.resolve()}" in err


# ---------------------------------------------------------------- bad input: one message, exit 2, nothing written
def _refused(argv: list[str], out: Path, capsys) -> str:
    assert run(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not out.exists()
    return err


def test_a_budget_larger_than_the_pool_is_refused(data_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    err = _refused([str(data_root), "--budget", "8", "--out", str(out)], out, capsys)
    assert "--budget" in err and "holds only 7" in err and "--budget 7 or fewer" in err


@pytest.mark.parametrize("budget", ["0", "-2"])
def test_a_budget_below_one_is_refused(data_root: Path, tmp_path: Path, budget: str, capsys) -> None:
    out = tmp_path / "out"
    assert "--budget" in _refused([str(data_root), "--budget", budget, "--out", str(out)], out, capsys)


def test_an_empty_folder_is_refused(tmp_path: Path, capsys) -> None:
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    err = _refused([str(empty), "--budget", "1", "--out", str(out)], out, capsys)
    assert str(empty) in err and "no image files" in err


@pytest.mark.parametrize("value", ["nonsense", "folder", "file"])
def test_features_that_are_no_run_nor_a_name_are_refused(data_root: Path, tmp_path: Path, value: str,
                                                         capsys) -> None:
    out = tmp_path / "out"
    given = {"nonsense": "pretrained", "folder": str(tmp_path / "holiday_photos"),
             "file": str(tmp_path / "w.pt")}[value]
    if value == "folder":
        Path(given).mkdir()
    if value == "file":
        Path(given).write_bytes(b"not weights")
    err = _refused([str(data_root), "--budget", "1", "--out", str(out), "--features", given], out, capsys)
    assert given in err and ("--features" in err or "not a pscl run" in err)


def test_an_unreadable_image_is_named_and_the_others_are_ranked(tmp_path: Path, capsys) -> None:
    pool = write_planted_pool(tmp_path / "pool", size=32)
    broken = pool / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    assert run([str(pool), "--budget", "11", "--out", str(out), "--patch-size", "16"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {broken.resolve()}" in err and "left out" in err
    record = json.loads((out / "selection.json").read_text())
    assert record["pool_size"] == 12 and record["ranked"] == 11 and "broken" not in record["ids"]
    assert record["skipped"] == [{"image": "broken", "file": str(broken.resolve()), "why": "unreadable"}]
    # with the broken image, fewer images can be ranked than asked for: refused, naming it
    out2 = tmp_path / "out2"
    err = _refused([str(pool), "--budget", "12", "--out", str(out2), "--patch-size", "16"], out2, capsys)
    assert "only 11 of its 12 images can be ranked" in err and "broken" in err


# ---------------------------------------------------------------- chosen in the run: data.labeled_ids=select:...
@pytest.fixture
def data_root128(make_folder) -> Path:
    ids = [f"img{i:02d}" for i in range(10)]
    return make_folder(n=10, size=(128, 128), splits={"train": ids[:7], "test": ids[7:]})


@pytest.mark.parametrize("strategy", ["coverage", "typical"])
def test_a_select_spec_chooses_in_training_as_pscl_select_does(data_root128: Path, tmp_path: Path,
                                                               strategy: str) -> None:
    from pscl.data.datamodule import MicrographDataModule

    out = tmp_path / "out"
    assert run([str(data_root128), "--budget", "2", "--out", str(out), "--strategy", strategy, "--seed", "3"]) == 0
    from pscl.select.choose import choose_training_images

    data = MicrographDataModule(root=data_root128, crop_size=None, num_labeled=2, labeled_ids=f"select:{strategy}:3")
    data.labeled_chooser = choose_training_images  # as pscl-train hands it in
    data.setup("fit")
    assert list(data.labeled_ids) == _ids(out)
    assert data.labeled_source["strategy"] == strategy and data.labeled_source["features"] == "intensity"
    assert data.labeled_source["seed"] == 3 and data.label_seed == 3 and data.num_labeled == 2
    assert len(data.labeled_source["scores"]) == 2 and data.labeled_source["pool_size"] == 7


def test_select_random_is_the_label_seed_draw(data_root128: Path) -> None:
    from pscl.data.datamodule import MicrographDataModule
    from pscl.select.choose import choose_training_images

    for seed in range(4):
        drawn = MicrographDataModule(root=data_root128, crop_size=None, num_labeled=2, label_seed=seed)
        chosen = MicrographDataModule(root=data_root128, crop_size=None, num_labeled=2,
                                      labeled_ids=f"select:random:{seed}")
        default_seed = MicrographDataModule(root=data_root128, crop_size=None, num_labeled=2, label_seed=seed,
                                            labeled_ids="select:random")
        for data in (drawn, chosen, default_seed):
            data.labeled_chooser = choose_training_images
            data.setup("fit")
        assert chosen.labeled_ids == drawn.labeled_ids == default_seed.labeled_ids, f"seed {seed}"
        assert chosen.label_seed == default_seed.label_seed == seed


def test_a_data_module_without_a_chooser_says_how_to_give_one(data_root128: Path) -> None:
    from pscl.data.datamodule import MicrographDataModule
    from pscl.errors import ConfigError

    data = MicrographDataModule(root=data_root128, crop_size=None, num_labeled=1, labeled_ids="select:coverage")
    with pytest.raises(ConfigError, match="data.labeled_ids") as caught:
        data.setup("fit")
    assert "labeled_chooser" in str(caught.value) and "pscl-train" in str(caught.value)


def test_the_data_layer_imports_nothing_of_the_selection_package() -> None:
    import subprocess
    import sys

    code = ("import sys, pscl.data.datamodule, pscl.data.labeled_ids; "
            "print(sorted(m for m in sys.modules if m.startswith('pscl.select')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("value, num_labeled, fragment", [
    ("select:best", 1, "names no strategy"),
    ("select:coverage:x", 1, "is not a whole number"),
    ("select:coverage:1:2", 1, "names no strategy"),
    ("select:typical", "all", "data.num_labeled=all"),
])
def test_a_bad_select_spec_is_a_config_error(data_root128: Path, value: str, num_labeled, fragment: str) -> None:
    from pscl.data.datamodule import MicrographDataModule
    from pscl.errors import ConfigError

    with pytest.raises(ConfigError, match="data.labeled_ids") as caught:
        MicrographDataModule(root=data_root128, crop_size=None, num_labeled=num_labeled, labeled_ids=value)
    assert fragment in str(caught.value)


# ---------------------------------------------------------------- experiment=selection_study
def test_selection_study_sweeps_two_strategies_against_ten_draws(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from conftest import compose_config
    from pscl.checks import check_config

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pscl.conf", version_base="1.3"):
        full = compose("train", overrides=["experiment=selection_study"], return_hydra_config=True)
    sweep = {name: str(values).split(",") for name, values in full.hydra.sweeper.params.items()}
    assert sweep["data.num_labeled"] == ["1", "5"] and sweep["method"] == ["supervised", "moco"]
    choices = sweep["data.labeled_ids"]
    assert choices[:2] == ["select:coverage:0", "select:typical:0"]
    assert choices[2:] == [f"select:random:{seed}" for seed in range(10)]
    for method in sweep["method"]:
        cfg = compose_config(["experiment=selection_study", f"method={method}", "data.num_labeled=5",
                              f"data.labeled_ids={choices[0]}"], tmp_path / method)
        check_config(cfg)
        assert cfg.data.labeled_ids == "select:coverage:0" and cfg.method.pretrain_steps == 190  # quick's


def test_a_tiny_selection_study_is_reported_against_its_draws(make_folder, tmp_path: Path) -> None:
    from conftest import compose_config
    from pscl.reporting.report import write_report
    from pscl.training.pipeline import train

    ids = [f"img{i:02d}" for i in range(8)]
    root = make_folder(n=8, size=(64, 80), splits={"train": ids[:6], "test": ids[6:]})
    tiny = ["data=folder", f"data.root={root}", "data.crop_size=32", "backbone=unet_small",
            "backbone.widths=[8,16,32,64]", "logger=csv", "trainer.max_epochs=1", "data.samples_per_epoch=4",
            "data.batch_size=2", "method=supervised"]
    choices = ["select:coverage:0", "select:random:0", "select:random:1", "select:random:2"]
    for k, choice in enumerate(choices):
        train(compose_config([*tiny, f"data.labeled_ids={choice}"], tmp_path / "multirun" / str(k)))
    written = write_report([tmp_path / "multirun"], tmp_path / "report")
    text = written["results.md"].read_text()
    assert "## Choosing what to annotate" in text and "selection.png" in written
    line = next(row for row in text.splitlines() if row.startswith("| supervised | 1 | coverage |"))
    assert line.split("|")[6].strip() == "3"  # placed among the three draws
