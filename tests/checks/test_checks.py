"""Checks before training: config ranges, the pool's images (cached by content), meta.csv gaps."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from conftest import compose_config
from pscl.checks.config import CONFIG_RULES, Rule, check_config
from pscl.checks.folders import check_log_folder, log_folder
from pscl.data import image_checks
from pscl.errors import ConfigError, DataError


def test_rules_accept_and_refuse() -> None:
    rule = Rule("data.batch_size", int, 1)
    assert rule.accepts(4) and not rule.accepts(0) and not rule.accepts(2.5) and not rule.accepts(True)
    assert not rule.accepts("4") and not rule.accepts(None)
    assert Rule("data.crop_size", int, 8, nullable=True).accepts(None)
    fraction = Rule("data.test_fraction", float, 0, 1, low_open=True, high_open=True)
    assert fraction.accepts(0.5) and not fraction.accepts(0) and not fraction.accepts(1.0)
    assert not Rule("x", float, 0).accepts(float("nan")) and not Rule("x", float).accepts(float("inf"))
    assert fraction.describe() == "must be a number in (0, 1)"


def test_every_rule_names_a_key_of_some_composed_config(tmp_path: Path) -> None:
    """A rule for a key that no config has would silently check nothing."""
    configs = [compose_config([f"method={m}"], tmp_path / m) for m in ("supervised", "moco", "densecl", "pscl_moco")]
    missing = [r.key for r in CONFIG_RULES if all(OmegaConf.select(c, r.key, default=None) is None for c in configs)
               and not r.nullable]
    assert missing == []
    for cfg in configs:
        check_config(cfg)  # the shipped defaults pass


def test_check_config_names_the_key_and_an_example(tmp_path: Path) -> None:
    cfg = compose_config(["method=simclr", "method.temperature=0"], tmp_path / "run")
    with pytest.raises(ConfigError) as info:
        check_config(cfg)
    assert str(info.value) == ("config `method.temperature`: must be a number in [0.001, 100], got 0\n"
                               "  fix: e.g. method.temperature=0.001")
    supervised = compose_config(["method=supervised"], tmp_path / "sup")
    assert supervised.method.pretrain_epochs == 0
    check_config(supervised)  # pretrain_epochs is checked only for methods that pretrain


def _pool(tmp_path: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = tmp_path / "pool" / f"p{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w), 40 * i, np.uint8)).save(path)
        paths.append(path)
    return paths


def test_pool_check_decodes_once_and_then_remembers(tmp_path: Path, monkeypatch) -> None:
    paths = _pool(tmp_path, [(40, 50), (64, 64)])
    sizes = image_checks.check_pool(paths, 1, 32, tmp_path / "cache")
    assert sizes == {paths[0]: (40, 50), paths[1]: (64, 64)}
    assert len(list((tmp_path / "cache" / "checked").glob("pool-*.json"))) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(image_checks, "_decode", refuse)
    assert image_checks.check_pool(paths, 1, 32, tmp_path / "cache") == sizes
    # known sizes (already decoded annotated images) are not decoded either
    other = _pool(tmp_path / "other", [(33, 33)])
    assert image_checks.check_pool(other, 1, 32, None, known={other[0]: (33, 33)}) == {other[0]: (33, 33)}


def test_pool_check_refuses_small_and_corrupt_images(tmp_path: Path) -> None:
    paths = _pool(tmp_path, [(64, 64), (20, 30)])
    with pytest.raises(DataError) as info:
        image_checks.check_pool(paths, 1, 32, tmp_path / "cache")
    assert str(info.value).startswith(f"{paths[1]}: is 30x20, smaller than data.crop_size=32")
    assert "data.crop_size<=20" in str(info.value)
    assert image_checks.check_pool(paths, 1, None, tmp_path / "cache")  # whole images: any size
    paths[0].write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"p0\.png: cannot be read as an image"):
        image_checks.check_pool(paths, 1, 16, tmp_path / "cache")


def test_meta_csv_gaps_are_named(make_folder, caplog) -> None:
    from pscl.data.index import index_dataset

    root = make_folder(n=6, groups=["a", "b"])
    lines = (root / "meta.csv").read_text().splitlines()
    (root / "meta.csv").write_text("\n".join(line for line in lines if not line.startswith(("img02", "img05"))) + "\n")
    with caplog.at_level(logging.WARNING, logger="pscl.data"):
        index_dataset(root, "auto", split_seed=0, test_fraction=0.3, val_fraction=0.0)
    assert "lists no group for 2 image(s): img02, img05" in caplog.text


def test_log_folder_check(tmp_path: Path) -> None:
    assert log_folder(["log_dir=/x"], {}) == ("log_dir", Path("/x"))
    assert log_folder(["hydra.run.dir=/r", "log_dir=/x"], {}) == ("hydra.run.dir", Path("/r"))
    assert log_folder([], {"PSCL_LOG_DIR": "/e"}) == ("PSCL_LOG_DIR", Path("/e"))
    check_log_folder([f"log_dir={tmp_path / 'new' / 'deeper'}"], {})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_log_folder([f"log_dir={tmp_path / 'file' / 'logs'}"], {})
