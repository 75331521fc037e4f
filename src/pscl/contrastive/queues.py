"""Ring-buffer feature queues for PSCL-MoCo (spec 5.3): image keys and class prototypes.

All state lives in persistent buffers, so a Lightning checkpoint restores the queue together with its
bookkeeping (the authors kept groups and recency tags outside the state dict, spec 11.6). Gathering keys
across DDP ranks is the caller's business: ``enqueue`` receives the already gathered tensors, identical on
every rank, so the queues stay identical too.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FeatureQueue"]


class FeatureQueue(nn.Module):
    """A ring buffer of ``size`` feature vectors of dimension ``dim`` with per-entry metadata.

    Buffers (all persistent):
        features (size, dim) float; group (size,) long, -1 = unknown; slot (size,) long, -1 = none;
        step (size,) long, the training step the entry was written at (-1 before);
        ptr () long, next write position; filled () long, number of written entries (<= size).

    Entries never written are not valid (``valid`` is False there). Fix (spec 11.6): the authors start
    from random vectors and use them as negatives right away. Because writing starts at index 0 and is
    contiguous, the written entries are always indices ``0 .. filled - 1``.
    """

    features: Tensor
    group: Tensor
    slot: Tensor
    step: Tensor
    ptr: Tensor
    filled: Tensor

    def __init__(self, size: int, dim: int, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"FeatureQueue needs size > 0 and dim > 0, got size={size}, dim={dim}")
        self.size = int(size)
        self.dim = int(dim)
        self.register_buffer("features", torch.zeros(self.size, self.dim, dtype=dtype or torch.get_default_dtype()))
        self.register_buffer("group", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("slot", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("step", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def valid(self) -> Tensor:
        """(size,) bool: True for entries that have been written at least once."""
        return torch.arange(self.size, device=self.filled.device) < self.filled

    def age(self, step: int | Tensor) -> Tensor:
        """(size,) long: ``step - entry step`` (meaningless for invalid entries; mask with ``valid``)."""
        return torch.as_tensor(step, dtype=torch.long, device=self.step.device) - self.step

    @torch.no_grad()
    def enqueue(self, features: Tensor, group: Tensor | None = None, slot: Tensor | None = None,
                step: int | Tensor = 0) -> None:
        """Write ``features`` (n, dim) with ``group`` (n,) and ``slot`` (n,) (each None -> -1) at ``ptr``.

        Equivalent to writing the n rows one by one with wrap-around: when n exceeds the free space the
        oldest entries are overwritten, and when n > size only the last ``size`` rows survive (at the
        positions a one-by-one write would leave them). ``ptr`` advances by n modulo size. Detached.
        """
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be (n, {self.dim}), got {tuple(features.shape)}")
        n = features.shape[0]
        if group is not None and group.shape != (n,):
            raise ValueError(f"group must be ({n},), got {tuple(group.shape)}")
        if slot is not None and slot.shape != (n,):
            raise ValueError(f"slot must be ({n},), got {tuple(slot.shape)}")
        if n == 0:
            return
        device = self.features.device
        if group is None:
            group = torch.full((n,), -1, dtype=torch.long, device=device)
        if slot is None:
            slot = torch.full((n,), -1, dtype=torch.long, device=device)

        kept = min(n, self.size)
        ptr = int(self.ptr)
        # Rows dropped when n > size are exactly those a one-by-one write would overwrite later.
        start = ptr + n - kept
        index = (start + torch.arange(kept, device=device)) % self.size
        self.features[index] = features[n - kept :].detach().to(device=device, dtype=self.features.dtype)
        self.group[index] = group[n - kept :].detach().to(device=device, dtype=torch.long)
        self.slot[index] = slot[n - kept :].detach().to(device=device, dtype=torch.long)
        self.step[index] = torch.as_tensor(step, dtype=torch.long, device=device)
        self.ptr.fill_((ptr + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
