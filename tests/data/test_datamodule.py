"""The data module: batches, determinism of the round, and every bad-input case at setup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image
from pscl.data.datamodule import MicrographDataModule
from pscl.errors import ConfigError, DataError


def _setup(root: Path, **kwargs) -> MicrographDataModule:
    dm = MicrographDataModule(root=root, **{"crop_size": 32, "batch_size": 2, "samples_per_epoch": 6, **kwargs})
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_batches_shapes_and_types(make_folder) -> None:
    root = make_folder(n=8, size=(48, 72), splits={"train": [f"img0{i}" for i in range(6)], "test": ["img06", "img07"]})
    dm = _setup(root, num_labeled=2, label_seed=1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 32, 32) and batch["mask"].dtype == torch.long
    assert set(batch["id"]) <= set(dm.labeled_ids)
    assert len(dm.train_dataloader()) == 3  # 6 samples per epoch / batch 2
    test = list(dm.test_dataloader())
    assert [b["id"][0] for b in test] == ["img06", "img07"]
    assert test[0]["image"].shape == (1, 1, 48, 72)  # whole non-square image
    # normalised with the train statistics
    assert abs(float(torch.cat([b["image"].flatten() for b in test]).mean())) < 1.0
    assert dm.num_classes == 3 and dm.class_names[0] == "matrix"


def test_rgb_input_channels(make_folder) -> None:
    root = make_folder(n=5, rgb=True)
    dm = _setup(root, in_channels=3)
    assert next(iter(dm.train_dataloader()))["image"].shape[1] == 3


def test_mixed_formats_in_one_folder(make_folder) -> None:
    root = make_folder(n=5, suffix=".tif", bits=16)
    dm = _setup(root)
    assert len(dm.index.samples) == 5


def test_round_is_deterministic_and_labels_come_from_train(make_folder) -> None:
    root = make_folder(n=12)
    a, b = _setup(root, num_labeled=3, label_seed=4), _setup(root, num_labeled=3, label_seed=4)
    assert a.labeled_ids == b.labeled_ids
    assert not set(a.labeled_ids) & set(a.index.test_ids)
    assert _setup(root, num_labeled="all").labeled_ids == a.index.train_ids


def test_unlabeled_pool_holds_train_and_extra_images(make_folder) -> None:
    root = make_folder(n=6, unlabeled=3, groups=["g1", "g2"])
    dm = _setup(root)

    def views(image: np.ndarray) -> dict:
        t = torch.from_numpy(image.transpose(2, 0, 1).copy())
        return {"x0": t, "x1": t.flip(-1)}

    pool = dm.unlabeled_dataset(views)
    assert len(pool) == len(dm.index.train_ids) + 3
    item = pool[len(pool) - 1]
    assert item["id"] == "extra02" and item["group"] == -1 and item["x0"].shape[0] == 1
    assert pool[0]["group"] in (0, 1)


# ------------------------------------------------------------------ bad input at setup
def test_missing_mask_names_the_image(make_folder) -> None:
    root = make_folder(n=4)
    (root / "masks" / "img02.png").unlink()
    with pytest.raises(DataError, match="img02.*has no mask") as info:
        _setup(root)
    assert "unlabeled/" in str(info.value)


def test_mask_size_mismatch(make_folder) -> None:
    root = make_folder(n=4)
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "img01.png")
    with pytest.raises(DataError, match="img01.png.*differs from its image"):
        _setup(root)


def test_mask_value_out_of_range(make_folder) -> None:
    root = make_folder(n=4, size=(40, 40))
    mask = np.zeros((40, 40), np.uint8)
    mask[0, 0] = 7
    Image.fromarray(mask).save(root / "masks" / "img03.png")
    with pytest.raises(DataError, match="img03.png.*values \\[7\\]"):
        _setup(root)


def test_corrupt_image(make_folder) -> None:
    root = make_folder(n=4)
    (root / "images" / "img00.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="img00.png.*cannot be read"):
        _setup(root)


def test_num_labeled_larger_than_train(make_folder) -> None:
    root = make_folder(n=5)
    with pytest.raises(ConfigError, match="data.num_labeled.*only 4"):
        _setup(root, num_labeled=9)


def test_crop_larger_than_image(make_folder) -> None:
    root = make_folder(n=4, size=(40, 60))
    with pytest.raises(ConfigError, match="data.crop_size.*larger than the annotated image") as info:
        _setup(root, crop_size=50)
    assert "crop_size<=40" in str(info.value)


def test_missing_root_and_bad_values(tmp_path: Path, make_folder) -> None:
    with pytest.raises(DataError, match="does not exist"):
        _setup(tmp_path / "missing")
    with pytest.raises(ConfigError, match="data.root"):
        MicrographDataModule(root=None)
    with pytest.raises(ConfigError, match="data.in_channels"):
        MicrographDataModule(root=tmp_path, in_channels=2)
    with pytest.raises(ConfigError, match="data.batch_size"):
        MicrographDataModule(root=tmp_path, batch_size=0)
    root = make_folder(n=4)
    with pytest.raises(ConfigError, match="data.class_weights"):
        _setup(root, class_weights=[1, 2])


def test_unreadable_extra_unlabeled_file_is_reported(make_folder) -> None:
    root = make_folder(n=4, unlabeled=1)
    (root / "unlabeled" / "notes.csv").write_text("a,b")
    with pytest.raises(DataError, match="notes.csv"):
        _setup(root)


def test_whole_image_training_needs_equal_sizes(make_folder) -> None:
    root = make_folder(n=4, size=(40, 40))
    write_image(root / "images" / "img00.png", np.zeros((30, 30)))
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(root / "masks" / "img00.png")
    with pytest.raises(ConfigError, match="data.crop_size"):
        _setup(root, crop_size=None, num_labeled="all", batch_size=2)


def _first_batches(dm: MicrographDataModule, seed: int, n: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    loader = dm.train_dataloader()
    return [b["image"] for _, b in zip(range(n), loader)]


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentation_is_reproducible_under_a_seed(make_folder, workers: int) -> None:
    root = make_folder(n=6, size=(64, 64))
    dm = _setup(root, num_workers=workers, samples_per_epoch=8)
    first, again, other = _first_batches(dm, 1), _first_batches(dm, 1), _first_batches(dm, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    # every item is its own random crop, also across workers
    flat = torch.cat(first).flatten(1)
    assert len({tuple(row[:50].tolist()) for row in flat}) == flat.shape[0]


@pytest.mark.parametrize("spec", [{"size": -3}, {"colour": "red"}])
def test_bad_synthetic_spec_is_a_config_error(tmp_path: Path, spec: dict) -> None:
    dm = MicrographDataModule(synthetic=spec, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="data.synthetic"):
        dm.prepare_data()
