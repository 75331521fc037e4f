"""``pscl-export``: a trained run as a TorchScript file that runs with plain PyTorch, or (``backbone=smp``
runs) as plain segmentation_models_pytorch weights.

    pscl-export <run folder | model.pt | checkpoint> --format torchscript [--out model.ts.pt]
    pscl-export <run folder | model.pt | checkpoint> --format smp [--out folder]

The file takes (B, C, H, W) float32 images scaled to [0, 1] and returns (B, num_classes, H, W)
logits; the run's normalisation is inside it (``per_image``: each image of the batch standardised
by its own per-channel mean and std, then mean and std). ``<file>.json`` beside it states that
contract (channels, scaling of 8- and 16-bit files, grey conversion, class names, normalisation,
mean and std).

Both files are checked before anything is written: an existing one is refused unless
``--overwrite`` (which replaces both), and neither may be the model file being exported. The
model is scripted and serialised in memory first, then both files are written side by side
and renamed together, so a crash leaves the earlier pair (or nothing), never half a pair or a
``*.partial`` file. Exit codes: 0 written, 2 a user error (nothing written), 1 a crash (a bug).

Both pscl's UNet and smp backbones (:mod:`pscl.predict.export_smp`) export to TorchScript with
the same contract (any input size; an smp network pads to its encoder's stride inside and crops
back). ``--format smp`` (smp backbones only) writes ``smp_model.pt``, ``encoder.pt`` and
``export.json`` into a folder: see :mod:`pscl.predict.export_smp`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from pscl.data.transforms import PER_IMAGE  # noqa: E402
from pscl.errors import EXIT_OK, DataError, run_parsed  # noqa: E402
from pscl.integrity import atomic_write_bytes  # noqa: E402
from pscl.models.model_file import TrainedModel, load_trained_model  # noqa: E402
from pscl.predict.normalised import NormalisedNetwork  # noqa: E402

FORMATS = ("torchscript", "smp")
CONTRACT_FORMAT = "pscl-torchscript/1"


class NormalisedUNet(NormalisedNetwork):
    """The UNet's blocks called in order, with the input normalisation first: scriptable
    (:class:`~pscl.predict.normalised.NormalisedNetwork`)."""

    def __init__(self, unet: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 per_image: bool = False) -> None:
        super().__init__(mean, std, per_image)
        encoder, decoder = unet.encoder, unet.decoder
        self.inc, self.down1, self.down2, self.down3 = encoder.inc, encoder.down1, encoder.down2, encoder.down3
        self.up1, self.up2, self.up3 = decoder.up1, decoder.up2, decoder.up3
        self.classifier = unet.classifier

    @torch.jit.export
    def network(self, x: torch.Tensor) -> torch.Tensor:
        """The UNet on an already normalised (B, C, H, W) input."""
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        return self.classifier(self.up3(self.up2(self.up1(x4, x3), x2), x1))


def input_scaling(model: TrainedModel) -> str:
    """How image files become the [0, 1] float input (the reader pscl trains with)."""
    grey = ("RGB files become grey with the ITU-R BT.601 luma weights (0.299, 0.587, 0.114)"
            if model.in_channels == 1 else "grey files are replicated to 3 channels")
    return "8-bit files divided by 255, 16-bit files by 65535 (values in [0, 1]); " + grey


def contract(model: TrainedModel) -> dict[str, Any]:
    """What the exported file expects and returns, written next to it."""
    from pscl.predict.export_smp import is_smp, smp_settings

    sizes = "any size"
    backbone: dict[str, Any] = {"class": str(model.backbone_config.get("_target_", type(model.backbone).__name__))}
    if is_smp(model):
        stride = int(model.backbone.stride)
        sizes = (f"any size: padded inside on the bottom and right by reflection to a multiple of {stride}, "
                 "the encoder's stride, and the outputs cropped back, as pscl does")
        backbone.update({"library": "segmentation_models_pytorch", "architecture": "smp.Unet",
                         **smp_settings(model), "encoder_stride": stride})
    return {
        "format": CONTRACT_FORMAT,
        "backbone": backbone,
        "input": {
            "shape": f"(B, {model.in_channels}, H, W), float32, H and W >= 8 ({sizes}; memory grows with H x W, "
                     "so cut large images into overlapping tiles of about 512 px)",
            "channels": model.in_channels,
            "scaling": input_scaling(model),
            "normalisation": model.normalisation,
            "normalisation_steps": _normalisation_steps(model),
            "mean": list(model.mean),
            "std": list(model.std),
        },
        "output": "(B, num_classes, H, W) float32 logits; argmax over dimension 1 gives the class index",
        "class_names": list(model.class_names),
        "method": model.method,
        "source": str(model.source),
        "example": "m = torch.jit.load(path); classes = m(x).argmax(1)",
    }


def _normalisation_steps(model: TrainedModel) -> str:
    """The contract's words for what the model does to its input before the network."""
    fixed = "(x - mean) / std per channel"
    if model.normalisation != PER_IMAGE:
        return f"applied inside the model: {fixed}"
    return ("applied inside the model: each image of the batch is first standardised by its own per-channel mean "
            f"and population std over H and W (a constant channel becomes 0), then {fixed}; so pass whole "
            "micrographs. To cut a large one into tiles, standardise it whole (s = m.standardise(x)) and call "
            "m.network((tile - mean) / std) on each tile of s: a tile's own statistics are not the ones the "
            "network was trained with")


def torchscript_wrapper(model: TrainedModel) -> nn.Module:
    """The run's network with its normalisation, as a module TorchScript can compile (eval mode, CPU)."""
    from pscl.predict.export_smp import NormalisedSmp, is_smp, scriptable_encoder

    backbone = model.backbone.float().cpu().eval()
    per_image = model.normalisation == PER_IMAGE
    if is_smp(model):
        wrapper = NormalisedSmp(backbone, model.mean, model.std, per_image=per_image)
        wrapper.encoder = scriptable_encoder(backbone, model.source)
        return wrapper.eval()
    return NormalisedUNet(backbone, model.mean, model.std, per_image=per_image).eval()


def export_torchscript(model: TrainedModel, path: Path) -> Path:
    """Script the model with its normalisation and write it and its contract (``<path>.json``), together."""
    _check_exportable(model)
    wrapper = torchscript_wrapper(model)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch 2.x calls torch.jit deprecated, once per scripted submodule
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..*deprecated", category=FutureWarning)
        scripted = torch.jit.script(wrapper)
        torch.jit.save(scripted, buffer)
    contract_text = json.dumps(contract(model), indent=2)
    _write_together({path: buffer.getvalue(), contract_path(path): contract_text.encode("utf-8")})
    return path


def _check_exportable(model: TrainedModel) -> None:
    """Only pscl's UNet and smp backbones are scripted; anything else is refused before a file is written."""
    from pscl.models.unet import UNet
    from pscl.predict.export_smp import is_smp

    if not isinstance(model.backbone, UNet) and not is_smp(model):
        raise DataError(f"export supports pscl's UNet and smp backbones, not {type(model.backbone).__name__}; "
                        "nothing was written", model.source)


def _write_together(files: dict[Path, bytes]) -> None:
    """Write every file or none: each to a hidden ``.<name>.partial`` beside it, then all renamed.

    A failure before the renames leaves the earlier files as they were; the staged files are removed.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for target, data in files.items():
            stage = target.with_name(f".{target.name}.partial")
            atomic_write_bytes(stage, data)
            staged.append((stage, target))
        for stage, target in staged:
            os.replace(stage, target)
    finally:
        for stage, _ in staged:
            stage.unlink(missing_ok=True)


def check_targets(out: Path, overwrite: bool, model: TrainedModel) -> None:
    """Refuse an ``--out`` whose model file or contract cannot or must not be written; nothing is written."""
    targets = [out, contract_path(out)]
    if out == contract_path(out):
        raise DataError("would be both the model file and its contract (<name>.json beside it)", out,
                        f"name the model file with another suffix, e.g. --out {out.with_suffix('.ts.pt')}")
    read = {Path(model.source).resolve()} if model.source is not None else set()
    for target in targets:
        if target.resolve() in read:
            raise DataError("is the model file being exported; writing it would destroy it; nothing was written",
                            target, f"choose another --out, e.g. --out {target.parent / 'export' / 'model.ts.pt'}")
        if target.is_dir():
            raise DataError("is a folder; --out names the model file to write", target,
                            f"e.g. --out {target / 'model.ts.pt'}")
    if out.parent.exists() and not out.parent.is_dir():
        raise DataError("is not a folder, so nothing can be written in it", out.parent, "choose another --out")
    existing = [t for t in targets if os.path.lexists(t)]
    if existing and not overwrite:
        also = f" (and {existing[1]})" if len(existing) > 1 else ""
        raise DataError(f"already exists{also}; nothing was written", existing[0],
                        "add --overwrite to replace the model file and its .json, or choose another --out")
    if existing and not _is_export_contract(contract_path(out)):
        # --overwrite replaces an earlier export only: a pair whose .json is pscl-export's contract
        raise DataError(f"exists and is not an earlier pscl-export (no pscl contract {contract_path(out).name} "
                        "beside it); --overwrite replaces only what pscl-export wrote; nothing was written",
                        existing[0], f"choose another --out, e.g. --out {out.parent / 'export' / 'model.ts.pt'}")


def _is_export_contract(path: Path) -> bool:
    """True when ``path`` is a contract file pscl-export wrote (JSON with its format tag)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("format") == CONTRACT_FORMAT


def contract_path(path: Path) -> Path:
    """``model.ts.pt`` -> ``model.ts.json``."""
    return path.with_suffix(".json")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``pscl-export``."""
    parser = argparse.ArgumentParser(prog="pscl-export", description="Export a trained pscl run for plain PyTorch.")
    parser.add_argument("model", type=Path, help="a pscl run folder, its model.pt, or a checkpoint inside it")
    parser.add_argument("--format", choices=FORMATS, default="torchscript",
                        help="torchscript (default): one file plain PyTorch runs, with the normalisation inside; "
                             "smp (backbone=smp runs only): smp_model.pt, encoder.pt and export.json for "
                             "segmentation_models_pytorch")
    parser.add_argument("--out", type=Path, default=None,
                        help="torchscript: the output file (default: <run>/export/model.ts.pt, or beside the given "
                             "file), its contract written beside it as <name>.json; smp: the output folder "
                             "(default: <run>/export)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export's files (refused otherwise)")
    return parser


def _export(args: argparse.Namespace) -> int:
    """The command's work: load, check both files, then write them."""
    model = load_trained_model(args.model)
    base = args.model if args.model.is_dir() else args.model.parent
    if args.format == "smp":
        from pscl.predict.export_smp import check_smp_targets, export_smp, refuse_non_smp

        refuse_non_smp(model, FORMATS)
        folder = args.out or base / "export"
        check_smp_targets(folder, args.overwrite, model)
        written = export_smp(model, folder)
        print(f"pscl-export: wrote {', '.join(str(p) for p in written)}", flush=True)
        return EXIT_OK
    _check_exportable(model)
    out = args.out or base / "export" / "model.ts.pt"
    check_targets(out, args.overwrite, model)
    export_torchscript(model, out)
    print(f"pscl-export: wrote {out} and its input contract {contract_path(out)}", flush=True)
    return EXIT_OK


def run(argv: list[str] | None = None) -> int:
    """``pscl-export``; returns 0, 2 on a user error (nothing written) or 1 on a crash."""
    return run_parsed("pscl-export", build_parser(), argv, _export)


def main() -> None:
    """Console entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
