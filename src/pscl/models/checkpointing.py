"""Activation checkpointing that leaves BatchNorm's running statistics as a plain forward would.

:func:`torch.utils.checkpoint.checkpoint` runs a block's forward again in the backward pass; in
training mode every BatchNorm inside would then update its running mean and variance a second
time. :func:`checkpoint_block` restores them after the recomputation, so a checkpointed model
ends a step with exactly the statistics, outputs and gradients of an uncheckpointed one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

CHECKPOINT_CHOICES = ("none", "full_resolution", "high_resolution", "all")
# the coarsest output level (0 = 1/1, 1 = 1/2, ...) whose blocks each choice recomputes
_DEEPEST_LEVEL = {"none": -1, "full_resolution": 0, "high_resolution": 1, "all": 99}


def recomputed(choice: str, level: int) -> bool:
    """Whether a block whose output is at ``level`` (0 = full resolution, 1 = half, ...) is
    recomputed in backward under ``backbone.checkpoint_blocks=choice``."""
    return level <= _DEEPEST_LEVEL[choice]


@contextlib.contextmanager
def running_stats_frozen(module: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm's running statistics (and batch count) of ``module`` on exit."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        for m, (mean, var, count) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


def checkpoint_block(block: nn.Module | Callable[..., Any], *inputs: Any, stats_of: nn.Module | None = None) -> Any:
    """``block(*inputs)`` without keeping its activations; they are recomputed in backward.

    ``stats_of`` is the module whose BatchNorm statistics must not change during the
    recomputation (default: ``block`` itself, when it is a module).
    """
    owner = stats_of if stats_of is not None else block
    if not isinstance(owner, nn.Module):
        raise TypeError("checkpoint_block needs stats_of= when block is not an nn.Module")

    def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        return contextlib.nullcontext(), running_stats_frozen(owner)

    return checkpoint(block, *inputs, use_reentrant=False, context_fn=contexts)
