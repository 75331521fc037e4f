"""Protocol selection on the validation split: the test set is never opened, and the fine-tuning
options (decoder-first warm-up, frozen pretrained BatchNorm, automatic class weights) do what they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import pscl.data.datamodule as datamodule_module
from conftest import compose_config
from pscl.data.datamodule import MicrographDataModule
from pscl.data.splits import carve_validation
from pscl.errors import ConfigError
from pscl.losses.ce_dice import class_weights_from_counts
from pscl.modules.segmentation import SegmentationModule
from pscl.models.unet import UNet
from pscl.training.pipeline import train

TINY = ["data=synthetic", "data.synthetic.counts=[4,4,4]", "data.synthetic.size=64", "data.crop_size=32",
        "data.unlabeled_batch_size=3", "data.batch_size=2", "data.samples_per_epoch=4", "trainer.max_epochs=2",
        "backbone=unet_small", "backbone.widths=[4,8,16,32]", "logger=csv", "probe.pixels_per_class=256",
        "probe.max_iter=20"]


def test_selection_never_opens_the_test_set(tmp_path: Path, monkeypatch) -> None:
    read: list[Path] = []
    original = datamodule_module.read_image

    def recording(path, *args, **kwargs):
        read.append(Path(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(datamodule_module, "read_image", recording)
    monkeypatch.setattr(MicrographDataModule, "test_dataloader",
                        lambda self: pytest.fail("the test loader was built during protocol selection"))
    # the recipe's length is in steps (quick: 190), which win over epochs: back to one short epoch
    cfg = compose_config(["experiment=protocol_grid", "method=pscl_simclr", "method.pretrain_epochs=1",
                          "method.pretrain_steps=null",
                          "finetune.module.encoder_warmup_epochs=1", "finetune.class_weights=auto", "eval.probe=true",
                          *TINY], tmp_path / "run")
    results = train(cfg)
    seen = list(read)  # what the selection run read; the check below reads the test images itself
    dm = MicrographDataModule(root=results["data_root"], val_fraction=0.2, crop_size=32)
    dm.setup()
    test_files = {dm.index.samples[i].image for i in dm.index.test_ids}
    assert seen and not test_files & set(seen)
    assert {dm.index.samples[i].image for i in dm.index.val_ids} <= set(seen)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["split"] == "val" and written["val"]["dice"] >= 0 and "test" not in written
    assert written["probe"]["split"] == "val"


def test_validation_is_carved_from_train_only(make_folder) -> None:
    splits = {"train": [f"img{i:02d}" for i in range(10)], "test": ["img10", "img11"]}
    root = make_folder(n=12, size=(40, 40), splits=splits, groups=["a", "b"])
    dm = MicrographDataModule(root=root, val_fraction=0.2, crop_size=32)
    dm.setup()
    assert dm.index.test_ids == ("img10", "img11")
    assert len(dm.index.val_ids) == 2 and not set(dm.index.val_ids) & set(dm.index.train_ids)
    assert set(dm.index.val_ids) | set(dm.index.train_ids) == set(splits["train"])
    assert set(dm.labeled_ids) <= set(dm.index.train_ids)
    # the pretraining pool holds no validation image
    assert not {p.stem for p in dm.pretraining_pool()} & set(dm.index.val_ids)
    train_ids, val_ids = carve_validation(splits["train"], {}, 0, 0.2)
    assert (train_ids, val_ids) == carve_validation(splits["train"], {}, 0, 0.2)  # seeded
    with pytest.raises(ConfigError, match="data.val_fraction"):
        MicrographDataModule(root=root, eval_split="val", val_fraction=0.0)


def test_auto_class_weights() -> None:
    assert class_weights_from_counts([10000, 100, 2500, 0]) == [1.0, 10.0, 2.0, 10.0]
    with pytest.raises(ValueError):
        class_weights_from_counts([0, 0])


def _module(**kwargs) -> SegmentationModule:
    torch.manual_seed(0)
    backbone = UNet(1, 3, (4, 8, 16, 32))
    backbone.train()
    backbone.encoder(torch.randn(2, 1, 16, 16))  # the encoder's BatchNorm layers have seen data: "pretrained"
    return SegmentationModule(backbone, ["a", "b", "c"], **kwargs)


def _fit(module: SegmentationModule, epochs: int = 1) -> None:
    import lightning.pytorch as pl

    torch.manual_seed(0)
    items = [{"image": torch.randn(1, 16, 16) * 3 + 1, "mask": torch.randint(0, 3, (16, 16))} for _ in range(4)]
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, torch.utils.data.DataLoader(items, batch_size=2))


def test_frozen_pretrained_batchnorm_keeps_its_statistics() -> None:
    """Through a real Lightning fit (which does not call train() itself): pretrained BN layers keep
    their running statistics, never-pretrained ones update theirs."""
    module = _module(freeze_pretrained_bn=True)
    encoder_bn = [m for m in module.backbone.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    decoder_bn = [m for m in module.backbone.decoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert set(map(id, module.frozen_bn)) == set(map(id, encoder_bn))  # a never-pretrained layer is not frozen
    before = [m.running_mean.clone() for m in encoder_bn]
    decoder_before = [m.running_mean.clone() for m in decoder_bn]
    _fit(module)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, encoder_bn))
    assert not all(torch.equal(b, m.running_mean) for b, m in zip(decoder_before, decoder_bn))
    module.train()
    assert all(not m.training for m in encoder_bn) and all(m.training for m in decoder_bn)
    # without the option, the same fit moves the encoder's statistics
    plain = _module(freeze_pretrained_bn=False)
    assert plain.frozen_bn == []
    plain_bn = [m for m in plain.backbone.encoder.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    plain_before = [m.running_mean.clone() for m in plain_bn]
    _fit(plain)
    assert not all(torch.equal(b, m.running_mean) for b, m in zip(plain_before, plain_bn))


def test_decoder_first_warmup_holds_the_encoder() -> None:
    """With a 1-epoch warm-up, epoch 1 leaves the encoder's weights as they were and trains the decoder."""
    import lightning.pytorch as pl

    for warmup, encoder_moves in ((1, False), (0, True)):
        module = _module(encoder_warmup_epochs=warmup, encoder_lr=1e-2, decoder_lr=1e-2)
        encoder_start = {k: v.clone() for k, v in module.backbone.encoder.named_parameters()}
        decoder_start = {k: v.clone() for k, v in module.backbone.decoder.named_parameters()}
        torch.manual_seed(0)
        items = [{"image": torch.randn(1, 16, 16), "mask": torch.randint(0, 3, (16, 16))} for _ in range(4)]
        trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, accelerator="cpu")
        trainer.fit(module, torch.utils.data.DataLoader(items, batch_size=2))
        moved = any(not torch.equal(encoder_start[k], v) for k, v in module.backbone.encoder.named_parameters())
        decoder_moved = any(not torch.equal(decoder_start[k], v) for k, v in module.backbone.decoder.named_parameters())
        assert moved is encoder_moves and decoder_moved


def test_warmup_is_a_config_error_when_negative() -> None:
    with pytest.raises(ConfigError, match="encoder_warmup_epochs"):
        _module(encoder_warmup_epochs=-1)


def test_bad_class_weight_choice(tmp_path: Path) -> None:
    cfg = compose_config(["finetune.class_weights=inverse", *TINY], tmp_path / "run")
    with pytest.raises(ConfigError, match="finetune.class_weights"):
        train(cfg)


def test_carving_keeps_preset_annotated_images_in_train() -> None:
    ids = [f"i{k}" for k in range(10)]
    for seed in range(5):
        train, val = carve_validation(ids, {}, seed, 0.5, keep={"i0", "i1"})
        assert {"i0", "i1"} <= set(train) and len(val) == 4 and not set(val) & set(train)
