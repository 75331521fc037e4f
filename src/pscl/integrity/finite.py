"""Finite weights only: nothing non-finite is stored, cached or transferred."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from pscl.errors import EXIT_PARTIAL, PsclError


class NonFiniteError(PsclError):
    """Weights or a loss that became NaN or infinite: the training diverged (exit code 3)."""

    exit_code = EXIT_PARTIAL


def first_non_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    """The first key (sorted) of a floating tensor holding NaN or inf; None when all are finite."""
    for key in sorted(state):
        value = state[key]
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def assert_finite(state: Mapping[str, torch.Tensor], what: str, path: Path | str | None = None) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` (and ``path``) if a tensor of ``state`` is not finite."""
    key = first_non_finite(state)
    if key is not None:
        where = f"{path}: " if path is not None else ""
        raise NonFiniteError(
            f"{where}{what} holds non-finite values (first: {key}); the training diverged\n"
            "  fix: lower the learning rate or the temperature, or check the data for constant images")
