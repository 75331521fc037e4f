"""``pscl-export`` for runs with ``backbone=smp``: plain segmentation_models_pytorch files, and TorchScript.

    pscl-export <run> --format smp [--out folder]          # smp_model.pt, encoder.pt, export.json
    pscl-export <run> --format torchscript [--out file]    # model.ts.pt and model.ts.json, as for the UNet

``--format smp`` writes into a folder (default ``<run>/export``):

* ``smp_model.pt``: the whole network's state dict under smp's own key names (``encoder.*``,
  ``decoder.*``, ``segmentation_head.*``; pscl calls the head ``classifier``), plain tensors only,
  so ``smp.Unet(encoder_name=..., encoder_depth=..., encoder_weights=None, in_channels=...,
  classes=..., decoder_channels=...).load_state_dict(torch.load(f, weights_only=True), strict=True)``
  works;
* ``encoder.pt``: the encoder's state dict alone (no ``encoder.`` prefix), which loads with
  ``strict=True`` into ``smp.encoders.get_encoder(name, in_channels=..., depth=..., weights=None)``
  and is a valid ``backbone.encoder_weights=<path>`` of a later pscl run;
* ``export.json``: the encoder, its depth, the decoder widths, the input channels, the class
  names, the normalisation (kind, mean, std) and a ready-to-paste Python snippet.

A plain ``smp.Unet`` takes inputs whose sides are multiples of the encoder's stride (32 at depth
5); pscl pads other sizes by reflection on the bottom and right and crops the outputs back
(:class:`pscl.models.smp_backbone.SmpBackbone`), and the TorchScript export
(:class:`NormalisedSmp`) does the same, so its contract is the UNet's: any size.

All three files are built and checked in memory first, then written side by side and renamed
together (:func:`pscl.predict.export._write_together`): a failure leaves the earlier files (or
nothing), and a refusal writes nothing, not even the folder.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pscl.data.transforms import MIN_IMAGE_STD, PER_IMAGE
from pscl.errors import DataError
from pscl.models.model_file import TrainedModel
from pscl.models.smp_backbone import pad_to_multiple
from pscl.predict.normalised import NormalisedNetwork

SMP_FORMAT = "pscl-smp/1"
MODEL_NAME, ENCODER_NAME, RECORD_NAME = "smp_model.pt", "encoder.pt", "export.json"
SMP_FILES = (MODEL_NAME, ENCODER_NAME, RECORD_NAME)
SMP_TARGET = "pscl.models.smp_backbone.SmpBackbone"
# pscl's name for smp's segmentation head
_HEAD_PREFIXES = ("classifier.", "segmentation_head.")
_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".json", ".onnx", ".ckpt")


def is_smp(model: TrainedModel) -> bool:
    """True when the run's backbone is an :class:`~pscl.models.smp_backbone.SmpBackbone`."""
    from pscl.models.smp_backbone import SmpBackbone

    return isinstance(model.backbone, SmpBackbone)


def smp_settings(model: TrainedModel) -> dict[str, Any]:
    """The arguments of the ``smp.Unet`` the run's network is: encoder name and depth, decoder widths,
    input channels and classes (the backbone config's values, smp's defaults where it has none)."""
    from pscl.models.smp_backbone import SMP_DECODER_CHANNELS, SmpBackbone

    defaults = {name: p.default for name, p in inspect.signature(SmpBackbone).parameters.items()}
    config = {**defaults, **{k: v for k, v in model.backbone_config.items() if k in defaults}}
    depth = int(getattr(model.backbone, "encoder_depth", config["encoder_depth"]))
    widths = config["decoder_channels"] or SMP_DECODER_CHANNELS[-depth:]
    return {
        "arch": str(config["arch"]),
        "encoder_name": str(model.backbone.encoder_name),
        "encoder_depth": depth,
        "decoder_channels": [int(c) for c in widths],
        "in_channels": int(model.in_channels),
        "classes": int(model.num_classes),
    }


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A dense CPU tensor with its own storage (no view of a larger one is saved)."""
    return tensor.detach().to("cpu").contiguous().clone()


def smp_state_dicts(model: TrainedModel) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The whole network under smp's key names, and the encoder's weights alone (no prefix)."""
    state = model.backbone.state_dict()
    whole = {}
    for key, value in state.items():
        if key.startswith(_HEAD_PREFIXES[0]):
            key = _HEAD_PREFIXES[1] + key[len(_HEAD_PREFIXES[0]):]
        whole[key] = _plain(value)
    encoder = {k[len("encoder."):]: v for k, v in whole.items() if k.startswith("encoder.")}
    return whole, encoder


def _check_against_smp(model: TrainedModel, settings: dict[str, Any], whole: dict[str, torch.Tensor]) -> None:
    """The state dict must fit the ``smp.Unet`` that ``export.json`` tells users to build (checked on
    the meta device: no memory), else nothing is written."""
    import segmentation_models_pytorch as smp

    with torch.device("meta"):
        reference = smp.Unet(encoder_name=settings["encoder_name"], encoder_depth=settings["encoder_depth"],
                             encoder_weights=None, in_channels=settings["in_channels"], classes=settings["classes"],
                             decoder_channels=settings["decoder_channels"])
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in whole.items()}
    if expected != got:
        differ = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
        raise DataError(f"its weights do not fit smp.Unet({_arguments(settings)}) (first difference: {differ[0]}); "
                        "nothing was written", model.source,
                        "the run's backbone config and its weights disagree: export the run folder it was trained in")


def _arguments(settings: dict[str, Any]) -> str:
    return (f"encoder_name={settings['encoder_name']!r}, encoder_depth={settings['encoder_depth']}, "
            f"encoder_weights=None, in_channels={settings['in_channels']}, classes={settings['classes']}, "
            f"decoder_channels={tuple(settings['decoder_channels'])}")


def snippet(settings: dict[str, Any], model: TrainedModel, folder: Path) -> str:
    """Python that builds the ``smp.Unet``, loads ``smp_model.pt`` and normalises an input as the run did."""
    lines = [
        "from pathlib import Path",
        "",
        "import segmentation_models_pytorch as smp",
        "import torch",
        "",
        f"folder = Path({str(folder.resolve())!r})",
        f"model = smp.Unet({_arguments(settings)})",
        f"model.load_state_dict(torch.load(folder / {MODEL_NAME!r}, weights_only=True), strict=True)",
        "model.eval()",
        f"mean = torch.tensor({list(model.mean)!r}).view(1, -1, 1, 1)",
        f"std = torch.tensor({list(model.std)!r}).view(1, -1, 1, 1)",
        "",
        "",
        "def normalise(x):",
        f"    # x: (B, {model.in_channels}, H, W) float32 in [0, 1]; H and W multiples of "
        f"{int(model.backbone.stride)} for smp.Unet",
    ]
    if model.normalisation == PER_IMAGE:
        lines += [
            "    # per_image: each image by its own per-channel mean and population std first (constant: 0)",
            "    m = x.mean(dim=(2, 3), keepdim=True)",
            "    s = (x - m).square().mean(dim=(2, 3), keepdim=True).sqrt()",
            f"    x = (x - m) * torch.where(s >= {MIN_IMAGE_STD!r}, 1 / s.clamp_min({MIN_IMAGE_STD!r}), "
            "torch.zeros_like(s))",
        ]
    lines += [
        "    return (x - mean) / std",
        "",
        "",
        "# with torch.no_grad(): classes = model(normalise(x)).argmax(1)",
    ]
    return "\n".join(lines) + "\n"


def encoder_snippet(settings: dict[str, Any], folder: Path) -> str:
    """Python that builds the encoder alone and loads ``encoder.pt``."""
    return "\n".join([
        "import segmentation_models_pytorch as smp",
        "import torch",
        "",
        f"encoder = smp.encoders.get_encoder({settings['encoder_name']!r}, in_channels={settings['in_channels']}, "
        f"depth={settings['encoder_depth']}, weights=None)",
        f"encoder.load_state_dict(torch.load({str((folder / ENCODER_NAME).resolve())!r}, weights_only=True), "
        "strict=True)",
    ]) + "\n"


def smp_record(model: TrainedModel, settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``export.json``: what the two weight files are and how to use them."""
    import segmentation_models_pytorch as smp

    from pscl.predict.export import input_scaling

    stride = int(model.backbone.stride)
    return {
        "format": SMP_FORMAT,
        "library": "segmentation_models_pytorch",
        "smp_version": smp.__version__,
        "torch_version": torch.__version__,
        "architecture": "smp.Unet",
        **settings,
        "encoder_stride": stride,
        "class_names": list(model.class_names),
        "normalisation": {
            "kind": model.normalisation,
            "mean": list(model.mean),
            "std": list(model.std),
            "steps": _steps(model),
        },
        "input": {
            "shape": f"(B, {model.in_channels}, H, W), float32, H and W multiples of {stride} (smp.Unet's need; "
                     f"pscl pads other sizes by reflection on the bottom and right to a multiple of {stride} and "
                     "crops the decoder's output back before the segmentation head: padding the same way and "
                     "cropping the logits gives pscl's output except in the last row and column, or use "
                     "pscl-export --format torchscript, which does exactly what pscl does)",
            "scaling": input_scaling(model),
        },
        "output": "(B, classes, H, W) float32 logits; argmax over dimension 1 gives the index in class_names",
        "files": {
            "model": MODEL_NAME + ": the whole network's state dict (keys encoder.*, decoder.*, segmentation_head.*)",
            "encoder": ENCODER_NAME + ": the encoder's state dict alone (smp.encoders.get_encoder(...), strict); "
                       "also a pscl backbone.encoder_weights file",
        },
        "snippet": snippet(settings, model, folder),
        "encoder_snippet": encoder_snippet(settings, folder),
        "pscl_encoder_weights": (f"pscl-train backbone=smp backbone.encoder_name={settings['encoder_name']} "
                                 f"backbone.encoder_depth={settings['encoder_depth']} "
                                 f"backbone.encoder_weights={(folder / ENCODER_NAME).resolve()} ..."),
        "method": model.method,
        "source": str(model.source),
    }


def _steps(model: TrainedModel) -> str:
    """What to do to a [0, 1] input before ``smp.Unet`` (``normalise`` of the snippet)."""
    fixed = "(x - mean) / std per channel"
    if model.normalisation != PER_IMAGE:
        return f"apply before the model: {fixed}"
    return ("apply before the model: each image first standardised by its own per-channel mean and population std "
            f"over H and W (a constant channel becomes 0), then {fixed}, as normalise() of the snippet does; "
            "standardise a large micrograph whole before cutting it into tiles: a tile's own statistics are not "
            "the ones the network was trained with")


def refuse_non_smp(model: TrainedModel, formats: tuple[str, ...]) -> None:
    """``--format smp`` of a run whose backbone is not smp's: one message, nothing written."""
    if is_smp(model):
        return
    target = str(model.backbone_config.get("_target_", type(model.backbone).__name__))
    others = [f for f in formats if f != "smp"]
    raise DataError(f"--format smp needs a run trained with backbone=smp (a segmentation_models_pytorch UNet); "
                    f"this run's backbone is {target}; nothing was written", model.source,
                    f"export it with {' or '.join('--format ' + f for f in others)}, or train with backbone=smp")


def check_smp_targets(folder: Path, overwrite: bool, model: TrainedModel) -> None:
    """Refuse an ``--out`` folder whose files cannot or must not be written; nothing is written."""
    example = folder.parent / "export_smp"
    if folder.exists() and not folder.is_dir():
        raise DataError("is a file; --format smp writes smp_model.pt, encoder.pt and export.json into a folder",
                        folder, f"give a folder, e.g. --out {example}")
    if not folder.exists() and folder.suffix.lower() in _FILE_SUFFIXES:
        raise DataError(f"names a file ({folder.suffix}); --format smp writes smp_model.pt, encoder.pt and "
                        "export.json into a folder", folder,
                        f"give a folder, e.g. --out {folder.with_suffix('')}, or leave --out out")
    ancestor = folder.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DataError("is not a folder, so nothing can be written in it", ancestor, "choose another --out")
    read = {Path(model.source).resolve()} if model.source is not None else set()
    targets = [folder / name for name in SMP_FILES]
    for target in targets:
        if target.resolve() in read:
            raise DataError("is the model file being exported; writing it would destroy it; nothing was written",
                            target, f"choose another --out, e.g. --out {example}")
        if target.is_dir():
            raise DataError(f"is a folder; --format smp writes a file {target.name} there; nothing was written",
                            target, f"choose another --out, e.g. --out {example}")
    existing = [t for t in targets if os.path.lexists(t)]
    if existing and not overwrite:
        also = f" (and {', '.join(t.name for t in existing[1:])})" if len(existing) > 1 else ""
        raise DataError(f"already exists{also}; nothing was written", existing[0],
                        "add --overwrite to replace an earlier --format smp export there, or choose another --out")
    if existing and not _is_smp_record(folder / RECORD_NAME):
        raise DataError(f"exists and is not an earlier pscl-export (no pscl {RECORD_NAME} beside it); --overwrite "
                        "replaces only what pscl-export wrote; nothing was written", existing[0],
                        f"choose another --out, e.g. --out {example}")


def _is_smp_record(path: Path) -> bool:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == SMP_FORMAT


def _saved(state: dict[str, torch.Tensor]) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def export_smp(model: TrainedModel, folder: Path) -> list[Path]:
    """Write ``smp_model.pt``, ``encoder.pt`` and ``export.json`` into ``folder``, together; returns them."""
    from pscl.predict.export import _write_together

    refuse_non_smp(model, ("torchscript", "smp"))
    settings = smp_settings(model)
    whole, encoder = smp_state_dicts(model)
    _check_against_smp(model, settings, whole)
    record = json.dumps(smp_record(model, settings, folder), indent=2)
    files = {folder / MODEL_NAME: _saved(whole), folder / ENCODER_NAME: _saved(encoder),
             folder / RECORD_NAME: record.encode("utf-8")}
    _write_together(files)
    return list(files)


class NormalisedSmp(NormalisedNetwork):
    """An smp UNet with the input normalisation first, padding and cropping as pscl does: scriptable.

    Same contract as :class:`pscl.predict.export.NormalisedUNet` (``forward``, ``standardise``,
    ``network``): any input size works, since :meth:`network` pads the bottom and right to a
    multiple of the encoder's stride (reflection, or replication for an image smaller than the
    padding, with :func:`~pscl.models.smp_backbone.pad_to_multiple` as the backbone does), runs smp's encoder and
    decoder, crops the decoder's map back to the input's size and applies the head to it.
    """

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 per_image: bool = False) -> None:
        super().__init__(mean, std, per_image)
        self.stride = int(backbone.stride)
        self.encoder = backbone.encoder
        self.decoder = backbone.decoder
        self.segmentation_head = backbone.classifier

    @torch.jit.export
    def network(self, x: torch.Tensor) -> torch.Tensor:
        """The smp UNet on an already normalised (B, C, H, W) input of any size."""
        height, width = x.shape[-2], x.shape[-1]
        features = self.encoder(pad_to_multiple(x, self.stride))
        decoded = self.decoder(features)[:, :, :height, :width]
        return self.segmentation_head(decoded)


def scriptable_encoder(backbone: nn.Module, source: Path | None) -> nn.Module:
    """smp's encoder as TorchScript can hold it: scripted if it can be (every smp encoder tried is),
    else traced and checked at a second input size (a trace that baked its example's size in would
    differ there); raises :class:`DataError` if neither works."""
    import warnings

    encoder = backbone.encoder
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.script(encoder)
    except Exception:  # noqa: BLE001 - any scripting failure: try a trace instead
        pass
    stride, channels = int(backbone.stride), int(backbone.in_channels)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(encoder, torch.randn(1, channels, 2 * stride, 2 * stride))
            probe = torch.randn(2, channels, 3 * stride, 5 * stride)
            same = all(torch.allclose(a, b, atol=1e-5) for a, b in zip(traced(probe), encoder(probe)))
    except Exception as exc:  # noqa: BLE001 - the encoder is not traceable either
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        same, detail = False, f"{type(exc).__name__}: {first}"
    else:
        detail = "its trace depends on the input size"
    if not same:
        raise DataError(f"the encoder {backbone.encoder_name} can be neither scripted nor traced for TorchScript "
                        f"({detail}); nothing was written", source,
                        "use --format smp (plain segmentation_models_pytorch weights) instead")
    return traced
