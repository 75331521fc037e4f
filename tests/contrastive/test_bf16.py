"""PSCL in bf16 autocast on the CPU (``trainer.precision=bf16-mixed``) against fp32.

bf16 changes which cells the sampling picks: the similarity matching runs on bf16-rounded
decoder features (measured: 25-70 % of the cells differ at a random initialisation; documented
in docs/performance.md). With the cells held fixed, the loss and the gradients must agree
within bf16's precision.

The similarities of the matching and the losses are computed in float32 on upcast features also
under autocast (autocast is switched off for them, pscl.contrastive.precision); the tests below
check the dtypes, that the bf16 path equals the float32 computation on the upcast inputs, and
that a PSCL-SimCLR and a PSCL-MoCo step in bf16 give a finite loss with float32 queues.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import WIDTHS, make_batch
from pscl.contrastive import info_nce, matching, sampling
from pscl.contrastive.queues import FeatureQueue
from pscl.models.unet import UNet
from pscl.modules.pscl import PSCLModule

BF16 = torch.bfloat16


def _step(bf16: bool, cells: list | None = None) -> tuple[float, torch.Tensor, list]:
    """Loss, flat gradient and the sampled cells of one step (``cells``: reuse these instead)."""
    torch.manual_seed(0)
    module = PSCLModule(UNet(1, 4, WIDTHS), num_classes=4, variant="simclr", top_k=2)
    module.log_losses = lambda values, batch_size: None
    sampled: list = []
    sample = module._sample

    def record(scale: int, match_map: torch.Tensor, views: dict) -> object:
        sampled.append(cells[scale] if cells is not None else sample(scale, match_map, views))
        return sampled[-1]

    module._sample = record
    torch.manual_seed(1)
    batch = make_batch(module)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = module.training_step(batch, 0)
    loss.backward()
    gradient = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
    return float(loss.detach()), gradient, sampled


def test_bf16_changes_the_sampled_cells() -> None:
    _, _, fp32_cells = _step(False)
    _, _, bf16_cells = _step(True)
    assert len(fp32_cells) == len(bf16_cells) == 3
    agree = [float((a.query_cell == b.query_cell).float().mean()) for a, b in zip(fp32_cells, bf16_cells)]
    assert min(agree) < 1.0  # documented: the matching sees bf16-rounded features


def test_with_the_same_cells_bf16_loss_and_gradients_are_within_tolerance() -> None:
    loss32, grad32, cells = _step(False)
    loss16, grad16, _ = _step(True, cells)
    # measured on 2026-11-28: loss 4e-5 apart (relative), gradient cosine 0.968, relative
    # difference of the gradient 0.26; the tolerances below leave a margin for other CPUs
    assert loss16 == pytest.approx(loss32, rel=1e-3)
    cosine = torch.nn.functional.cosine_similarity(grad32, grad16, dim=0)
    assert float(cosine) > 0.95
    assert float((grad16 - grad32).norm() / grad32.norm()) < 0.35


# ---------------------------------------------------------------------------- fp32 matching

def _record_similarity_dtypes(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """Record the dtype of every similarity matrix the greedy matcher receives (one image or several:
    every matching goes through ``matching.greedy_match_batched``) and of every product computed for it
    (the batched path copies the products into a float32 matrix, which would hide bf16 products)."""
    seen: list[torch.dtype] = []
    batched, product = matching.greedy_match_batched, sampling._cells_major_similarity

    def record_product(unit_templates: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        sim = product(unit_templates, candidates)
        seen.append(sim.dtype)
        return sim

    def record_batched(sim: torch.Tensor, valid: torch.Tensor, list_size: int) -> torch.Tensor:
        seen.append(sim.dtype)
        return batched(sim, valid, list_size)

    monkeypatch.setattr(sampling, "_cells_major_similarity", record_product)
    monkeypatch.setattr(matching, "greedy_match_batched", record_batched)
    return seen


def _features(rows: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, dim, generator=generator).to(BF16)


def test_autocast_would_make_the_product_bf16() -> None:
    """The premise: under CPU autocast a float32 matrix product comes out in bf16."""
    a = torch.randn(5, 8)
    with torch.autocast("cpu", dtype=BF16):
        assert (a @ a.T).dtype == BF16


@pytest.mark.parametrize("batched", [True, False])
def test_matching_under_bf16_autocast_uses_float32_similarities(batched: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if not batched:  # force the one-image-after-another path (large problems on the CPU)
        monkeypatch.setattr(sampling, "_CPU_BATCHED_MAX", 0)
    seen = _record_similarity_dtypes(monkeypatch)
    templates = _features(24, 16, 0)
    candidates = [_features(n, 16, 1 + n) for n in (300, 257, 410)]
    with torch.autocast("cpu", dtype=BF16):
        unit = sampling._unit_rows(templates)
        sim = sampling._cells_major_similarity(unit, candidates[0])
        seen.clear()
        under_autocast = sampling.similarity_guided_sample_batch(templates, candidates)
        single = sampling.similarity_guided_sample(templates, candidates[1])
    assert sim.dtype == torch.float32
    assert seen and all(dtype == torch.float32 for dtype in seen)
    # three products, then one batched matching or three single ones; the single call: product, matching
    assert len(seen) == (4 if batched else 6) + 2
    # exactly the float32 matching of the upcast features, computed without autocast
    reference = sampling.similarity_guided_sample_batch(templates.float(), [c.float() for c in candidates])
    assert all(torch.equal(a, b) for a, b in zip(under_autocast, reference))
    assert torch.equal(single, reference[1])
    assert torch.equal(sim, sampling._cells_major_similarity(sampling._unit_rows(templates.float()),
                                                             candidates[0].float()))


def test_losses_under_bf16_autocast_equal_float32_losses_of_upcast_inputs() -> None:
    q, k = _features(12, 8, 0).requires_grad_(), _features(12, 8, 1)
    bank = torch.randn(20, 8)
    slots = torch.arange(12) % 3
    targets = torch.rand(12, 20)
    valid = torch.arange(20) < 15
    keys = _features(2 * 3 * 4, 8, 2).view(2, 3, 4, 8)
    weights = torch.rand(3, 4)

    def all_losses(q: torch.Tensor, k: torch.Tensor, keys: torch.Tensor) -> list[torch.Tensor]:
        return [info_nce.nt_xent(q, k), info_nce.class_masked_nt_xent(q, k, slots),
                info_nce.soft_contrastive_loss(q, k, bank, targets, bank_valid=valid),
                info_nce.queue_info_nce(q, k, bank, bank_valid=valid), info_nce.class_prototypes(keys, weights)]

    with torch.autocast("cpu", dtype=BF16):
        under_autocast = all_losses(q, k, keys)
    reference = all_losses(q.detach().float(), k.float(), keys.float())
    for got, expected in zip(under_autocast, reference):
        assert got.dtype == torch.float32
        assert torch.equal(got.detach(), expected)
    under_autocast[2].backward()  # the gradient reaches the bf16 input
    assert q.grad is not None and q.grad.dtype == BF16 and bool(torch.isfinite(q.grad).all())


def test_a_bf16_key_enqueued_into_a_float32_queue_is_cast() -> None:
    queue = FeatureQueue(6, 8)
    with torch.autocast("cpu", dtype=BF16):
        queue.enqueue(_features(4, 8, 0), torch.zeros(4, dtype=torch.long), None, step=1)
    assert queue.features.dtype == torch.float32
    assert torch.equal(queue.features[:4], _features(4, 8, 0).float())


# ---------------------------------------------------------------------------- whole steps

@pytest.mark.parametrize("variant", ["simclr", "moco"])
def test_one_bf16_pscl_step_on_the_cpu_is_finite(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record_similarity_dtypes(monkeypatch)
    torch.manual_seed(0)
    module = PSCLModule(UNet(1, 4, WIDTHS), num_classes=4, variant=variant, top_k=2, queue_size=16)
    logged: dict = {}
    module.log_losses = lambda values, batch_size: logged.update(values)
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    batch = make_batch(module)
    # MoCo: the second step meets a filled queue (the first one's loss against an empty queue is 0)
    for step in range(2 if variant == "moco" else 1):
        with torch.autocast("cpu", dtype=BF16):
            loss = module.training_step(batch, step)
        assert loss.dtype == torch.float32 and math.isfinite(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
        optimizer.step()
    assert all(value.dtype == torch.float32 for name, value in logged.items() if "loss" in name)
    assert float(logged["patch_loss"].detach()) > 0 and float(logged["image_loss"].detach()) > 0
    steps, images = (2 if variant == "moco" else 1), 3  # make_batch: 3 unlabelled images
    assert len(seen) == steps * len(module.scales) * (images + 1)  # batched: 3 products, one matching
    assert all(dtype == torch.float32 for dtype in seen)  # the matching got float32 similarities
    if variant == "moco":
        for queue in (module.image_queue, *module.prototype_queues):
            assert queue.features.dtype == torch.float32
            assert int(queue.filled) > 0 and bool(torch.isfinite(queue.features).all())


def test_make_bench_times_the_quick_configuration_in_bf16_too() -> None:
    import sys
    from pathlib import Path

    benchmarks = str(Path(__file__).resolve().parents[2] / "benchmarks")
    sys.path.insert(0, benchmarks)
    try:
        import pretrain_step
    finally:
        sys.path.remove(benchmarks)
    assert pretrain_step.precisions_of("quick", None) == ["fp32", "bf16"]
    assert pretrain_step.precisions_of("paper", None) == ["fp32"]
    assert pretrain_step.precisions_of("paper", "fp32,bf16") == ["fp32", "bf16"]
    assert pretrain_step.precisions_of("quick", "fp32") == ["fp32"]
