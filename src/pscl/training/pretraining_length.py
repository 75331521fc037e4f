"""How long pretraining runs, and which snapshots of it a pretraining-length study keeps.

The length is ``method.pretrain_steps`` optimiser steps when set (whatever the pool size), else
``method.pretrain_epochs`` epochs. A study keeps the weights at ``snapshot_epochs`` or at
``snapshot_steps`` (never both), each checked against that length, with the final point added.
"""

from __future__ import annotations

from omegaconf import DictConfig

from pscl.errors import ConfigError


def pretrain_steps(cfg: DictConfig) -> int | None:
    """``method.pretrain_steps``: the pretraining length in optimiser steps (it wins over
    ``method.pretrain_epochs``), or None when the length is in epochs. Its range is a
    :data:`pscl.checks.config.CONFIG_RULES` rule."""
    steps = cfg.method.get("pretrain_steps")
    return None if steps is None else int(steps)


def pretraining_limits(cfg: DictConfig) -> dict[str, int]:
    """The pretraining trainer's length: exactly ``method.pretrain_steps`` optimiser steps whatever
    the pool size (``max_epochs=-1``), else ``method.pretrain_epochs`` epochs."""
    steps = pretrain_steps(cfg)
    if steps is not None:
        return {"max_epochs": -1, "max_steps": steps}
    return {"max_epochs": int(cfg.method.pretrain_epochs)}


def describe_length(cfg: DictConfig) -> str:
    """The pretraining length for the log, saying which setting won when steps are set."""
    steps = pretrain_steps(cfg)
    if steps is None:
        return f"{int(cfg.method.pretrain_epochs)} epochs"
    return f"{steps} steps (method.pretrain_steps; method.pretrain_epochs={cfg.method.pretrain_epochs} is not used)"


def _one_snapshot_kind(cfg: DictConfig) -> None:
    """A study counts either epochs or optimiser steps, never both."""
    if cfg.get("snapshot_epochs") and cfg.get("snapshot_steps"):
        raise ConfigError("snapshot_steps", f"cannot be combined with snapshot_epochs="
                          f"{list(cfg.snapshot_epochs)}: a pretraining-length study counts either epochs or steps",
                          "keep one of them, e.g. snapshot_epochs=[] (with method.pretrain_steps set)")


def snapshot_epochs(cfg: DictConfig) -> list[int]:
    """``snapshot_epochs`` checked, plus the final epoch; [] when no snapshot is asked for."""
    epochs = list(cfg.get("snapshot_epochs") or [])
    if not epochs:
        return []
    _one_snapshot_kind(cfg)
    budget = pretrain_steps(cfg)
    if budget is not None:  # the pretraining stops at a step count: the final epoch may never end
        raise ConfigError("snapshot_epochs", f"counts epochs, but method.pretrain_steps={budget} sets the "
                          "pretraining length in optimiser steps",
                          f"use snapshot_steps=[...] within [1, {budget}] instead, or method.pretrain_steps=null")
    final = int(cfg.method.pretrain_epochs)
    bad = [e for e in epochs if not isinstance(e, int) or not 1 <= e <= final]
    if bad:
        raise ConfigError("snapshot_epochs", f"must be whole epochs in [1, method.pretrain_epochs={final}], got {bad}",
                          f"e.g. snapshot_epochs=[{max(1, final // 10)},{max(1, final // 3)},{final}]")
    return sorted(set(epochs) | {final})


def snapshot_steps(cfg: DictConfig) -> list[int]:
    """``snapshot_steps`` checked, plus the final step (``method.pretrain_steps``); [] when none is asked for."""
    steps = list(cfg.get("snapshot_steps") or [])
    if not steps:
        return []
    _one_snapshot_kind(cfg)
    final = pretrain_steps(cfg)
    if final is None:
        whole = [s for s in steps if isinstance(s, int) and not isinstance(s, bool)]
        raise ConfigError("snapshot_steps", "counts optimiser steps, but method.pretrain_steps is null (the "
                          "pretraining length is in epochs)",
                          f"set method.pretrain_steps={max(whole, default=190)} (the total length), "
                          "or use snapshot_epochs")
    bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= final]
    if bad:
        raise ConfigError("snapshot_steps", f"must be whole optimiser steps in [1, method.pretrain_steps={final}], "
                          f"got {bad}", f"e.g. snapshot_steps=[{max(1, final // 10)},{max(1, final // 3)},{final}]")
    return sorted(set(steps) | {final})
