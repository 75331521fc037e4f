"""Baselines (SimCLR, MoCo v2, BYOL, DenseCL): losses against loop references, correspondence,
EMA, the pipeline per method, and reuse of label-free pretraining across rounds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import compose_config
from pscl.contrastive.info_nce import queue_info_nce
from pscl.data.independent_views import TwoAugmentedViews
from pscl.errors import ConfigError
from pscl.models.unet import UNet
from pscl.modules.byol import BYOLModule
from pscl.modules.densecl import DenseCLModule, grid_rows
from pscl.modules.moco import MoCoModule
from pscl.modules.simclr import SimCLRModule
from pscl.training.pipeline import train

WIDTHS = (8, 16, 32, 64)
TINY_SYNTH = ["data.synthetic.counts=[2,2,2]", "data.synthetic.size=96", "data.crop_size=64",
              "data.unlabeled_batch_size=3", "backbone=unet_small", "backbone.widths=[8,16,32,64]", "logger=csv"]
METHODS = ["simclr", "moco", "byol", "densecl"]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def reference_info_nce(q, k, bank, t, valid=None) -> float:
    """Plain loops: -log( e^{cos(q,k)/t} / (e^{cos(q,k)/t} + sum_valid e^{cos(q,b)/t}) ), averaged."""
    total = 0.0
    for n in range(q.shape[0]):
        pos = math.exp(_cos(q[n], k[n]) / t)
        neg = sum(math.exp(_cos(q[n], bank[j]) / t) for j in range(bank.shape[0]) if valid is None or valid[j])
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


def batch_of(x0: torch.Tensor, x1: torch.Tensor) -> dict:
    return {"unlabeled": {"x0": x0, "x1": x1, "group": torch.zeros(x0.shape[0], dtype=torch.long)}}


def test_queue_info_nce_matches_loops() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, bank = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g), torch.randn(9, 7, generator=g)
    valid = torch.tensor([True] * 6 + [False] * 3)
    assert float(queue_info_nce(q, k, bank, 0.2)) == pytest.approx(reference_info_nce(q, k, bank, 0.2), rel=1e-5)
    got = float(queue_info_nce(q, k, bank, 0.3, valid))
    assert got == pytest.approx(reference_info_nce(q, k, bank, 0.3, valid), rel=1e-5)
    # the invalid rows really are ignored: changing them changes nothing
    bank2 = bank.clone()
    bank2[6:] = 100.0
    assert float(queue_info_nce(q, k, bank2, 0.3, valid)) == pytest.approx(got, rel=1e-6)


def test_simclr_loss_matches_loops() -> None:
    torch.manual_seed(0)
    module = SimCLRModule(UNet(1, 4, WIDTHS), temperature=0.5, gather_distributed=False)
    module.log_losses = lambda values, batch_size: None
    x0, x1 = torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32)
    loss = float(module.training_step(batch_of(x0, x1), 0).detach())
    with torch.no_grad():
        z = torch.cat([module.embed(x0), module.embed(x1)])
    n, t, total = 4, 0.5, 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = sum(math.exp(_cos(z[i], z[m]) / t) for m in range(2 * n) if m != i)
        total += -math.log(math.exp(_cos(z[i], z[j]) / t) / others)
    assert loss == pytest.approx(total / (2 * n), rel=1e-4)


def test_moco_loss_ema_and_queue() -> None:
    torch.manual_seed(0)
    module = MoCoModule(UNet(1, 4, WIDTHS), temperature=0.2, queue_size=6, momentum=0.9, gather_distributed=False)
    module.log_losses = lambda values, batch_size: None
    with torch.no_grad():  # make the key network differ from the query network so the EMA is visible
        for p in module.backbone_momentum.parameters():
            p.add_(0.3)
    query_before = {k: v.clone() for k, v in module.backbone.named_parameters()}
    key_before = {k: v.clone() for k, v in module.backbone_momentum.named_parameters()}
    module.queue.enqueue(F.normalize(torch.randn(2, 128), dim=1), torch.zeros(2, dtype=torch.long))
    bank, valid = module.queue.features.clone(), module.queue.valid.clone()
    x0, x1 = torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32)
    loss = float(module.training_step(batch_of(x0, x1), 0).detach())
    for name, key in module.backbone_momentum.named_parameters():
        torch.testing.assert_close(key, 0.9 * key_before[name] + 0.1 * query_before[name])
    with torch.no_grad():
        q = module.projection(module.encode(x0).mean(dim=(2, 3)))
        k = module.projection_momentum(module.backbone_momentum.forward_bottleneck(x1).mean(dim=(2, 3)))
    assert loss == pytest.approx(reference_info_nce(q, k, bank, 0.2, valid), rel=1e-4)
    # the 4 keys were enqueued after the 2 earlier entries: 6 written, pointer wrapped to 0
    assert int(module.queue.filled) == 6 and int(module.queue.ptr) == 0
    torch.testing.assert_close(module.queue.features[2:6], F.normalize(k, dim=1))
    fresh = MoCoModule(UNet(1, 4, WIDTHS), queue_size=6)
    fresh.load_state_dict(module.state_dict())
    assert torch.equal(fresh.queue.features, module.queue.features) and int(fresh.queue.filled) == 6


def test_byol_loss_matches_loops_and_has_no_gradient_into_the_target() -> None:
    torch.manual_seed(0)
    module = BYOLModule(UNet(1, 4, WIDTHS), momentum=0.99)
    module.log_losses = lambda values, batch_size: None
    x0, x1 = torch.randn(4, 1, 32, 32), torch.randn(4, 1, 32, 32)
    loss = module.training_step(batch_of(x0, x1), 0)
    loss.backward()
    assert all(p.grad is None for p in module.backbone_momentum.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.prediction.parameters())
    with torch.no_grad():
        p0, p1 = module._online(x0), module._online(x1)
        z0, z1 = module._target(x0), module._target(x1)
    expected = 0.5 * (-np.mean([_cos(p0[i], z1[i]) for i in range(4)]) - np.mean([_cos(p1[i], z0[i]) for i in range(4)]))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)


def test_byol_momentum_rises_to_one_on_a_cosine_schedule() -> None:
    from types import SimpleNamespace

    module = BYOLModule(UNet(1, 4, WIDTHS), momentum=0.99)
    assert module.current_momentum() == pytest.approx(0.99)  # no trainer: the base value
    values = []
    for step in (0, 50, 100):
        module._trainer = SimpleNamespace(global_step=step, estimated_stepping_batches=100)
        values.append(module.current_momentum())
    module._trainer = None
    # BYOL's tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2 (lightly counts K as steps - 1)
    assert values[0] == pytest.approx(0.99) and values[2] == pytest.approx(1.0)
    assert values[1] == pytest.approx(1 - 0.01 * (math.cos(math.pi * 50 / 99) + 1) / 2, abs=1e-9)


def test_densecl_positives_are_the_argmax_of_backbone_similarity() -> None:
    """Planted features: the key grid is a shuffled, noisy copy of the query grid."""
    from lightly.models.utils import select_most_similar

    g = torch.Generator().manual_seed(0)
    query = torch.randn(2, 16, 6, 6, generator=g)
    perm = torch.randperm(36, generator=g)
    key = grid_rows(query)[:, perm] + 0.01 * torch.randn(2, 36, 16, generator=g)  # key cell j = query cell perm[j]
    values = torch.arange(36, dtype=torch.float32)[None, :, None].expand(2, 36, 1)  # each key cell's own index
    picked = select_most_similar(grid_rows(query), key, values)[..., 0].long()  # (2, 36) key cell per query cell
    # query cell i must find the key cell j with perm[j] == i
    inverse = torch.argsort(perm)
    assert torch.equal(picked, inverse.expand(2, 36))


def test_densecl_loss_matches_loops() -> None:
    torch.manual_seed(0)
    module = DenseCLModule(UNet(1, 4, WIDTHS), temperature=0.2, queue_size=8, momentum=0.9, dense_weight=0.5,
                           gather_distributed=False)
    module.log_losses = lambda values, batch_size: None
    for queue in (module.queue, module.dense_queue):
        queue.enqueue(F.normalize(torch.randn(3, 128), dim=1), torch.zeros(3, dtype=torch.long))
    banks = [(q.features.clone(), q.valid.clone()) for q in (module.queue, module.dense_queue)]
    x0, x1 = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    loss = float(module.training_step(batch_of(x0, x1), 0).detach())
    with torch.no_grad():
        grid_q = module.encode(x0)
        grid_k = module.backbone_momentum.forward_bottleneck(x1)
        q = module.projection(grid_q.mean(dim=(2, 3)))
        k = module.projection_momentum(grid_k.mean(dim=(2, 3)))
        q_dense = module.dense_projection(grid_rows(grid_q))
        k_dense = module.dense_projection_momentum(grid_rows(grid_k))
    rows_q, rows_k = grid_rows(grid_q), grid_rows(grid_k)
    queries, positives = [], []
    for b in range(2):
        for i in range(rows_q.shape[1]):
            sims = [_cos(rows_q[b, i], rows_k[b, j]) for j in range(rows_k.shape[1])]
            queries.append(q_dense[b, i])
            positives.append(k_dense[b, int(np.argmax(sims))])
    dense = reference_info_nce(torch.stack(queries), torch.stack(positives), *banks[1][:1], 0.2, banks[1][1])
    global_ = reference_info_nce(q, k, banks[0][0], 0.2, banks[0][1])
    assert loss == pytest.approx(0.5 * global_ + 0.5 * dense, rel=1e-4)
    assert int(module.dense_queue.filled) == 5  # 3 earlier + one pooled vector per image


def test_image_level_methods_train_the_encoder_only() -> None:
    """The decoder is not run, so it gets no gradient and keeps its BatchNorm statistics."""
    torch.manual_seed(0)
    module = SimCLRModule(UNet(1, 4, WIDTHS), gather_distributed=False)
    module.log_losses = lambda values, batch_size: None
    stats = {k: v.clone() for k, v in module.backbone.decoder.state_dict().items()}
    module.training_step(batch_of(torch.randn(3, 1, 32, 32), torch.randn(3, 1, 32, 32)), 0).backward()
    assert all(p.grad is None for p in module.backbone.decoder.parameters())
    assert all(p.grad is not None for p in module.backbone.encoder.parameters())
    assert all(torch.equal(v, stats[k]) for k, v in module.backbone.decoder.state_dict().items())
    # frozen, so the optimiser (and DDP) never wait for them
    optimised = {id(p) for group in module.configure_optimizers().param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in [*module.backbone.decoder.parameters(),
                                                 *module.backbone.classifier.parameters()])
    assert all(id(p) in optimised for p in module.backbone.encoder.parameters())


def test_two_augmented_views_are_seeded_and_differ() -> None:
    image = np.random.default_rng(0).random((80, 90, 1)).astype(np.float32)
    views = TwoAugmentedViews(48, (0.5,), (0.25,), seed=3)
    a = views(image)
    assert a["x0"].shape == (1, 48, 48) and a["x1"].shape == (1, 48, 48)
    assert not torch.equal(a["x0"], a["x1"])
    b = TwoAugmentedViews(48, (0.5,), (0.25,), seed=3)(image)
    assert torch.equal(a["x0"], b["x0"]) and torch.equal(a["x1"], b["x1"])
    whole = TwoAugmentedViews(None, (0.5,), (0.25,), seed=1)(image)  # whole images: the shorter side
    assert whole["x0"].shape == (1, 80, 80)
    with pytest.raises(ValueError, match="crop size"):
        TwoAugmentedViews(4, (0.5,), (0.25,))


@pytest.mark.parametrize("method", METHODS)
def test_fast_dev_run_pretrain_finetune_test(method: str, tmp_path: Path) -> None:
    cfg = compose_config([f"method={method}", "debug=fast_dev_run", *TINY_SYNTH], tmp_path / "run")
    results = train(cfg)
    assert results["transferred_keys"] == len(UNet(1, 4, WIDTHS).transferable_state_dict())
    assert 0.0 <= results["test"]["dice"] <= 1.0


@pytest.mark.parametrize(("key", "value"), [("method.temperature", 0), ("method.queue_size", 0),
                                            ("method.dense_weight", 1.5)])
def test_bad_values_are_clear_errors(key: str, value, tmp_path: Path) -> None:
    cfg = compose_config(["method=densecl", f"{key}={value}", *TINY_SYNTH], tmp_path / "run")
    with pytest.raises(ConfigError, match=key):
        train(cfg)


def test_label_free_pretraining_is_reused_across_rounds(tmp_path: Path) -> None:
    """Round 2 loads round 1's pretraining (same config) and fine-tunes from identical weights;
    a changed pretraining config pretrains again; PSCL, whose sampling uses the annotated image,
    does not reuse another round's pretraining (tests/training/test_study.py: it does reuse its own round's)."""
    short = ["method.pretrain_epochs=1", "trainer.max_epochs=1", "data.samples_per_epoch=2", "data.batch_size=2",
             *TINY_SYNTH]

    def run(name: str, *extra: str) -> dict:
        return train(compose_config(["method=moco", *short, *extra], tmp_path / name))

    first = run("round0", "data.label_seed=0")
    second = run("round1", "data.label_seed=1")
    third = run("again0", "data.label_seed=0")
    changed = run("changed", "data.label_seed=0", "method.temperature=0.3")
    assert first["pretraining"]["reused"] is False and (tmp_path / "round0" / "pretrain" / "pretrained.pt").is_file()
    assert second["pretraining"]["reused"] is True and second["pretraining"]["key"] == first["pretraining"]["key"]
    assert not (tmp_path / "round1" / "pretrain").exists()
    # reusing changes nothing downstream: the same round gives the same test metrics
    assert third["pretraining"]["reused"] is True
    assert third["test"]["dice"] == pytest.approx(first["test"]["dice"], abs=1e-6)
    assert changed["pretraining"]["reused"] is False and changed["pretraining"]["key"] != first["pretraining"]["key"]
    written = json.loads((tmp_path / "round1" / "metrics.json").read_text())
    assert written["pretraining"]["reused"] is True

    pscl = [train(compose_config(["method=pscl_simclr", *short, f"data.label_seed={i}"], tmp_path / f"pscl{i}"))
            for i in range(2)]
    assert all(r["pretraining"]["reused"] is False for r in pscl)
