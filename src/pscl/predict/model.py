"""A trained segmentation network with everything needed to apply it: ``model.pt``.

At the end of fine-tuning a run writes ``<run>/model.pt``: the backbone's weights, the backbone
config that builds it, the input normalisation (the training images' mean and std), the number
of input channels, the class names, the method and the run's resolved config. It holds tensors,
numbers, strings and lists only, so it is read with ``weights_only=True`` (:func:`load_weights`).

Runs written before ``model.pt`` existed still load: from ``<run>/checkpoints/last.ckpt`` (the
final model: it is rewritten when fitting ends), whose data-module state holds the mean and std,
and ``<run>/.hydra/config.yaml`` for the backbone.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pscl.errors import DataError
from pscl.integrity import assert_finite, atomic_write_bytes, load_weights
from pscl.models.base import SegmentationBackbone

MODEL_FILE = "model.pt"
MODEL_FORMAT = "pscl-model/1"
# only pscl's own backbones are built from a file's config: a file cannot name any other callable
BACKBONE_PACKAGE = "pscl.models."
_FIX = "give a pscl run folder, its model.pt, or a checkpoint inside it (checkpoints/last.ckpt)"


@dataclass
class TrainedModel:
    """A fine-tuned backbone (in eval mode) and the facts that say how to feed it."""

    backbone: SegmentationBackbone
    class_names: tuple[str, ...]
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    method: str
    backbone_config: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def save_model(path: Path | str, backbone: SegmentationBackbone, backbone_config: dict[str, Any],
               class_names: tuple[str, ...] | list[str], mean: tuple[float, ...] | list[float],
               std: tuple[float, ...] | list[float], method: str, config: dict[str, Any]) -> Path:
    """Write ``model.pt`` atomically; refuses non-finite weights (nothing is written)."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    assert_finite(state, "the fine-tuned weights", path)
    blob = {
        "format": MODEL_FORMAT,
        "state_dict": state,
        "backbone_config": _plain(backbone_config),
        "in_channels": int(backbone.in_channels),
        "class_names": [str(c) for c in class_names],
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "method": str(method),
        "config": _plain(config),
    }
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _plain(value: Any) -> Any:
    """Config values as plain containers (what ``weights_only`` loading accepts)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def load_trained_model(source: Path | str) -> TrainedModel:
    """The model of a run folder, a ``model.pt`` or a fine-tuning checkpoint, in eval mode.

    Raises :class:`DataError` (naming the file and the fix) if nothing usable is found, if the
    file would need a pickle, or if its weights do not fit the backbone it describes.
    """
    source = Path(source).expanduser()
    if source.is_dir():
        found = next((f for f in (source / MODEL_FILE, source / "checkpoints" / "last.ckpt") if f.is_file()), None)
        if found is None:
            raise DataError(f"is not a finished pscl run: it has neither {MODEL_FILE} nor checkpoints/last.ckpt",
                            source, _FIX)
        source = found
    if not source.is_file():
        raise DataError("not found", source, _FIX)
    blob = load_weights(source, _FIX)
    if isinstance(blob, dict) and blob.get("format") == MODEL_FORMAT:
        return _from_blob(blob, source)
    if isinstance(blob, dict) and "state_dict" in blob:
        return _from_checkpoint(source, blob)
    raise DataError("is neither a pscl model.pt nor a fine-tuning checkpoint", source, _FIX)


def _from_blob(blob: dict[str, Any], path: Path) -> TrainedModel:
    try:
        return _assemble(blob["state_dict"], blob["backbone_config"], blob["class_names"], int(blob["in_channels"]),
                         blob["mean"], blob["std"], str(blob["method"]), dict(blob.get("config") or {}), path)
    except KeyError as exc:
        raise DataError(f"lacks the entry {exc}", path, _FIX) from None


def _from_checkpoint(path: Path, blob: dict[str, Any]) -> TrainedModel:
    """An older run: weights from a Lightning checkpoint, the backbone from the run's Hydra config."""
    from omegaconf import OmegaConf

    config_file = next((folder / ".hydra" / "config.yaml" for folder in (path.parent, path.parent.parent)
                        if (folder / ".hydra" / "config.yaml").is_file()), None)
    if config_file is None:
        raise DataError("has no run config beside it (.hydra/config.yaml in its run folder)", path,
                        "give the run folder the checkpoint came from, or its model.pt")
    loaded = OmegaConf.load(config_file)
    config = OmegaConf.to_container(loaded, resolve=False)
    hparams = blob.get("hyper_parameters") or {}
    data_state = blob.get("MicrographDataModule") or {}
    if "class_names" not in hparams or "mean" not in data_state:
        raise DataError("is not a fine-tuning checkpoint (no class names or input statistics in it)", path,
                        "give the run folder's checkpoints/last.ckpt or model.pt, not a pretraining checkpoint")
    prefix = "backbone."
    state = {k[len(prefix):]: v for k, v in blob["state_dict"].items() if k.startswith(prefix)}
    backbone_config = OmegaConf.to_container(loaded.backbone, resolve=True)
    in_channels = int((config.get("data") or {}).get("in_channels", 1))
    method = str((config.get("method") or {}).get("name", "unknown"))
    return _assemble(state, backbone_config, hparams["class_names"], in_channels, data_state["mean"],
                     data_state["std"], method, config, path)


def _assemble(state: dict[str, torch.Tensor], backbone_config: dict[str, Any], class_names: list[str],
              in_channels: int, mean: list[float], std: list[float], method: str, config: dict[str, Any],
              path: Path) -> TrainedModel:
    """Build the backbone the file describes and load its weights, checking that they fit."""
    import hydra

    target = str(backbone_config.get("_target_", ""))
    if not target.startswith(BACKBONE_PACKAGE):
        raise DataError(f"names the backbone {target!r}; only pscl's own backbones ({BACKBONE_PACKAGE}*) are built",
                        path, _FIX)
    if len(mean) != in_channels or len(std) != in_channels:
        raise DataError(f"has input statistics for {len(mean)} channel(s) but {in_channels} input channel(s)",
                        path, _FIX)
    settings = {k: v for k, v in backbone_config.items() if k not in ("in_channels", "num_classes")}
    backbone = hydra.utils.instantiate(settings, in_channels=in_channels, num_classes=len(class_names),
                                       _convert_="all")
    expected = backbone.state_dict()
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra else
                  f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, the backbone expects {tuple(expected[wrong[0]].shape)}")
        raise DataError(f"its weights do not fit a backbone with {in_channels} input channel(s) and "
                        f"{len(class_names)} classes ({', '.join(class_names)}): {detail}", path,
                        "the weights and the run config disagree (was the file copied from another run?); "
                        "give the run folder it was trained in")
    assert_finite(state, "the model's weights", path)
    backbone.load_state_dict(state)
    backbone.eval()
    return TrainedModel(backbone, tuple(str(c) for c in class_names), in_channels, tuple(float(m) for m in mean),
                        tuple(float(s) for s in std), method, dict(backbone_config), config, path)
