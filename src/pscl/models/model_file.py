"""A trained segmentation network with everything needed to apply it: ``model.pt``.

Training writes it (:func:`pscl.training.finetuning.save_run_model`); ``pscl-predict``,
``pscl-export``, ``pscl-embed`` and ``pscl-select`` read it, so it lives with the networks,
not with either side.

At the end of fine-tuning a run writes ``<run>/model.pt``: the backbone's weights, the backbone
config that builds it, the input normalisation (``data.normalisation``, and the mean and std: the
training images', or 0 and 1 after ``per_image`` standardisation), the number of input channels,
the class names, the method and the run's resolved config. It holds tensors, numbers, strings
and lists only, so it is read with ``weights_only=True`` (:func:`load_weights`). A file written
before the normalisation was recorded loads as ``dataset``, what every run then used.

Runs written before ``model.pt`` existed still load: from ``<run>/checkpoints/last.ckpt`` (the
final model: it is rewritten when fitting ends), whose data-module state holds the mean and std,
and ``<run>/.hydra/config.yaml`` for the backbone (and ``data.normalisation``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from yaml import YAMLError

from pscl.data.transforms import DATASET, NORMALISATIONS
from pscl.errors import DataError
from pscl.integrity import assert_finite, atomic_write_bytes, first_non_finite, load_weights
from pscl.models.base import SegmentationBackbone
from pscl.models.registry import build_backbone_from_file

MODEL_FILE = "model.pt"
MODEL_FORMAT = "pscl-model/1"
_FIX = "give a pscl run folder, its model.pt, or a checkpoint inside it (checkpoints/last.ckpt)"
_CRAFTED_FIX = ("the file was not written by pscl, or was edited: use the model.pt or checkpoints/last.ckpt of a "
                "run you trained; never load a model file you do not trust")
# an input statistic below this is a constant channel: normalising by it turns every image into inf/NaN
MIN_STD = 1e-6


@dataclass
class TrainedModel:
    """A fine-tuned backbone (in eval mode) and the facts that say how to feed it.

    ``normalisation``: ``per_image`` standardises each input by its own per-channel mean and std
    before ``mean``/``std`` apply (:func:`pscl.data.transforms.normalise_whole_image`); ``dataset``
    applies ``mean``/``std`` only.
    """

    backbone: SegmentationBackbone
    class_names: tuple[str, ...]
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    method: str
    backbone_config: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    normalisation: str = DATASET

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def save_model(path: Path | str, backbone: SegmentationBackbone, backbone_config: dict[str, Any],
               class_names: tuple[str, ...] | list[str], mean: tuple[float, ...] | list[float],
               std: tuple[float, ...] | list[float], method: str, config: dict[str, Any],
               normalisation: str = DATASET) -> Path:
    """Write ``model.pt`` atomically; refuses non-finite weights (nothing is written)."""
    if normalisation not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
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
        "normalisation": str(normalisation),
        "method": str(method),
        "config": _plain(config),
    }
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _plain(value: Any) -> Any:
    """Config values as plain containers (what ``weights_only`` loading accepts)."""
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
    missing = [k for k in ("state_dict", "backbone_config", "class_names", "in_channels", "mean", "std", "method")
               if k not in blob]
    if missing:
        raise DataError(f"lacks the entries {missing} of a pscl model file", path, _CRAFTED_FIX)
    config = blob.get("config") or {}
    if not isinstance(config, dict):
        raise DataError("has a run config that is not a mapping", path, _CRAFTED_FIX)
    return _assemble(blob["state_dict"], blob["backbone_config"], blob["class_names"], blob["in_channels"],
                     blob["mean"], blob["std"], blob["method"], config, path,
                     blob.get("normalisation", DATASET))  # older files: what every run used then


def _from_checkpoint(path: Path, blob: dict[str, Any]) -> TrainedModel:
    """An older run: weights from a Lightning checkpoint, the backbone from the run's Hydra config."""
    config_file = next((folder / ".hydra" / "config.yaml" for folder in (path.parent, path.parent.parent)
                        if (folder / ".hydra" / "config.yaml").is_file()), None)
    if config_file is None:
        raise DataError("has no run config beside it (.hydra/config.yaml in its run folder)", path,
                        "give the run folder the checkpoint came from, or its model.pt")
    config, backbone_config = _run_config(config_file)
    hparams = blob.get("hyper_parameters") or {}
    data_state = blob.get("MicrographDataModule") or {}
    if not isinstance(hparams, dict) or not isinstance(data_state, dict) or "class_names" not in hparams \
            or "mean" not in data_state or "std" not in data_state:
        raise DataError("is not a fine-tuning checkpoint (no class names or input statistics in it)", path,
                        "give the run folder's checkpoints/last.ckpt or model.pt, not a pretraining checkpoint")
    prefix = "backbone."
    state = {k[len(prefix):]: v for k, v in blob["state_dict"].items() if isinstance(k, str) and k.startswith(prefix)}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    method = config.get("method") if isinstance(config.get("method"), dict) else {}
    in_channels = data.get("in_channels", 1)
    method_name = str(method.get("name", "unknown"))
    if "normalisation" in data_state:
        normalisation = data_state["normalisation"]  # checked by _assemble, naming the checkpoint
    else:  # a checkpoint from before the data module recorded it: the run config says it
        normalisation = _normalisation(data.get("normalisation", DATASET), config_file)
    return _assemble(state, backbone_config, hparams["class_names"], in_channels, data_state["mean"],
                     data_state["std"], method_name, config, path, normalisation)


def _run_config(config_file: Path) -> tuple[dict[str, Any], Any]:
    """A run's ``.hydra/config.yaml`` as plain containers, and its backbone node resolved.

    The file is YAML read from disk: what cannot be parsed or resolved is a :class:`DataError`
    naming it. Nothing in it is built here (:func:`_assemble` checks the backbone node first).
    """
    fix = "restore the run's .hydra/config.yaml, or give the run's model.pt"
    try:
        loaded = OmegaConf.load(config_file)
        config = OmegaConf.to_container(loaded, resolve=False)
        backbone = loaded.get("backbone") if isinstance(config, dict) else None
        # unresolved: an interpolation in a saved backbone config is refused, never resolved
        backbone_config = OmegaConf.to_container(backbone, resolve=False) if backbone is not None else None
    except (OSError, UnicodeDecodeError, YAMLError, OmegaConfBaseException, ValueError, TypeError) as exc:
        raise DataError(f"cannot be read as a run config ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
                        config_file, fix) from None
    if not isinstance(config, dict) or backbone_config is None:
        raise DataError("is not a pscl run config (it has no `backbone` section)", config_file, fix)
    return config, backbone_config


def _class_names(value: Any, path: Path) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) and c.strip() for c in value):
        raise DataError("has class names that are not a list of names", path, _CRAFTED_FIX)
    if len(value) < 2 or len(set(value)) != len(value):
        raise DataError(f"lists {len(value)} class name(s){' with repeats' if len(set(value)) != len(value) else ''}; "
                        "a segmentation model has at least two distinct classes", path, _CRAFTED_FIX)
    return tuple(value)


def _channel_count(value: Any, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in (1, 3):
        raise DataError(f"says the network takes {value!r} input channels; pscl models take 1 (grey) or 3 (RGB)",
                        path, _CRAFTED_FIX)
    return int(value)


def _statistics(mean: Any, std: Any, in_channels: int, path: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean and std, checked: one finite number per channel, std above :data:`MIN_STD`."""
    values = []
    for name, numbers in (("mean", mean), ("std", std)):
        if not isinstance(numbers, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            raise DataError(f"has an input {name} that is not a list of numbers", path, _CRAFTED_FIX)
        if len(numbers) != in_channels:
            raise DataError(f"has input statistics for {len(numbers)} channel(s) but {in_channels} input "
                            "channel(s)", path, _CRAFTED_FIX)
        if not all(math.isfinite(v) for v in numbers):
            raise DataError(f"has a non-finite input {name} {list(numbers)}", path, _CRAFTED_FIX)
        values.append(tuple(float(v) for v in numbers))
    if min(values[1]) < MIN_STD:
        raise DataError(f"has an input standard deviation of {min(values[1]):g} (below {MIN_STD:g}): every image "
                        "would be normalised to inf or NaN and segmented as one class", path,
                        "retrain on images that are not constant, or use the run's own model.pt")
    return values[0], values[1]


def _normalisation(value: Any, path: Path) -> str:
    """The recorded input normalisation, checked: one of :data:`~pscl.data.transforms.NORMALISATIONS`."""
    if not isinstance(value, str) or value not in NORMALISATIONS:
        raise DataError(f"has the input normalisation {repr(value)[:60]}; a pscl model is normalised with one of "
                        f"{', '.join(NORMALISATIONS)}", path, _CRAFTED_FIX)
    return value


def _tensors(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise DataError("holds no network weights (its state_dict is not a mapping of names to tensors)", path,
                        _CRAFTED_FIX)
    odd = next((k for k, v in state.items() if v.layout != torch.strided or v.is_quantized or v.is_complex()), None)
    if odd is not None:
        raise DataError(f"holds the weight {odd} as a {state[odd].layout} / {state[odd].dtype} tensor; a pscl model "
                        "holds plain dense real tensors", path, _CRAFTED_FIX)
    return state


def _assemble(state: Any, backbone_config: Any, class_names: Any, in_channels: Any, mean: Any, std: Any,
              method: Any, config: dict[str, Any], path: Path, normalisation: Any = DATASET) -> TrainedModel:
    """Check everything the file says, then build the backbone it describes and load its weights.

    The backbone is first built on the ``meta`` device (no memory), so weights that do not fit
    it are refused before a size the file only claims is allocated.
    """
    names = _class_names(class_names, path)
    channels = _channel_count(in_channels, path)
    means, stds = _statistics(mean, std, channels, path)
    normalised_by = _normalisation(normalisation, path)
    state = _tensors(state, path)
    if not isinstance(method, str):
        raise DataError("names its method with something that is not a string", path, _CRAFTED_FIX)
    shapes = build_backbone_from_file(backbone_config, channels, len(names), path, _CRAFTED_FIX, device="meta")
    expected = {k: tuple(v.shape) for k, v in shapes.state_dict().items()}
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != expected[k]]
    if missing or extra or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra else
                  f"{wrong[0]} is {tuple(state[wrong[0]].shape)}, the backbone expects {expected[wrong[0]]}")
        raise DataError(f"its weights do not fit a backbone with {channels} input channel(s) and "
                        f"{len(names)} classes ({', '.join(names)}): {detail}", path,
                        "the weights and the run config disagree (was the file copied from another run?); "
                        "give the run folder it was trained in")
    bad = first_non_finite(state)
    if bad is not None:
        raise DataError(f"its weights hold non-finite values (first: {bad}); such a network segments nothing",
                        path, "use the model of a run that finished (a diverged run writes none)")
    backbone = build_backbone_from_file(backbone_config, channels, len(names), path, _CRAFTED_FIX)
    backbone.load_state_dict(state)
    backbone.eval()
    return TrainedModel(backbone, names, channels, means, stds, method, dict(backbone_config), config, path,
                        normalised_by)
