"""One scale's patch sampling for a batch: pairs are corresponding cells, slots follow the labels."""

from __future__ import annotations

import torch

from pscl.contrastive.correspondence import batch_correspondence
from pscl.contrastive.patches import gather_rows, sample_patches


def _encoded_map(batch: int, grid: int, dims: int, channels_last: bool) -> torch.Tensor:
    """Features whose first two channels hold (image, cell index); the rest random."""
    feats = torch.randn(batch, dims, grid, grid)
    feats[:, 0] = torch.arange(batch, dtype=torch.float32)[:, None, None]
    feats[:, 1] = torch.arange(grid * grid, dtype=torch.float32).view(grid, grid)
    return feats.contiguous(memory_format=torch.channels_last) if channels_last else feats


def test_pairs_are_corresponding_cells_and_slots_follow_the_mask() -> None:
    torch.manual_seed(0)
    batch, size, stride, classes, k = 4, 64, 4, 3, 5
    grid = size // stride
    flip = torch.tensor([False, True, False, True])
    rot_k = torch.tensor([0, 1, 2, 3])
    crop = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.05, 0.8, 0.9], [0.15, 0.2, 0.85, 0.8], [0.0, 0.1, 0.9, 0.85]])
    crop = (crop * size).round() / size  # whole pixels, as the views draw them
    mask = torch.zeros(size, size, dtype=torch.long)
    mask[:, size // 3:] = 1
    mask[size // 2:, 2 * size // 3:] = 2
    for channels_last in (False, True):
        query_map = _encoded_map(batch, grid, 8, channels_last)
        key_map = _encoded_map(batch, grid, 8, channels_last)
        out = sample_patches(key_map, flip, rot_k, crop, mask, classes, k)
        query = gather_rows(query_map, out.image, out.query_cell)
        key = gather_rows(key_map, out.image, out.key_cell)
        assert query.shape == (batch * classes * k, 8) and key.shape == query.shape
        assert torch.equal(out.slots, torch.arange(classes * k).div(k, rounding_mode="floor").repeat(batch))
        assert torch.equal(query[:, 0].long(), out.image) and torch.equal(key[:, 0].long(), out.image)
        pairs = batch_correspondence(flip, rot_k, crop, grid, image_size=size)
        for row in range(query.shape[0]):
            b = int(out.image[row])
            qidx, kidx = pairs[b]
            q_cell, k_cell = int(query[row, 1]), int(key[row, 1])
            position = (qidx == q_cell).nonzero().flatten()
            assert len(position) == 1 and int(kidx[position[0]]) == k_cell  # same physical place
        for b in range(batch):  # no cell twice within an image
            cells = query[out.image == b, 1]
            assert cells.unique().numel() == cells.numel()
        # annotated image: each slot's cells lie on that class (every class has >= k cells)
        coarse = mask[stride // 2::stride, stride // 2::stride].flatten()
        rows0 = (out.image == 0).nonzero().flatten()
        for row in rows0:
            assert int(coarse[int(query[row, 1])]) == int(out.slots[row])


def test_dense_head_on_rows_equals_head_on_maps() -> None:
    from pscl.models.heads import DenseProjectionHead

    torch.manual_seed(0)
    head = DenseProjectionHead(16, 128, 64, 4)
    feature_map = torch.randn(2, 16, 6, 5)
    image, cells = torch.tensor([0, 1, 1]), torch.tensor([0, 7, 29])
    full = gather_rows(head(feature_map), image, cells)
    torch.testing.assert_close(head.forward_rows(gather_rows(feature_map, image, cells)), full)
