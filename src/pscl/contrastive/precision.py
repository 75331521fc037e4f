"""Keeping PSCL's matching and losses in float32 when the networks run under autocast.

With ``trainer.precision=bf16-mixed`` Lightning runs the training step inside
``torch.autocast(..., dtype=torch.bfloat16)``. Autocast recasts every matrix product to bf16,
including those of the patch matching (cell-template similarities) and of the contrastive losses,
even when their inputs were lifted to float32 first. The helpers here switch autocast off for such
a block, so that the similarities and logits are float32 products of float32 (upcast) inputs.

Where autocast is not on (every fp32 run) they do nothing at all: the fp32 path is unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["autocast_off", "float32_under_autocast"]

F = TypeVar("F", bound=Callable[..., Any])


def autocast_off(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context in which autocast is disabled for ``device``'s type; a null context where it is off."""
    device_type = torch.device(device).type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _first_device(args: tuple, kwargs: dict) -> torch.device | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            return value.device
    return None


def float32_under_autocast(function: F) -> F:
    """Run ``function`` with autocast disabled for the device of its first tensor argument.

    The function itself must lift half-precision inputs to float32 (autocast off means that a
    bf16 tensor stays bf16); the pscl losses do so (``info_nce._working_dtype``).
    """

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        device = _first_device(args, kwargs)
        if device is None:
            return function(*args, **kwargs)
        with autocast_off(device):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
