"""``data.labeled_ids``: a selection.json (pscl-select) or a list names the annotated images of a run.

The selection feeds training and the run's ``metrics.json`` carries exactly those ids and their
source; bad values stop the run with exit 2 before anything is trained or cached; PSCL's cached
pretraining is keyed on the ids actually annotated while label-free ones stay shared; a run
started with ``data.labeled_ids`` passes resume's override checks and resumes.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from conftest import compose_config, tree_hashes
from pscl.data.datamodule import MicrographDataModule
from pscl.data.labeled_ids import MAX_SELECTION_BYTES, LabeledChoice, read_choice, resolve_ids
from pscl.errors import ConfigError

# ids as the authors' aluminium data names them: Hydra reads an unquoted 15_016 as the number 15016
TRAIN = ["15_016", "03_002", "15_001", "03_010", "10_005", "10_007"]
TEST = ["15_020", "03_020"]
TINY = ["backbone=unet_small", "backbone.widths=[8,16,32,64]", "logger=csv"]
QUICK = ["trainer.max_epochs=1", "data.samples_per_epoch=4", "data.batch_size=2"]


@pytest.fixture
def root(make_folder) -> Path:
    """8 annotated images with the ids above and a fixed train/test split."""
    folder = make_folder(n=len(TRAIN + TEST))
    for index, name in enumerate(TRAIN + TEST):
        (folder / "images" / f"img{index:02d}.png").rename(folder / "images" / f"{name}.png")
        (folder / "masks" / f"img{index:02d}.png").rename(folder / "masks" / f"{name}.png")
    (folder / "splits.json").write_text(json.dumps({"train": TRAIN, "test": TEST}))
    return folder


def write_selection(path: Path, ids: list, **fields) -> Path:
    record = {"ids": ids, "strategy": "kcenter", "features": "dino_vits16", "seed": 0, "budget": len(ids), **fields}
    path.write_text(json.dumps(record))
    return path


def overrides(root: Path, *extra: str) -> list[str]:
    return ["data=folder", f"data.root={root}", "data.crop_size=32", *TINY, *extra]


def datamodule(root: Path, **kwargs) -> MicrographDataModule:
    dm = MicrographDataModule(root=root, crop_size=32, batch_size=2, samples_per_epoch=4, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


# ----------------------------------------------------------------------------- training uses the choice
def test_a_selection_feeds_training_and_metrics_carry_exactly_its_ids(root: Path, tmp_path: Path, capsys) -> None:
    from pscl.reporting.report import write_report
    from pscl.training.pipeline import train

    chosen = ["10_007", "15_016", "03_010"]  # not sorted: the selection's order is kept
    selection = write_selection(tmp_path / "selection.json", chosen, features=["dino", {"evil": 1}])
    run = tmp_path / "runs" / "run"
    seen: list[tuple[str, ...]] = []
    original = MicrographDataModule.labeled_dataset

    def spy(self):
        dataset = original(self)
        seen.append(tuple(dataset.ids))
        return dataset

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MicrographDataModule, "labeled_dataset", spy)
        results = train(compose_config(overrides(root, f"data.labeled_ids={selection}", *QUICK), run))
    assert seen and set(seen) == {tuple(chosen)}  # fine-tuning crops come from these images only
    written = json.loads((run / "metrics.json").read_text())
    assert written["labeled_ids"] == chosen == results["labeled_ids"]
    assert written["num_labeled"] == 3  # the selection's size, not data.num_labeled (1)
    assert written["labeled_source"] == {
        "kind": "selection", "file": str(selection), "seed": 0, "budget": 3, "strategy": "kcenter",
        "sha256": hashlib.sha256(selection.read_bytes()).hexdigest()}  # a features list holding a dict is not copied
    assert f"(selection {selection}, strategy kcenter: 10_007, 15_016, 03_010)" in capsys.readouterr().out
    # pscl-report reads the record: a regime of 3 annotated images, one round
    report = write_report([run.parent], tmp_path / "report")
    rows = (report["results.csv"]).read_text().splitlines()
    assert rows[1].startswith("supervised,3,1,0,0,")


def test_a_list_on_the_command_line_feeds_training(root: Path, tmp_path: Path) -> None:
    from pscl.training.pipeline import train

    run = tmp_path / "run"
    cfg = compose_config(overrides(root, "data.labeled_ids=[15_016,03_002]", "data.num_labeled=5", *QUICK), run)
    assert list(cfg.data.labeled_ids) == [15016, "03_002"]  # what Hydra makes of the unquoted ids
    train(cfg)
    written = json.loads((run / "metrics.json").read_text())
    assert written["labeled_ids"] == ["15_016", "03_002"]
    assert written["labeled_source"] == {"kind": "list"} and written["num_labeled"] == 2
    quoted = compose_config(overrides(root, 'data.labeled_ids=["15_016","03_002"]'), run)
    assert list(quoted.data.labeled_ids) == ["15_016", "03_002"]


def test_a_run_choosing_its_images_records_the_strategy_and_seed(root: Path, tmp_path: Path) -> None:
    from pscl.select.choose import choose_training_images
    from pscl.training.pipeline import train

    run = tmp_path / "run"
    train(compose_config(overrides(root, "data.labeled_ids=select:coverage:4", "data.num_labeled=2", *QUICK), run))
    written = json.loads((run / "metrics.json").read_text())
    expected, _ = choose_training_images(str(root), {i: root / "images" / f"{i}.png" for i in TRAIN}, "coverage", 2, 4)
    assert written["labeled_ids"] == list(expected) and written["num_labeled"] == 2
    assert written["label_seed"] == 4  # the choice's seed, not data.label_seed (0)
    source = written["labeled_source"]
    assert (source["kind"], source["strategy"], source["features"], source["seed"]) == ("selection", "coverage",
                                                                                         "intensity", 4)
    assert source["pool_size"] == len(TRAIN) and len(source["scores"]) == 2


def test_a_drawn_round_records_its_seed(root: Path) -> None:
    dm = datamodule(root, num_labeled=2, label_seed=3)
    assert dm.labeled_source == {"kind": "label_seed", "label_seed": 3}
    assert dm.num_labeled == 2 and len(dm.labeled_ids) == 2


def test_a_relative_selection_path_is_read_from_the_current_folder(root: Path, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "sel").mkdir()
    selection = write_selection(tmp_path / "sel" / "selection.json", ["03_002"])
    monkeypatch.chdir(tmp_path)
    dm = datamodule(root, labeled_ids="sel/selection.json", num_labeled=4)
    assert dm.labeled_ids == ("03_002",) and dm.num_labeled == 1
    assert dm.labeled_source["file"] == str(selection)
    monkeypatch.chdir(root)
    with pytest.raises(ConfigError, match=f"no such file \\(a relative path is read from {root}\\)"):
        datamodule(root, labeled_ids="sel/selection.json")


# ----------------------------------------------------------------------------- what is refused, and how
def test_hydra_numbers_map_back_to_the_one_id_that_spells_them() -> None:
    choice = LabeledChoice((15016, "03_002"), {"kind": "list"})
    assert resolve_ids(choice, TRAIN, test_ids=TEST) == ("15_016", "03_002")
    with pytest.raises(ConfigError, match=r"15016 may be any of the ids 150_16, 15_016") as caught:
        resolve_ids(LabeledChoice((15016,), {"kind": "list"}), ["15_016", "150_16"])
    assert "data.labeled_ids=[\"15_016\",\"03_002\"]" in str(caught.value)  # the quoting that keeps strings
    with pytest.raises(ConfigError, match="holds the number 99999, which is no image id"):
        resolve_ids(LabeledChoice((99999,), {"kind": "list"}), TRAIN)
    with pytest.raises(ConfigError, match=r"holds True \(bool\), not an image id"):
        resolve_ids(LabeledChoice((True,), {"kind": "list"}), TRAIN)
    with pytest.raises(ConfigError, match="more than once: 15_016"):  # 15_016 given twice, once as a number
        resolve_ids(LabeledChoice((15016, "15_016"), {"kind": "list"}), TRAIN)


def test_a_selection_field_too_odd_to_record_is_left_out(tmp_path: Path) -> None:
    selection = write_selection(tmp_path / "s.json", ["15_016"], strategy="x" * 500, features={"a": 1},
                                seed=True, budget=[1] * 100)
    source = read_choice(str(selection)).source
    assert source["strategy"] == "x" * 200 and not {"features", "seed", "budget"} & set(source)


def test_validation_and_unlabelled_images_are_refused(root: Path, tmp_path: Path) -> None:
    carved = datamodule(root, val_fraction=0.3)  # splits.json has no val: it is carved from train
    assert carved.index.val_ids
    with pytest.raises(ConfigError, match="validation split \\(carved from the training images by "
                                          "data.val_fraction\\)") as caught:
        datamodule(root, val_fraction=0.3, labeled_ids=[carved.index.val_ids[0]])
    assert "data.val_fraction=0" in str(caught.value)
    (root / "splits.json").write_text(json.dumps({"train": TRAIN[1:], "val": TRAIN[:1], "test": TEST}))
    with pytest.raises(ConfigError, match="names images of the validation split: 15_016\n"):
        datamodule(root, labeled_ids=["03_002", "15_016"])
    from PIL import Image

    (root / "unlabeled").mkdir()
    Image.new("L", (64, 80), 128).save(root / "unlabeled" / "extra00.png")
    with pytest.raises(ConfigError, match="images of unlabeled/, which have no mask: extra00"):
        datamodule(root, labeled_ids=["extra00"])


def _spoil(name: str, tmp: Path) -> str:
    """The value of data.labeled_ids for the bad-input case ``name`` (files written under ``tmp``)."""
    path = tmp / "selection.json"
    contents: dict[str, str | bytes] = {
        "not JSON": '{"ids": ["15_016",', "not UTF-8": b'{"ids": ["15_016"], "strategy": "\xff"}',
        "not an object": '["15_016"]', "ids empty": '{"ids": []}', "ids not strings": '{"ids": [15016]}',
        "duplicate ids": '{"ids": ["15_016", "03_002", "15_016"]}', "unknown id": '{"ids": ["15_016", "99_999"]}',
        "a test-split id": '{"ids": ["03_002", "15_020"]}', "an empty id": '{"ids": [""]}',
        "a huge file": '{"ids": ["15_016"], "pad": "' + "x" * MAX_SELECTION_BYTES + '"}',
    }
    if name in contents:
        value = contents[name]
        path.write_bytes(value if isinstance(value, bytes) else value.encode())
        return str(path)
    return {"missing file": str(tmp / "absent.json"), "a folder": str(tmp),
            "empty list": "[]", "a number no id spells": "[99_999]"}[name]


BAD = [
    ("missing file", [], "absent.json: no such file"),
    ("a folder", [], "is not a regular file"),
    ("not JSON", [], "selection.json: is not valid JSON"),
    ("not UTF-8", [], "selection.json: is not UTF-8 text"),
    ("not an object", [], "holds a JSON list, not an object with `ids`"),
    ("ids empty", [], "names no image: the list of ids is empty"),
    ("empty list", [], "names no image: the list of ids is empty"),
    ("ids not strings", [], "`ids` must be a list of image ids (strings)"),
    ("an empty id", [], "holds an empty id"),
    ("duplicate ids", [], "names some images more than once: 15_016"),
    ("unknown id", [], "names ids that are no image of this dataset: 99_999"),
    ("a test-split id", [], "names images of the test split: 15_020"),
    ("a huge file", [], "is larger than 4 MiB"),
    ("a number no id spells", [], "holds the number 99999"),
    ("ids with num_labeled=all", ["data.num_labeled=all"], "data.num_labeled=all asks for every training image"),
]


@pytest.mark.parametrize(("name", "extra", "fragment"), BAD, ids=[case[0] for case in BAD])
def test_a_bad_value_is_one_message_exit_2_and_nothing_is_written(name: str, extra: list[str], fragment: str,
                                                                   root: Path, tmp_path: Path, monkeypatch,
                                                                   capsys) -> None:
    from hydra.core.global_hydra import GlobalHydra

    from pscl.training.app import run_cli
    from conftest import _reopen_log_streams

    value = "[15_016]" if name == "ids with num_labeled=all" else _spoil(name, tmp_path)
    run, cache = tmp_path / "run", tmp_path / "cache"
    monkeypatch.setattr(sys, "argv", ["pscl-train", *overrides(root, f"data.labeled_ids={value}", *extra, *QUICK),
                                      f"hydra.run.dir={run}"])
    monkeypatch.setenv("PSCL_CACHE_DIR", str(cache))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    GlobalHydra.instance().clear()
    _reopen_log_streams(monkeypatch)
    selection = tmp_path / "selection.json"
    before = tree_hashes(root), selection.read_bytes() if selection.is_file() else None
    assert run_cli() == 2
    err = capsys.readouterr().err
    assert "config `data.labeled_ids`:" in err and fragment in err and "fix:" in err, err
    assert "Traceback" not in err
    assert {p.name for p in run.iterdir()} <= {".hydra", "train.log", "FAILED"}  # no metrics, checkpoints, model
    assert not (cache / "pretrained").exists()
    assert (tree_hashes(root), selection.read_bytes() if selection.is_file() else None) == before


# ----------------------------------------------------------------------------- the pretraining cache
def _identity(root: Path, tmp_path: Path, method: str, *extra: str,
              without_key: bool = False) -> tuple[dict, str, bool]:
    """The pretraining cache's config and key of a run; ``without_key``: as before data.labeled_ids existed."""
    from omegaconf import open_dict

    from pscl.training.build import instantiate
    from pscl.training.pretraining import pretraining_identity

    cfg = compose_config(overrides(root, f"method={method}", "data.unlabeled_batch_size=2", *extra), tmp_path / "run")
    if without_key:
        with open_dict(cfg):
            del cfg.data["labeled_ids"]
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return pretraining_identity(cfg, dm)


def test_pscl_pretraining_is_keyed_on_the_ids_annotated_and_simclr_is_shared(root: Path, tmp_path: Path) -> None:
    drawn = datamodule(root, num_labeled=1, label_seed=0).labeled_ids[0]
    other = next(i for i in TRAIN if i != drawn)
    selected = str(write_selection(tmp_path / "other.json", [other]))
    same = str(write_selection(tmp_path / "same.json", [drawn]))

    config, key_drawn, uses = _identity(root, tmp_path, "pscl_simclr")
    assert uses and config["labeled_ids"] == [drawn] and "labeled_ids" not in config["data"]
    config, key_selected, _ = _identity(root, tmp_path, "pscl_simclr", f"data.labeled_ids={selected}")
    assert config["labeled_ids"] == [other] and key_selected != key_drawn  # never the other round's pretraining
    assert _identity(root, tmp_path, "pscl_moco", f"data.labeled_ids={selected}")[1] != \
        _identity(root, tmp_path, "pscl_moco")[1]
    # the same images, however chosen, pretrain the same: the selection may reuse the drawn round's
    assert _identity(root, tmp_path, "pscl_simclr", f"data.labeled_ids={same}")[1] == key_drawn
    assert _identity(root, tmp_path, "pscl_simclr", f"data.labeled_ids=[{drawn}]")[1] == key_drawn

    config, key_simclr, uses = _identity(root, tmp_path, "simclr")
    assert not uses and "labeled_ids" not in config and "labeled_ids" not in config["data"]
    # the setting leaves the keys it found: pretrainings cached before it existed stay reusable
    assert _identity(root, tmp_path, "simclr", without_key=True)[1] == key_simclr
    assert _identity(root, tmp_path, "pscl_simclr", without_key=True)[1] == key_drawn
    for extra in ([f"data.labeled_ids={selected}"], ["data.labeled_ids=[15_016,03_002]"], ["data.label_seed=4"]):
        assert _identity(root, tmp_path, "simclr", *extra)[1] == key_simclr  # label-free: one pretraining for all


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("override", [
    "data.labeled_ids=/data/selections/kcenter.json", "data.labeled_ids='/data/my runs/sélection.json'",
    "data.labeled_ids=[15_016,03_002]", 'data.labeled_ids=["15_016","03_002"]', "data.labeled_ids=null", "data.labeled_ids=select:coverage:3",
    "data.labeled_ids=select\\:coverage\\:0",  # as a sweep job saves it in .hydra/overrides.yaml
])
def test_resume_accepts_the_overrides_of_a_run_with_chosen_ids(override: str, tmp_path: Path) -> None:
    from pscl.integrity.configs import check_overrides
    from pscl.runs.resume import resume_argv

    check_overrides(["method=pscl_simclr", override], tmp_path / "overrides.yaml", "fix")
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(json.dumps(["method=pscl_simclr", override]))
    assert resume_argv([f"resume={run}"])[:2] == ["method=pscl_simclr", override]


def _interrupt_finetuning(monkeypatch) -> None:
    from pscl.modules.segmentation import SegmentationModule
    from conftest import interrupt_at_epoch

    interrupt_at_epoch(SegmentationModule, 1, monkeypatch)


RESUMABLE = ["trainer.max_epochs=2", "data.samples_per_epoch=4", "data.batch_size=2",
             "checkpoint.finetune_every_n_epochs=1"]


def test_an_interrupted_run_with_a_list_resumes_from_the_command_line(root: Path, tmp_path: Path, monkeypatch,
                                                                      capsys) -> None:
    from hydra.core.global_hydra import GlobalHydra

    from pscl.training.app import run_cli
    from conftest import _reopen_log_streams

    run = tmp_path / "run"
    monkeypatch.setenv("PSCL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PSCL_LOG_DIR", str(tmp_path / "logs"))
    _reopen_log_streams(monkeypatch)
    with monkeypatch.context() as patch:
        _interrupt_finetuning(patch)
        patch.setattr(sys, "argv", ["pscl-train", *overrides(root, "data.labeled_ids=[15_016,03_002]", *RESUMABLE),
                                    f"hydra.run.dir={run}"])
        GlobalHydra.instance().clear()
        assert run_cli() == 1  # the simulated kill
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "metrics.json").exists()
    monkeypatch.setattr(sys, "argv", ["pscl-train", f"resume={run}"])
    GlobalHydra.instance().clear()
    assert run_cli() == 0, capsys.readouterr().err
    written = json.loads((run / "metrics.json").read_text())
    assert written["labeled_ids"] == ["15_016", "03_002"] and written["labeled_source"] == {"kind": "list"}
    assert (run / "csv" / "metrics.before_resume_1.csv").is_file()  # it continued, it did not start over


def test_a_resume_after_the_selection_changed_is_refused(root: Path, tmp_path: Path, monkeypatch) -> None:
    from pscl.runs import read_state
    from pscl.training.pipeline import train

    selection = write_selection(tmp_path / "selection.json", ["15_016", "03_002"])
    run = tmp_path / "run"
    args = overrides(root, f"data.labeled_ids={selection}", *RESUMABLE)
    with monkeypatch.context() as patch:
        _interrupt_finetuning(patch)
        with pytest.raises(RuntimeError, match="simulated kill"):
            train(compose_config(args, run))
    write_selection(selection, ["15_001", "03_002"])
    with pytest.raises(ConfigError, match="the checkpoint this stage resumes from was trained on the annotated "
                                          "images 15_016, 03_002, but this run's are 15_001, 03_002") as caught:
        train(compose_config([*args, f"resume={run}"], run))
    assert "restore the selection file the run started with" in str(caught.value)
    assert not (run / "metrics.json").exists() and read_state(run).state == "failed"



def test_a_resume_after_the_selection_changed_keeps_no_pscl_pretraining_of_the_old_one(
        root: Path, tmp_path: Path, monkeypatch) -> None:
    """PSCL's finished pretraining sampled from the images the run started with: not reused for others."""
    from pscl.training.pipeline import train

    selection = write_selection(tmp_path / "selection.json", ["15_016", "03_002"])
    run = tmp_path / "run"
    args = overrides(root, "method=pscl_simclr", "data.unlabeled_batch_size=2", "method.pretrain_steps=2",
                     f"data.labeled_ids={selection}", *RESUMABLE)
    with monkeypatch.context() as patch:
        _interrupt_finetuning(patch)
        with pytest.raises(RuntimeError, match="simulated kill"):
            train(compose_config(args, run))
    assert (run / "pretrain" / "pretrained.pt").is_file()
    write_selection(selection, ["15_001", "03_002"])
    with pytest.raises(ConfigError, match=f"the finished pretraining {run / 'pretrain' / 'pretrained.pt'} was "
                                          "trained on the annotated images 15_016, 03_002, but this run's are "
                                          "15_001, 03_002"):
        train(compose_config([*args, f"resume={run}"], run))
