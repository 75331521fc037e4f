"""Config keys that moved when the configs were grouped by concern: old names keep working."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

from pscl.errors import ConfigError
from pscl.runs.renamed_keys import RENAMED_KEYS, SAMPLING_METHODS, translate_overrides


@pytest.mark.parametrize(("old", "new"), [
    ("method.finetune_encoder_lr=1e-4", "method.finetune.encoder_lr=1e-4"),
    ("method.finetune_decoder_lr=0.01", "method.finetune.decoder_lr=0.01"),
    ("method.paper_finetune_encoder_lr=1e-5", "method.finetune.paper_encoder_lr=1e-5"),
    ("method.default_top_k=8", "sampling.top_k=8"),
    ("finetune.encoder_warmup_epochs=0,5", "finetune.module.encoder_warmup_epochs=0,5"),
    ("finetune.freeze_pretrained_bn=true", "finetune.module.freeze_pretrained_bn=true"),
    ("finetune.optimizer.weight_decay=1e-4", "finetune.module.optimizer.weight_decay=1e-4"),
    ("+finetune.ce_weight=1", "+finetune.module.ce_weight=1"),
    ("~finetune.dice_weight", "~finetune.module.dice_weight"),
])
def test_an_old_key_is_rewritten_with_a_note(old: str, new: str) -> None:
    translated, notes = translate_overrides(["-m", old, "data.label_seed=1"])
    assert translated == ["-m", new, "data.label_seed=1"]
    assert len(notes) == 1 and new.lstrip("+~").split("=")[0] in notes[0]


@pytest.mark.parametrize("kept", [
    "finetune=paper", "finetune.class_weights=auto", "finetune.module.encoder_lr=1e-3",
    "method.finetune.encoder_lr=1e-3", "method=pscl_moco", "sampling.top_k=4", "--cfg", "job",
    "method.finetune_encoder_lr_typo=1", "data.label_seed=0,1,2",
])
def test_current_keys_and_other_arguments_pass_unchanged(kept: str) -> None:
    assert translate_overrides([kept]) == ([kept], [])


def test_a_removed_key_names_what_to_set_instead() -> None:
    with pytest.raises(ConfigError, match=r"data.eval_split.*\n  fix: set eval.split"):
        translate_overrides(["data.eval_split=val"])


def test_every_new_key_exists_in_the_composed_config(tmp_path) -> None:
    """The table points at keys the configs have (PSCL-MoCo composes every group the table names)."""
    cfg = compose_config(["method=pscl_moco"], tmp_path / "run")
    for new in RENAMED_KEYS.values():
        assert OmegaConf.select(cfg, new, default="<absent>") != "<absent>", new


def test_pscl_train_runs_an_old_key_under_its_new_name(tmp_path) -> None:
    """The command line is translated before Hydra composes: the job's config has the new key's value."""
    result = subprocess.run(
        [sys.executable, "-m", "pscl.train", "--cfg", "job", "method=simclr", "method.finetune_encoder_lr=0.0123",
         "finetune.encoder_warmup_epochs=3"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    job = OmegaConf.create(result.stdout)
    assert job.method.finetune.encoder_lr == 0.0123
    assert job.finetune.module.encoder_warmup_epochs == 3
    assert "finetune_encoder_lr" not in job.method
    assert "`method.finetune_encoder_lr` is now `method.finetune.encoder_lr`" in result.stderr


def test_sampling_beside_a_method_without_it_is_one_message() -> None:
    with pytest.raises(ConfigError, match=r"config `sampling.top_k`: is PSCL's patch sampling; method=simclr has none"):
        translate_overrides(["-m", "method=pscl_simclr,simclr", "sampling.top_k=8"])
    assert translate_overrides(["method=pscl_moco,pscl_simclr", "sampling.top_k=8"])[0][1] == "sampling.top_k=8"


@pytest.mark.parametrize("method", ["supervised", "simclr", "moco", "byol", "densecl", "pscl_simclr", "pscl_moco"])
def test_sampling_methods_are_the_ones_whose_config_composes_sampling(method: str, tmp_path) -> None:
    cfg = compose_config([f"method={method}"], tmp_path / "run")
    assert ("sampling" in cfg) == (method in SAMPLING_METHODS)
