"""Safe loading, finite weights, content hashes, atomic writes and the cache's integrity checks."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import write_crafted_checkpoint
from pscl.training import pretrain_cache
from pscl.errors import DataError
from pscl.integrity import (NonFiniteError, UnsafeCheckpointError, assert_finite, atomic_write_text, copy_atomic,
                            file_lock, hash_file, load_weights)
from pscl.models.transfer import load_pretrained, save_pretrained


def test_the_crafted_file_really_is_a_payload(tmp_path: Path) -> None:
    """The teeth of the tests below: an unsafe load of the crafted file does create the marker."""
    marker = tmp_path / "ran"
    path = write_crafted_checkpoint(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_crafted_pretrained_ckpt_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = write_crafted_checkpoint(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_pretrained(path)
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message and "refused" in message and "nothing in it was run" in message


def test_load_weights_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="checkpoint not found"):
        load_weights(tmp_path / "absent.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError, match=r"garbage\.pt.*cannot be read as a checkpoint|refused"):
        load_weights(garbage)
    plain = tmp_path / "plain.pkl"  # a pickle that is not a torch file
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(DataError, match=r"plain\.pkl"):
        load_weights(plain)
    fine = tmp_path / "ok.pt"
    torch.save({"x": 1, "w": torch.ones(2)}, fine)
    loaded = load_weights(fine)
    assert loaded["x"] == 1 and torch.equal(loaded["w"], torch.ones(2))


def test_non_finite_weights_are_neither_saved_nor_loaded(tmp_path: Path) -> None:
    good = {"encoder.a": torch.ones(3), "encoder.steps": torch.tensor(3)}
    bad = {"encoder.a": torch.tensor([1.0, float("nan"), 0.0]), "encoder.b": torch.ones(2)}
    assert_finite(good, "weights")
    with pytest.raises(NonFiniteError, match="encoder.a"):
        assert_finite(bad, "weights")
    target = tmp_path / "out" / "pretrained.pt"
    with pytest.raises(NonFiniteError):
        save_pretrained(bad, target, {})
    assert not target.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"backbone": bad, "meta": {}}, target)  # written by something else
    with pytest.raises(NonFiniteError, match=str(target)):
        load_pretrained(target)


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    atomic_write_text(target, "old")
    with pytest.raises(FileNotFoundError):
        copy_atomic(tmp_path / "no-such-source", target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind
    source = tmp_path / "source"
    source.write_text("new")
    copy_atomic(source, target)
    assert target.read_text() == "new"


def test_atomic_writes_get_the_permissions_of_a_plain_write(tmp_path: Path) -> None:
    import os
    import stat

    from pscl.integrity import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "shared.csv", "a,b\n")
        (tmp_path / "plain.csv").write_text("a,b\n")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "shared.csv").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.csv").stat().st_mode) == 0o644


def test_file_lock_is_exclusive(tmp_path: Path) -> None:
    import fcntl

    lock = tmp_path / "entry.lock"
    with file_lock(lock):
        with open(lock, "a") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock, "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again


def _entry(tmp_path: Path) -> tuple[Path, dict]:
    weights = {"encoder.a": torch.arange(4.0), "decoder.b": torch.ones(2)}
    source = save_pretrained(weights, tmp_path / "run" / "pretrained.pt", {"method": "simclr"})
    folder = tmp_path / "cache" / "pretrained" / "simclr-0123"
    assert pretrain_cache.store(folder, source, {"method": "simclr"}) == folder / "pretrained.pt"
    return folder, weights


def test_cache_entry_round_trips_and_records_hashes(tmp_path: Path) -> None:
    folder, weights = _entry(tmp_path)
    recorded = json.loads((folder / "entry.json").read_text())["sha256"]
    assert recorded == {"pretrained.pt": hash_file(folder / "pretrained.pt")}
    found = pretrain_cache.lookup(folder, [])
    assert found is not None
    assert set(found[0]) == set(weights) and torch.equal(found[0]["encoder.a"], weights["encoder.a"])


def test_planted_payload_in_the_cache_never_runs(tmp_path: Path, caplog) -> None:
    folder, _ = _entry(tmp_path)
    marker = tmp_path / "ran"
    write_crafted_checkpoint(folder / "pretrained.pt", marker)
    with caplog.at_level(logging.WARNING, logger="pscl.pretrain_cache"):
        assert pretrain_cache.lookup(folder, []) is None
    assert not marker.exists()
    assert "changed since it was stored" in caplog.text and str(folder) in caplog.text
    # the broken entry is moved aside (kept for inspection), so that a new pretraining can take its place
    (aside,) = folder.parent.glob(f"{folder.name}.broken-*")
    assert not folder.exists() and str(aside) in caplog.text
    # even with the hash forged to match, the load refuses the pickle instead of running it
    folder, _ = _entry(tmp_path)
    write_crafted_checkpoint(folder / "pretrained.pt", marker)
    (folder / "entry.json").write_text(json.dumps({"sha256": {"pretrained.pt": hash_file(folder / "pretrained.pt")}}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pscl.pretrain_cache"):
        assert pretrain_cache.lookup(folder, []) is None
    assert not marker.exists() and "refused" in caplog.text


def test_unfinished_or_edited_entries_are_not_reused(tmp_path: Path) -> None:
    folder, _ = _entry(tmp_path)
    (folder / "entry.json").unlink()  # a run killed while storing
    assert pretrain_cache.verify(folder).startswith("no entry.json")
    folder, _ = _entry(tmp_path)
    blob = bytearray((folder / "pretrained.pt").read_bytes())
    blob[-30] ^= 0xFF  # same size, one byte different
    (folder / "pretrained.pt").write_bytes(bytes(blob))
    assert "changed since it was stored" in pretrain_cache.verify(folder)


def test_store_is_write_once(tmp_path: Path) -> None:
    folder, _ = _entry(tmp_path)
    before = (folder / "entry.json").read_text()
    other = save_pretrained({"encoder.a": torch.zeros(4), "decoder.b": torch.ones(2)}, tmp_path / "other.pt", {})
    pretrain_cache.store(folder, other, {"method": "simclr"})
    assert (folder / "entry.json").read_text() == before
    assert pretrain_cache.verify(folder) is None


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_cache_warns_and_goes_on(tmp_path: Path, caplog) -> None:
    source = save_pretrained({"encoder.a": torch.ones(2)}, tmp_path / "run" / "pretrained.pt", {})
    locked = tmp_path / "cache"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with caplog.at_level(logging.WARNING, logger="pscl.pretrain_cache"):
            assert pretrain_cache.store(locked / "pretrained" / "simclr-1", source, {}) is None
    finally:
        locked.chmod(0o700)
    assert "could not store the pretraining" in caplog.text


def test_unwritable_cache_warns_and_goes_on_even_as_root(tmp_path: Path, caplog) -> None:
    source = save_pretrained({"encoder.a": torch.ones(2)}, tmp_path / "run" / "pretrained.pt", {})
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="pscl.pretrain_cache"):
        assert pretrain_cache.store(blocker / "pretrained" / "simclr-1", source, {}) is None
    assert "could not store the pretraining" in caplog.text


def test_pool_key_follows_content_not_size(tmp_path: Path) -> None:
    pool = [tmp_path / "a.tif", tmp_path / "b.tif"]
    pool[0].write_bytes(b"\x00" * 64)
    pool[1].write_bytes(b"\x01" * 64)
    before = pretrain_cache.content_hashes(pool)
    pool[0].write_bytes(b"\x02" * 64)  # edited in place, same size
    os.utime(pool[0], ns=(1, 1))  # even with a different mtime the memo key is path+size+mtime
    after = pretrain_cache.content_hashes(pool)
    assert before[1] == after[1] and before[0] != after[0]
    assert [name for name, _ in after] == ["a.tif", "b.tif"]


def test_an_image_edited_in_place_changes_the_pretraining_key(make_folder, tmp_path: Path) -> None:
    """Same name, same size, different bytes: a different key, so the pretraining runs again."""
    from conftest import compose_config
    from pscl.data.datamodule import MicrographDataModule

    root = make_folder(n=6, suffix=".tif")

    def key() -> str:
        cfg = compose_config(["method=simclr", "data=folder", f"data.root={root}", "data.crop_size=32"],
                             tmp_path / "run")
        datamodule = MicrographDataModule(root=root, cache_dir=tmp_path / "cache", crop_size=32)
        datamodule.setup("fit")
        return pretrain_cache.pretraining_key(pretrain_cache.pretraining_config(cfg, datamodule.pretraining_pool()))

    before = key()
    assert key() == before
    image = root / "images" / "img00.tif"
    size = image.stat().st_size
    blob = bytearray(image.read_bytes())
    blob[-1] ^= 0x01  # one grey level of one pixel (uncompressed TIFF)
    image.write_bytes(bytes(blob))
    assert image.stat().st_size == size
    assert key() != before


def test_a_weights_file_changed_under_its_name_changes_the_pretraining_key(make_folder, tmp_path: Path) -> None:
    """backbone.encoder_weights enters the key by content: the same bytes under the same path give
    the same key, edited bytes another one, and a run without a weights file keeps its key."""
    from conftest import compose_config
    from pscl.data.datamodule import MicrographDataModule

    root = make_folder(n=6, suffix=".tif")
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"first weights")
    datamodule = MicrographDataModule(root=root, cache_dir=tmp_path / "cache", crop_size=32)
    datamodule.setup("fit")

    def config(*overrides: str) -> dict:
        cfg = compose_config(["method=simclr", "data=folder", f"data.root={root}", "data.crop_size=32",
                              *overrides], tmp_path / "run")
        return pretrain_cache.pretraining_config(cfg, datamodule.pretraining_pool())

    smp = ("backbone=smp", f"backbone.encoder_weights={weights}")
    before = config(*smp)
    assert before["encoder_weights_sha256"] == pretrain_cache.hash_file(weights)
    assert pretrain_cache.pretraining_key(config(*smp)) == pretrain_cache.pretraining_key(before)
    weights.write_bytes(b"other weights")
    assert pretrain_cache.pretraining_key(config(*smp)) != pretrain_cache.pretraining_key(before)
    assert "encoder_weights_sha256" not in config("backbone=smp")  # random initialisation
    assert "encoder_weights_sha256" not in config()  # pscl's UNet
