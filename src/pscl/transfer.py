"""Moving pretrained weights into a fine-tuning backbone: encoder and decoder only, checked.

Projection heads, momentum copies and the classifier never travel. The transferred key set is
asserted: every encoder/decoder weight of the target is loaded, nothing else is.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pscl.errors import DataError
from pscl.models.base import TRANSFER_PREFIXES, SegmentationBackbone


def save_pretrained(state: dict[str, torch.Tensor], path: Path, meta: dict) -> Path:
    """Write the transferable weights with a little provenance (method, config hash, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"backbone": {k: v.detach().cpu() for k, v in state.items()}, "meta": meta}, path)
    return path


def load_pretrained(path: Path | str) -> dict[str, torch.Tensor]:
    """Transferable weights from a ``pretrained.pt`` or a Lightning pretraining checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError("pretrained checkpoint not found", path, "pass pretrained_ckpt=<run>/pretrain/pretrained.pt")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise DataError(f"cannot be read as a checkpoint: {exc}", path, "point pretrained_ckpt at a pscl pretraining output") from None
    if isinstance(blob, dict) and "backbone" in blob:
        return dict(blob["backbone"])
    if isinstance(blob, dict) and "state_dict" in blob:  # Lightning checkpoint of a pretraining module
        prefix = "backbone."
        state = {k[len(prefix):]: v for k, v in blob["state_dict"].items() if k.startswith(prefix)}
        return {k: v for k, v in state.items() if k.startswith(TRANSFER_PREFIXES)}
    raise DataError("holds no backbone weights", path, "point pretrained_ckpt at a pscl pretraining output")


def read_meta(path: Path | str) -> dict:
    """The provenance dict saved with a ``pretrained.pt`` or snapshot ({} if it has none)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    return dict(blob.get("meta", {})) if isinstance(blob, dict) else {}


def transfer_weights(backbone: SegmentationBackbone, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state`` into ``backbone``'s encoder and decoder; returns the loaded keys.

    Raises if the pretrained weights do not cover exactly the target's encoder/decoder keys
    (a different architecture or width) or carry anything else.
    """
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
