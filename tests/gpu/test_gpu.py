"""On a CUDA GPU, pscl computes what it computes on the CPU (``pytest -m gpu``; skipped without CUDA).

Run by ``make gpu-check`` (benchmarks/gpu_check.py) on a machine with an NVIDIA GPU.
``PSCL_GPU_TEST_DEVICE=cpu`` runs the same code paths against the CPU (a check of the tests
themselves on a machine without a GPU).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from conftest import compose_config

CUDA = torch.device(os.environ.get("PSCL_GPU_TEST_DEVICE", "cuda"))
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU (make gpu-check)")]
METHODS = ("supervised", "simclr", "moco", "byol", "densecl", "pscl_simclr", "pscl_moco")


def test_correspondence_is_the_same_on_cuda() -> None:
    from pscl.contrastive.correspondence import batch_correspondence

    generator = torch.Generator().manual_seed(0)
    flip = torch.rand(16, generator=generator) > 0.5
    rot_k = torch.randint(0, 4, (16,), generator=generator)
    sizes = torch.rand(16, 1, generator=generator) * 0.5 + 0.5
    corners = torch.rand(16, 2, generator=generator) * (1 - sizes)
    crop = torch.cat([corners, sizes, sizes], dim=1)
    on_cpu = batch_correspondence(flip, rot_k, crop, 32, 128)
    on_gpu = batch_correspondence(flip.to(CUDA), rot_k.to(CUDA), crop.to(CUDA), 32, 128)
    for (q0, k0), (q1, k1) in zip(on_cpu, on_gpu):
        assert q1.device.type == CUDA.type and torch.equal(q0, q1.cpu()) and torch.equal(k0, k1.cpu())


def test_label_guided_sampling_is_the_same_on_cuda() -> None:
    from pscl.contrastive.sampling import label_guided_sample

    scores = torch.rand(400, 4, generator=torch.Generator().manual_seed(1))
    sel0, val0 = label_guided_sample(scores, 8, torch.Generator().manual_seed(2))
    sel1, val1 = label_guided_sample(scores.to(CUDA), 8, torch.Generator().manual_seed(2))
    assert torch.equal(sel0, sel1.cpu()) and torch.allclose(val0, val1.cpu())


def test_similarity_matching_is_the_same_on_cuda() -> None:
    from pscl.contrastive.sampling import similarity_guided_sample_batch

    generator = torch.Generator().manual_seed(3)
    templates = torch.randn(24, 32, generator=generator)
    # planted: every template has one clearly most similar cell in each image
    candidates = []
    for size in (300, 420):
        cells = torch.randn(size, 32, generator=generator) * 0.05
        cells[torch.randperm(size, generator=generator)[:24]] += templates
        candidates.append(cells)
    on_cpu = similarity_guided_sample_batch(templates, candidates)
    on_gpu = similarity_guided_sample_batch(templates.to(CUDA), [c.to(CUDA) for c in candidates])
    for a, b in zip(on_cpu, on_gpu):
        assert torch.equal(a, b.cpu())


def test_losses_and_queues_are_the_same_on_cuda() -> None:
    from pscl.contrastive.info_nce import nt_xent
    from pscl.contrastive.queues import FeatureQueue

    generator = torch.Generator().manual_seed(4)
    z0, z1 = torch.randn(8, 64, generator=generator), torch.randn(8, 64, generator=generator)
    assert torch.allclose(nt_xent(z0, z1), nt_xent(z0.to(CUDA), z1.to(CUDA)).cpu(), atol=1e-5)
    queues = [FeatureQueue(16, 64), FeatureQueue(16, 64).to(CUDA)]
    for step in range(3):
        batch = torch.randn(6, 64, generator=generator)
        for queue in queues:
            queue.enqueue(batch.to(queue.features.device), step=step)
    assert torch.equal(queues[0].features, queues[1].features.cpu())
    assert torch.equal(queues[0].valid, queues[1].valid.cpu())


@pytest.mark.parametrize("method", METHODS)
def test_fast_dev_run_of_every_method_on_the_gpu(method: str, tmp_path: Path) -> None:
    from pscl.training.pipeline import train

    trainer = "trainer=gpu" if CUDA.type == "cuda" else "trainer=cpu"
    overrides = [f"method={method}", trainer, "debug=fast_dev_run", "data.synthetic.counts=[4,4,4]",
                 "data.synthetic.size=96", "data.crop_size=64", "backbone=unet_small", "logger=csv"]
    results = train(compose_config(overrides, tmp_path / "run"))
    assert 0.0 <= results["test"]["dice"] <= 1.0
