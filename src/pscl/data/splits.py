"""Deterministic train/test splits and labelled-subset selection (pure functions of ids and seeds)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from pscl.errors import ConfigError


def seeded_split(ids: Sequence[str], groups: Mapping[str, str | None], seed: int,
                 test_fraction: float, val_fraction: float = 0.0) -> dict[str, tuple[str, ...]]:
    """Split ids into train/val/test, stratified by group, the same for the same seed.

    Each group gives ``round(n * fraction)`` ids to test (at least one when the group has two or
    more) and likewise to val; lists come back sorted.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("data.test_fraction", f"must lie in (0, 1), got {test_fraction}")
    if not 0.0 <= val_fraction < 1.0 - test_fraction:
        raise ConfigError("data.val_fraction", f"must lie in [0, 1 - test_fraction), got {val_fraction}")
    by_group: dict[str, list[str]] = defaultdict(list)
    for i in sorted(ids):
        by_group[str(groups.get(i))].append(i)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for group in sorted(by_group):
        members = [by_group[group][j] for j in rng.permutation(len(by_group[group]))]
        n = len(members)
        n_test = min(max(round(n * test_fraction), 1 if n >= 2 else 0), n - 1) if n > 1 else 0
        n_val = round(n * val_fraction) if val_fraction > 0 else 0
        n_val = min(n_val, n - n_test - 1) if n - n_test > 1 else 0
        out["test"] += members[:n_test]
        out["val"] += members[n_test:n_test + n_val]
        out["train"] += members[n_test + n_val:]
    if not out["test"]:  # every group had one image: take one overall
        out["test"].append(out["train"].pop(int(rng.integers(len(out["train"])))))
    return {k: tuple(sorted(v)) for k, v in out.items()}


def parse_num_labeled(value: int | str) -> int | None:
    """``all`` -> None; a positive int (or its string) -> that int; anything else is an error."""
    if isinstance(value, str):
        if value.strip().lower() in {"all", "f", "full"}:
            return None
        try:
            value = int(value)
        except ValueError:
            raise ConfigError("data.num_labeled", f"must be a positive integer or `all`, got `{value}`") from None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError("data.num_labeled", f"must be a positive integer or `all`, got `{value}`")
    return int(value)


def select_labeled(train_ids: Sequence[str], num_labeled: int | str, label_seed: int,
                   presets: Mapping[tuple[int, int], Sequence[str]] | None = None) -> tuple[str, ...]:
    """The annotated training images of one round.

    The same ``(num_labeled, label_seed)`` always gives the same ids, and subsets of one seed are
    nested (the 1-label image is among the 5-label images). Preset subsets (the authors'
    ``sup_num1_k`` folders) take precedence. Only train ids are ever chosen.
    """
    n = parse_num_labeled(num_labeled)
    ordered = sorted(train_ids)
    if n is None:
        return tuple(ordered)
    if presets and (n, label_seed) in presets:
        return tuple(presets[(n, label_seed)])
    if n > len(ordered):
        raise ConfigError(
            "data.num_labeled",
            f"asks for {n} annotated images but the train split holds only {len(ordered)}",
            f"use data.num_labeled<={len(ordered)} or data.num_labeled=all",
        )
    order = np.random.default_rng(label_seed).permutation(len(ordered))
    return tuple(ordered[j] for j in order[:n])


def carve_validation(train_ids: Sequence[str], groups: Mapping[str, str | None], seed: int,
                     val_fraction: float, keep: Collection[str] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Move ``round(n * val_fraction)`` ids of each group from train to val (at least one train id
    stays per group); ids in ``keep`` (preset annotated subsets) always stay in train, and the
    test split is never touched. Returns sorted ``(train, val)``."""
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError("data.val_fraction", f"must lie in (0, 1) to carve a validation split, got {val_fraction}")
    by_group: dict[str, list[str]] = defaultdict(list)
    for i in sorted(train_ids):
        if i not in keep:
            by_group[str(groups.get(i))].append(i)
    rng = np.random.default_rng(seed)
    train: list[str] = [i for i in train_ids if i in keep]
    val: list[str] = []
    for group in sorted(by_group):
        members = [by_group[group][j] for j in rng.permutation(len(by_group[group]))]
        n_val = min(round(len(members) * val_fraction), len(members) - 1)
        val += members[:n_val]
        train += members[n_val:]
    if not val:
        raise ConfigError("data.val_fraction", f"{val_fraction} of {len(train_ids)} training images is no image",
                          "raise data.val_fraction")
    return tuple(sorted(train)), tuple(sorted(val))
