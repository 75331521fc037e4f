"""Moving pretrained weights into a fine-tuning backbone: encoder and decoder only, checked.

Projection heads, momentum copies and the classifier never travel. The transferred key set is
asserted: every encoder/decoder weight of the target is loaded, nothing else is. The weights
travel in ``pretrained.pt`` files (and pretraining snapshots), which training writes and
fine-tuning, the pretraining cache and ``pscl-embed`` read.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from pscl.errors import DataError
from pscl.integrity import assert_finite, atomic_write_bytes, load_weights
from pscl.models.base import TRANSFER_PREFIXES, SegmentationBackbone


def save_pretrained(state: dict[str, torch.Tensor], path: Path, meta: dict) -> Path:
    """Write the transferable weights with a little provenance (method, config hash, ...), atomically.

    Raises :class:`~pscl.integrity.NonFiniteError` (and writes nothing) if a weight is not finite.
    """
    assert_finite(state, "the pretrained weights", path)
    buffer = io.BytesIO()
    torch.save({"backbone": {k: v.detach().cpu() for k, v in state.items()}, "meta": meta}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


PRETRAINED_CKPT_FIX = "point pretrained_ckpt at a pscl pretraining output (<run>/pretrain/pretrained.pt)"


def load_pretrained(path: Path | str, fix: str = PRETRAINED_CKPT_FIX) -> dict[str, torch.Tensor]:
    """Transferable weights from a ``pretrained.pt`` or a Lightning pretraining checkpoint.

    Read without running any pickle (:func:`pscl.integrity.load_weights`); refused if a weight is
    not finite. ``fix`` is the advice given with an error (the caller knows where the file came from).
    """
    path = Path(path).expanduser()
    blob = load_weights(path, fix)
    if isinstance(blob, dict) and isinstance(blob.get("backbone"), dict):
        state = dict(blob["backbone"])
    elif isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):  # Lightning checkpoint of a pretraining
        prefix = "backbone."
        state = {k[len(prefix):]: v for k, v in blob["state_dict"].items() if k.startswith(prefix)}
        state = {k: v for k, v in state.items() if k.startswith(TRANSFER_PREFIXES)}
    else:
        raise DataError("holds no backbone weights", path, fix)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError("holds no backbone weights", path, fix)
    assert_finite(state, "the pretrained weights", path)
    return state


def read_meta(path: Path | str) -> dict:
    """The provenance dict saved with a ``pretrained.pt`` or snapshot ({} if it has none)."""
    blob = load_weights(path)
    return dict(blob.get("meta", {})) if isinstance(blob, dict) else {}


def transfer_weights(backbone: SegmentationBackbone, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state`` into ``backbone``'s encoder and decoder; returns the loaded keys.

    Raises if the pretrained weights do not cover exactly the target's encoder/decoder keys
    (a different architecture or width) or carry anything else.
    """
    assert_finite(state, "the pretrained weights")
    expected = set(backbone.transferable_state_dict())
    given = set(state)
    if given != expected:
        missing, extra = sorted(expected - given)[:5], sorted(given - expected)[:5]
        raise DataError(
            f"pretrained weights do not match the backbone (missing {missing}, unexpected {extra})", None,
            "fine-tune with the backbone config the pretraining used (e.g. the same backbone= and widths)")
    target = backbone.state_dict()
    wrong = [k for k in sorted(given) if tuple(state[k].shape) != tuple(target[k].shape)]
    if wrong:
        raise DataError(
            f"pretrained weights do not match the backbone: {len(wrong)} tensors differ in shape "
            f"(first: {wrong[0]} {tuple(state[wrong[0]].shape)} vs {tuple(target[wrong[0]].shape)})", None,
            "fine-tune with the backbone config the pretraining used (e.g. the same backbone= and widths)")
    result = backbone.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == set(backbone.state_dict()) - expected
    return sorted(given)
