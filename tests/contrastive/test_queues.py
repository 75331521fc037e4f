"""FeatureQueue: ring order, validity, ages and checkpoint round trip."""

from __future__ import annotations

import io

import pytest
import torch

from pscl.contrastive.queues import FeatureQueue


class LoopQueue:
    """Reference: write rows one at a time, wrapping the pointer after each."""

    def __init__(self, size: int, dim: int) -> None:
        self.features = [[0.0] * dim for _ in range(size)]
        self.group = [-1] * size
        self.slot = [-1] * size
        self.step = [-1] * size
        self.written = [False] * size
        self.ptr = 0

    def enqueue(self, features: torch.Tensor, group: torch.Tensor, slot: torch.Tensor | None, step: int) -> None:
        for i in range(features.shape[0]):
            self.features[self.ptr] = features[i].tolist()
            self.group[self.ptr] = int(group[i])
            self.slot[self.ptr] = -1 if slot is None else int(slot[i])
            self.step[self.ptr] = step
            self.written[self.ptr] = True
            self.ptr = (self.ptr + 1) % len(self.group)


def _batch(n: int, dim: int, start: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows whose first feature is a running id, so ring order is easy to read."""
    ids = torch.arange(start, start + n, dtype=torch.float32)
    features = torch.stack([ids, -ids], dim=1)[:, :dim]
    return features, torch.arange(start, start + n) % 3, torch.arange(start, start + n) % 4


def test_empty_queue_has_no_valid_entries() -> None:
    queue = FeatureQueue(5, 2)
    assert not queue.valid.any()
    assert int(queue.ptr) == 0 and int(queue.filled) == 0
    assert (queue.group == -1).all() and (queue.slot == -1).all()


def test_pointer_wraps_and_contents_are_in_ring_order() -> None:
    queue = FeatureQueue(10, 2)
    for step in range(3):
        features, group, slot = _batch(4, 2, start=4 * step)
        queue.enqueue(features, group, slot, step=step)
    assert int(queue.ptr) == 2 and int(queue.filled) == 10
    assert queue.valid.all()
    # ids 0..11 written in order into 10 slots: 10, 11 overwrite positions 0, 1.
    assert queue.features[:, 0].tolist() == [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    assert queue.group.tolist() == [i % 3 for i in [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert queue.slot.tolist() == [i % 4 for i in [10, 11, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert queue.step.tolist() == [2, 2, 0, 0, 1, 1, 1, 1, 2, 2]


def test_valid_only_after_writing() -> None:
    queue = FeatureQueue(6, 2)
    features, group, slot = _batch(4, 2, start=0)
    queue.enqueue(features, group, slot, step=0)
    assert queue.valid.tolist() == [True] * 4 + [False] * 2
    queue.enqueue(*_batch(1, 2, start=4), step=1)
    assert queue.valid.tolist() == [True] * 5 + [False]


def test_age_counts_steps_since_enqueue() -> None:
    queue = FeatureQueue(4, 2)
    queue.enqueue(*_batch(2, 2, start=0), step=3)
    queue.enqueue(*_batch(2, 2, start=2), step=5)
    assert queue.age(5).tolist() == [2, 2, 0, 0]
    assert queue.age(torch.tensor(7)).tolist() == [4, 4, 2, 2]
    assert queue.age(5).dtype == torch.long


@pytest.mark.parametrize("sizes", [[3, 4, 3], [7], [12], [25, 3], [0, 9, 1, 10], [5, 5, 5]])
def test_matches_one_by_one_reference(sizes: list[int]) -> None:
    # Covers n larger than the free space, n == size and n > size (only the last `size` rows survive).
    size, dim = 10, 2
    queue, reference = FeatureQueue(size, dim, dtype=torch.float64), LoopQueue(size, dim)
    start = 0
    for step, n in enumerate(sizes):
        features, group, slot = _batch(n, dim, start)
        use_slot = slot if step % 2 == 0 else None
        queue.enqueue(features, group, use_slot, step=step)
        reference.enqueue(features, group, use_slot, step=step)
        start += n
        assert queue.features.tolist() == reference.features
        assert queue.group.tolist() == reference.group
        assert queue.slot.tolist() == reference.slot
        assert queue.step.tolist() == reference.step
        assert queue.valid.tolist() == reference.written
        assert int(queue.ptr) == reference.ptr
        assert int(queue.filled) == sum(reference.written)


def test_enqueue_detaches_and_casts() -> None:
    queue = FeatureQueue(4, 3)
    features = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    queue.enqueue(features * 2, torch.tensor([0, 1], dtype=torch.int32), None, step=0)
    assert not queue.features.requires_grad
    assert queue.features.dtype == torch.get_default_dtype()
    assert queue.group.dtype == torch.long and queue.group[:2].tolist() == [0, 1]
    torch.testing.assert_close(queue.features[:2], (features * 2).detach().float())


def test_enqueue_rejects_wrong_shapes() -> None:
    queue = FeatureQueue(4, 3)
    with pytest.raises(ValueError):
        queue.enqueue(torch.randn(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError):
        queue.enqueue(torch.randn(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        queue.enqueue(torch.randn(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(1, dtype=torch.long))


def test_state_dict_round_trip_restores_everything() -> None:
    queue = FeatureQueue(10, 2)
    for step in range(3):
        queue.enqueue(*_batch(4, 2, start=4 * step), step=step)
    partial = FeatureQueue(10, 2)
    partial.enqueue(*_batch(3, 2, start=0), step=0)  # filled < size must survive too

    for source in (queue, partial):
        assert set(source.state_dict()) == {"features", "group", "slot", "step", "ptr", "filled"}
        buffer = io.BytesIO()
        torch.save(source.state_dict(), buffer)
        buffer.seek(0)
        fresh = FeatureQueue(10, 2)
        fresh.load_state_dict(torch.load(buffer))
        for name in ("features", "group", "slot", "step", "ptr", "filled"):
            assert torch.equal(getattr(fresh, name), getattr(source, name)), name
        assert torch.equal(fresh.valid, source.valid)
        # The restored queue continues exactly where the original would.
        nxt = _batch(3, 2, start=100)
        fresh.enqueue(*nxt, step=9)
        source.enqueue(*nxt, step=9)
        assert torch.equal(fresh.features, source.features) and int(fresh.ptr) == int(source.ptr)


def test_queue_moves_with_module_and_rejects_bad_sizes() -> None:
    queue = FeatureQueue(3, 2).to(torch.float64)
    assert queue.features.dtype == torch.float64
    assert queue.ptr.dtype == torch.long  # module.to(dtype) leaves integer buffers alone
    with pytest.raises(ValueError):
        FeatureQueue(0, 2)
