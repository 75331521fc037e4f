"""Config keys that moved: an override typed with the old name runs under the new one.

The configs were regrouped by concern (docs/architecture.md, "Configs by concern"): what a method asks of fine-tuning
is one ``method.finetune`` block, the instantiable part of the ``finetune`` group is its
``finetune.module`` sub-key, and patch sampling belongs to the PSCL methods. Command lines,
scripts and the saved overrides of older run folders (``resume=``) still name the old keys, so
:func:`translate_overrides` rewrites them, one note each, and refuses a key that has no new home
with a message that names the key to use instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pscl.errors import ConfigError

# old key (or the head of one) -> new key; a longer old key is matched first
RENAMED_KEYS: dict[str, str] = {
    "method.finetune_encoder_lr": "method.finetune.encoder_lr",
    "method.finetune_decoder_lr": "method.finetune.decoder_lr",
    "method.paper_finetune_encoder_lr": "method.finetune.paper_encoder_lr",
    # it only ever gave sampling.top_k its default
    "method.default_top_k": "sampling.top_k",
    **{f"finetune.{key}": f"finetune.module.{key}"
       for key in ("_target_", "optimizer", "encoder_lr", "decoder_lr", "ce_weight", "dice_weight",
                   "encoder_warmup_epochs", "freeze_pretrained_bn")},
}

# old key -> what to set instead (these have no one-to-one new name)
REMOVED_KEYS: dict[str, str] = {
    "data.eval_split": "eval.split (data no longer reads it: the training gives the data module eval.split)",
}

# the methods that compose the `sampling` group (their configs name it in their defaults)
SAMPLING_METHODS = frozenset({"pscl_simclr", "pscl_moco"})

# [~|+|++]key[=value]; a group choice with a package (group@pkg=...) is never renamed
_OVERRIDE = re.compile(r"^(?P<prefix>~|\+\+|\+)?(?P<key>[A-Za-z_][\w.]*)(?P<rest>(=.*)?)$", re.DOTALL)


def _new_key(key: str, table: dict[str, str]) -> tuple[str, str] | None:
    """``(old, new)`` of the entry of ``table`` that ``key`` is or lies below, longest first."""
    for old in sorted(table, key=len, reverse=True):
        if key == old or key.startswith(old + "."):
            return old, table[old]
    return None


def translate_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(overrides with renamed keys rewritten, one note per rewrite)``.

    Raises :class:`~pscl.errors.ConfigError` for a key that was removed, naming what to set instead.
    Arguments that are not overrides (``-m``, ``--cfg``, ...) pass unchanged.
    """
    translated: list[str] = []
    notes: list[str] = []
    for text in overrides:
        match = _OVERRIDE.match(str(text))
        if match is None or str(text).startswith("-"):
            translated.append(str(text))
            continue
        key = match.group("key")
        removed = _new_key(key, REMOVED_KEYS)
        if removed is not None:
            raise ConfigError(key, "is no longer a config key", f"set {removed[1]}")
        renamed = _new_key(key, RENAMED_KEYS)
        if renamed is None:
            translated.append(str(text))
            continue
        old, new = renamed
        new_key = new + key[len(old):]
        translated.append(f"{match.group('prefix') or ''}{new_key}{match.group('rest')}")
        notes.append(f"`{key}` is now `{new_key}` (docs/architecture.md); running with the new name")
    _check_sampling(translated)
    return translated, notes


def _check_sampling(overrides: Sequence[str]) -> None:
    """Refuse ``sampling.*`` beside a ``method=`` choice (or sweep) that names a method without
    patch sampling: Hydra would suggest ``+sampling...``, which adds a node nothing reads."""
    keys = [o.split("=", 1)[0] for o in overrides if o.startswith("sampling.") and "=" in o]
    chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("method=")]
    if not keys or not chosen:
        return
    others = sorted({m.strip() for m in chosen[-1].split(",")} - SAMPLING_METHODS)
    if others:
        raise ConfigError(keys[0], f"is PSCL's patch sampling; method={others[0]} has none",
                          f"set {keys[0]} in a run or sweep of method=pscl_simclr / pscl_moco only")
