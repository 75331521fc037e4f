"""The private random generators of augmentations, read and set (for resuming a run exactly).

albumentations transforms and pscl's view samplers keep NumPy ``Generator`` and ``random.Random``
objects of their own, which torch's global state does not cover. :func:`generator_states` lists
the states of those reachable from an object (in a fixed order) and :func:`set_generator_states`
sets them back; both load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

_LEAVES = (str, bytes, int, float, bool, type(None), np.ndarray, torch.Tensor)


def generators_of(root: Any, max_depth: int = 6) -> list[np.random.Generator | random.Random]:
    """Every NumPy ``Generator`` and ``random.Random`` reachable from ``root`` through attributes,
    lists and dicts, in a deterministic order (attribute and key names sorted)."""
    found: list[np.random.Generator | random.Random] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if isinstance(obj, _LEAVES) or id(obj) in seen or depth > max_depth:
            return
        seen.add(id(obj))
        if isinstance(obj, (np.random.Generator, random.Random)):
            found.append(obj)
        elif isinstance(obj, dict):
            for key in sorted(obj, key=str):
                visit(obj[key], depth + 1)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item, depth + 1)
        elif hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
            for name in sorted(vars(obj)):
                visit(vars(obj)[name], depth + 1)

    visit(root, 0)
    return found


def generator_states(root: Any) -> list[Any]:
    """The states of :func:`generators_of` ``root``."""
    return [g.bit_generator.state if isinstance(g, np.random.Generator) else g.getstate()
            for g in generators_of(root)]


def set_generator_states(root: Any, states: list[Any]) -> None:
    """Set the generators of ``root`` to ``states`` (from :func:`generator_states` of an equal object)."""
    generators = generators_of(root)
    if len(generators) != len(states):
        raise ValueError(f"{len(states)} recorded generator states for {len(generators)} generators")
    for generator, state in zip(generators, states):
        if isinstance(generator, np.random.Generator):
            generator.bit_generator.state = state
        else:
            version, internal, gauss = state
            generator.setstate((version, tuple(internal), gauss))
