"""PSCL pretraining: pipeline, weight transfer, momentum, queues, validation, learning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import WIDTHS, compose_config, make_batch
from pscl.errors import ConfigError, DataError
from pscl.models.unet import UNet
from pscl.modules.pscl import PSCLModule
from pscl.training.pipeline import train
from pscl.models.transfer import load_pretrained, transfer_weights

TINY_SYNTH = ["data.synthetic.counts=[2,2,2]", "data.synthetic.size=96", "data.crop_size=64",
              "data.unlabeled_batch_size=3", "backbone=unet_small", "backbone.widths=[8,16,32,64]", "logger=csv"]


@pytest.mark.parametrize("method", ["pscl_simclr", "pscl_moco"])
def test_fast_dev_run_pretrain_finetune_test(method: str, tmp_path: Path) -> None:
    cfg = compose_config([f"method={method}", "debug=fast_dev_run", *TINY_SYNTH], tmp_path / "run")
    results = train(cfg)
    expected = len(UNet(1, 4, WIDTHS).transferable_state_dict())
    assert results["transferred_keys"] == expected
    assert 0.0 <= results["test"]["dice"] <= 1.0


def test_stage_pretrain_then_finetune_from_file(tmp_path: Path) -> None:
    cfg = compose_config(["method=pscl_simclr", "stage=pretrain", "method.pretrain_epochs=1", *TINY_SYNTH],
                         tmp_path / "pre")
    results = train(cfg)
    assert results["test"] == {}
    weights = tmp_path / "pre" / "pretrain" / "pretrained.pt"
    assert weights.is_file() and (tmp_path / "pre" / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    state = load_pretrained(weights)
    assert all(k.startswith(("encoder.", "decoder.")) for k in state)
    # a Lightning pretraining checkpoint gives the same weights
    from_ckpt = load_pretrained(tmp_path / "pre" / "pretrain" / "checkpoints" / "last.ckpt")
    assert from_ckpt.keys() == state.keys()
    assert all(torch.equal(from_ckpt[k], state[k]) for k in state)

    cfg = compose_config(["method=pscl_simclr", "stage=finetune", f"pretrained_ckpt={weights}",
                          "debug=fast_dev_run", *TINY_SYNTH], tmp_path / "fine")
    assert train(cfg)["transferred_keys"] == len(state)


def test_finetune_without_weights_is_a_clear_error(tmp_path: Path) -> None:
    cfg = compose_config(["method=pscl_simclr", "stage=finetune", *TINY_SYNTH], tmp_path / "run")
    with pytest.raises(ConfigError, match="pretrained_ckpt"):
        train(cfg)
    cfg = compose_config(["method=supervised", "stage=pretrain", *TINY_SYNTH], tmp_path / "run2")
    with pytest.raises(ConfigError, match="no pretraining stage"):
        train(cfg)


def test_transfer_loads_exactly_encoder_and_decoder() -> None:
    source, target = UNet(1, 4, WIDTHS), UNet(1, 4, WIDTHS)
    classifier_before = target.classifier.weight.clone()
    keys = transfer_weights(target, source.transferable_state_dict())
    assert keys == sorted(source.transferable_state_dict())
    for name, tensor in target.state_dict().items():
        if name.startswith(("encoder.", "decoder.")):
            assert torch.equal(tensor, source.state_dict()[name]), name
    assert torch.equal(target.classifier.weight, classifier_before)  # never transferred
    with pytest.raises(DataError, match="do not match the backbone"):
        transfer_weights(UNet(1, 4, (16, 32, 64, 128)), source.transferable_state_dict())
    heads = {**source.transferable_state_dict(), "heads.global_head.mlp.0.weight": torch.zeros(1)}
    with pytest.raises(DataError, match="unexpected"):
        transfer_weights(target, heads)


@pytest.mark.parametrize(("key", "value"), [("global_local_ratio", 1.5), ("global_local_ratio", -0.1),
                                            ("top_k", 0), ("temperature", 0.0), ("variant", "byol"),
                                            ("scales", [3]), ("queue_size", 0)])
def test_bad_values_are_clear_errors(key: str, value) -> None:
    kwargs = {"variant": "moco", key: value}
    with pytest.raises(ConfigError, match=key if key != "top_k" else "top_k"):
        PSCLModule(UNet(1, 4, WIDTHS), num_classes=4, **kwargs)


@pytest.mark.parametrize("variant", ["simclr", "moco"])
def test_short_pretraining_lowers_the_contrastive_loss(variant: str) -> None:
    torch.manual_seed(0)
    module = PSCLModule(UNet(1, 4, WIDTHS), num_classes=4, variant=variant, top_k=2, queue_size=16, momentum=0.9)
    module.log_losses = lambda values, batch_size: None  # no trainer attached
    batch = make_batch(module)
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(40):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    # MoCo's queues fill during the first 4 steps (more negatives, a higher loss): compare after that
    start = losses[5:10]
    # the EMA key encoder makes MoCo learn more slowly on one fixed batch
    factor = 0.9 if variant == "simclr" else 0.985
    assert sum(losses[-5:]) / 5 < factor * sum(start) / 5, losses


def test_moco_key_encoder_is_ema_and_queues_fill_and_survive_a_checkpoint() -> None:
    torch.manual_seed(0)
    module = PSCLModule(UNet(1, 4, WIDTHS), num_classes=4, variant="moco", top_k=2, queue_size=6, momentum=0.9)
    module.log_losses = lambda values, batch_size: None
    query_before = {k: v.clone() for k, v in module.backbone.named_parameters()}
    # make the key differ from the query so the EMA is visible
    with torch.no_grad():
        for p in module.backbone_momentum.parameters():
            p.add_(0.5)
    key_before = {k: v.clone() for k, v in module.backbone_momentum.named_parameters()}
    module.training_step(make_batch(module), 0)
    for name, key in module.backbone_momentum.named_parameters():
        expected = 0.9 * key_before[name] + 0.1 * query_before[name]
        torch.testing.assert_close(key, expected)
    assert int(module.image_queue.filled) == 4 and int(module.image_queue.ptr) == 4  # 1 + 3 images
    module.training_step(make_batch(module, seed=1), 0)
    assert int(module.image_queue.filled) == 6 and int(module.image_queue.ptr) == 2  # wrapped
    assert int(module.prototype_queues[0].filled) == min(24, 2 * 4 * 4)
    fresh = PSCLModule(UNet(1, 4, WIDTHS), num_classes=4, variant="moco", top_k=2, queue_size=6, momentum=0.9)
    fresh.load_state_dict(module.state_dict())
    for queue_a, queue_b in [(module.image_queue, fresh.image_queue),
                             *zip(module.prototype_queues, fresh.prototype_queues)]:
        for name, buffer in queue_a.named_buffers():
            assert torch.equal(buffer, dict(queue_b.named_buffers())[name]), name


def test_metrics_json_records_the_method(tmp_path: Path) -> None:
    cfg = compose_config(["method=pscl_simclr", "method.pretrain_epochs=1", "trainer.max_epochs=1",
                          "data.samples_per_epoch=4", *TINY_SYNTH], tmp_path / "run")
    train(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["method"] == "pscl_simclr" and written["transferred_keys"] > 0
    assert (tmp_path / "run" / "pretrain" / "pretrained.pt").is_file()


def test_too_many_patches_for_the_crop_is_a_clear_error() -> None:
    module = PSCLModule(UNet(1, 4, WIDTHS), num_classes=4, variant="moco", top_k=30)
    with pytest.raises(ConfigError, match="sampling.top_k.*32 px crop"):
        module.views((0.5,), (0.2,), 32)
    assert module.views((0.5,), (0.2,), 64) is not None


def test_method_level_keys_reach_the_module(tmp_path: Path) -> None:
    import hydra

    cfg = compose_config(["method=pscl_moco", "method.global_local_ratio=0.25", "method.temperature=0.3",
                          "method.queue_size=12", "method.momentum=0.5", "sampling.top_k=3", "sampling.guided=false"],
                         tmp_path / "run")
    module = hydra.utils.instantiate(cfg.method.pretrain, backbone=UNet(1, 4, WIDTHS), num_classes=4)
    hp = module.hparams
    assert (hp.variant, hp.global_local_ratio, hp.temperature, hp.queue_size, hp.momentum, hp.top_k, hp.guided) == (
        "moco", 0.25, 0.3, 12, 0.5, 3, False)
    assert module.image_queue.features.shape[0] == 12


def test_bad_ratio_from_the_command_line_is_a_clear_error(tmp_path: Path) -> None:
    cfg = compose_config(["method=pscl_simclr", "method.global_local_ratio=1.5", *TINY_SYNTH], tmp_path / "run")
    with pytest.raises(ConfigError, match="global_local_ratio"):
        train(cfg)


def test_recomputing_views_gives_the_same_loss_gradients_and_running_stats() -> None:
    grads, stats, losses = [], [], []
    for recompute in (False, True):
        torch.manual_seed(0)
        module = PSCLModule(UNet(1, 4, WIDTHS), num_classes=4, variant="simclr", top_k=2, recompute_views=recompute)
        module.log_losses = lambda values, batch_size: None
        torch.manual_seed(1)
        loss = module.training_step(make_batch(module), 0)
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append({k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None})
        stats.append({k: v.clone() for k, v in module.backbone.state_dict().items() if "running" in k or "tracked" in k})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-3, msg=name)
    for name in stats[0]:  # updated once per step, not again by the recomputation
        torch.testing.assert_close(stats[1][name], stats[0][name], msg=name)
