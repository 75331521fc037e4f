"""Indexing data folders: the pscl format, splits, labelled subsets, the authors' layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import draw_sample, write_image
from pscl.data.authors_layout import index_authors_layout
from pscl.data.index import index_dataset, index_folder
from pscl.data.splits import parse_num_labeled, seeded_split, select_labeled
from pscl.errors import ConfigError, DataError


def test_folder_index_reads_classes_groups_splits_and_unlabeled(make_folder) -> None:
    splits = {"train": ["img00", "img01", "img02"], "val": ["img03"], "test": ["img04", "img05"]}
    root = make_folder(n=6, splits=splits, groups=["a", "b"], unlabeled=2)
    index = index_folder(root)
    assert index.class_names == ("matrix", "phase1", "phase2")
    assert index.train_ids == ("img00", "img01", "img02") and index.val_ids == ("img03",)
    assert index.test_ids == ("img04", "img05")
    assert index.samples["img01"].group == "b"
    assert [s.id for s in index.unlabeled] == ["extra00", "extra01"]
    assert index.groups() == ("a", "b")


def test_seeded_split_is_deterministic_stratified_and_disjoint() -> None:
    ids = [f"x{i:02d}" for i in range(30)]
    groups = {i: ("g1" if int(i[1:]) < 10 else "g2") for i in ids}
    first = seeded_split(ids, groups, seed=3, test_fraction=0.2, val_fraction=0.1)
    assert first == seeded_split(ids, groups, seed=3, test_fraction=0.2, val_fraction=0.1)
    assert first != seeded_split(ids, groups, seed=4, test_fraction=0.2, val_fraction=0.1)
    assert set(first["train"]) | set(first["val"]) | set(first["test"]) == set(ids)
    assert not set(first["train"]) & set(first["test"]) and not set(first["val"]) & set(first["test"])
    assert sum(groups[i] == "g1" for i in first["test"]) == 2  # 20 % of 10
    assert sum(groups[i] == "g2" for i in first["test"]) == 4  # 20 % of 20


def test_labeled_subset_deterministic_nested_and_from_train_only() -> None:
    train = [f"t{i}" for i in range(12)]
    one = select_labeled(train, 1, label_seed=2)
    five = select_labeled(train, 5, label_seed=2)
    assert one == select_labeled(train, "1", label_seed=2)
    assert len(five) == 5 and set(one) <= set(five) and set(five) <= set(train)
    rounds = {select_labeled(train, 1, label_seed=s) for s in range(5)}
    assert len(rounds) > 1  # different rounds annotate different images
    assert select_labeled(train, "all", 0) == tuple(sorted(train))
    with pytest.raises(ConfigError, match="only 12"):
        select_labeled(train, 13, 0)


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, True])
def test_num_labeled_bad_values(bad) -> None:
    with pytest.raises(ConfigError, match="data.num_labeled"):
        parse_num_labeled(bad)


def test_split_without_splits_json_keeps_test_out_of_labels(make_folder) -> None:
    root = make_folder(n=10)
    index = index_folder(root, split_seed=1, test_fraction=0.3)
    assert len(index.test_ids) == 3 and len(index.train_ids) == 7
    for seed in range(10):
        assert not set(select_labeled(index.train_ids, 3, seed)) & set(index.test_ids)


def _write_pair(folder: Path, stem: str, rng: np.random.Generator) -> None:
    image, mask = draw_sample(rng, 32, 32, 4)
    write_image(folder / "img" / f"{stem}.jpg", image)
    (folder / "gt").mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(folder / "gt" / f"{stem}.png")


def test_authors_layout_adapter(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "aluminum"
    train = ["15_1_0_0", "15_2_0_1", "30_1_1_0", "60_3_0_0", "120_1_2_2"]
    for stem in train:
        _write_pair(root / "train_numf", stem, rng)
    for stem in ["15_9_0_0", "90_9_1_1"]:
        _write_pair(root / "test_numf", stem, rng)
    for k, stem in enumerate(["30_1_1_0", "60_3_0_0"]):
        _write_pair(root / f"sup_num1_{k}", stem, rng)
    index = index_dataset(root)  # layout detected
    assert index.layout == "authors" and index.num_classes == 4
    assert index.train_ids == tuple(sorted(train)) and index.test_ids == ("15_9_0_0", "90_9_1_1")
    assert index.samples["120_1_2_2"].group == "120"
    assert index.groups() == ("120", "15", "30", "60", "90")
    assert select_labeled(index.train_ids, 1, 1, index.labeled_presets) == ("60_3_0_0",)
    assert select_labeled(index.train_ids, 1, 0, index.labeled_presets) == ("30_1_1_0",)
    # a round without an authors' folder falls back to the seeded choice
    assert select_labeled(index.train_ids, 1, 7, index.labeled_presets)[0] in train


def test_authors_layout_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "al"
    _write_pair(root / "train_numf", "15_1", rng)
    with pytest.raises(DataError, match="test_numf"):
        index_authors_layout(root)
    _write_pair(root / "test_numf", "15_2", rng)
    _write_pair(root / "sup_num1_0", "15_3", rng)
    with pytest.raises(DataError, match="not found in train_numf"):
        index_authors_layout(root)


def test_bad_folders_give_clear_errors(make_folder, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as info:
        index_folder(tmp_path / "nowhere")
    assert "data.root" in str(info.value)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="images/ is empty"):
        index_folder(empty)

    root = make_folder(n=4)
    (root / "images" / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match="readme.txt.*not an image"):
        index_folder(root)
    (root / "images" / "readme.txt").unlink()
    (root / "images" / ".DS_Store").write_text("")  # hidden files are skipped
    assert len(index_folder(root).samples) == 4

    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt is missing"):
        index_folder(root)


def test_bad_splits_json(make_folder) -> None:
    root = make_folder(n=4, splits={"train": ["img00", "img01"], "test": ["img01"]})
    with pytest.raises(DataError, match="both `train` and `test`"):
        index_folder(root)
    (root / "splits.json").write_text(json.dumps({"train": ["img00"], "test": ["nope"]}))
    with pytest.raises(DataError, match="nope"):
        index_folder(root)
    (root / "splits.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        index_folder(root)


def test_authors_layout_through_the_data_module(tmp_path: Path) -> None:
    from pscl.data.datamodule import MicrographDataModule

    rng = np.random.default_rng(1)
    root = tmp_path / "aluminum"
    for stem in ["15_1_0_0", "30_1_1_0", "60_3_0_0"]:
        _write_pair(root / "train_numf", stem, rng)
    _write_pair(root / "test_numf", "90_9_1_1", rng)
    _write_pair(root / "sup_num1_2", "60_3_0_0", rng)
    dm = MicrographDataModule(root=root, crop_size=None, batch_size=1, samples_per_epoch=1,
                              num_labeled=1, label_seed=2)
    dm.setup()
    assert dm.labeled_ids == ("60_3_0_0",) and dm.class_names[0] == "matrix"
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (1, 1, 32, 32) and batch["id"] == ["60_3_0_0"]
    assert [b["id"][0] for b in dm.test_dataloader()] == ["90_9_1_1"]
