"""``pscl-export``: a trained run as a TorchScript file that runs with plain PyTorch.

    pscl-export <run folder | model.pt | checkpoint> --format torchscript [--out model.ts.pt]

The file takes (B, C, H, W) float32 images scaled to [0, 1] and returns (B, num_classes, H, W)
logits; the run's normalisation is inside it. ``<file>.json`` beside it states that contract
(channels, scaling of 8- and 16-bit files, grey conversion, class names, mean and std).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from pscl.errors import DataError, PsclError  # noqa: E402
from pscl.integrity import atomic_write_text  # noqa: E402
from pscl.predict.model import TrainedModel, load_trained_model  # noqa: E402

FORMATS = ("torchscript",)
CONTRACT_FORMAT = "pscl-torchscript/1"


class NormalisedUNet(nn.Module):
    """The UNet's blocks called in order, with the input normalisation first: scriptable."""

    def __init__(self, unet: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))
        encoder, decoder = unet.encoder, unet.decoder
        self.inc, self.down1, self.down2, self.down3 = encoder.inc, encoder.down1, encoder.down2, encoder.down3
        self.up1, self.up2, self.up3 = decoder.up1, decoder.up2, decoder.up3
        self.classifier = unet.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        return self.classifier(self.up3(self.up2(self.up1(x4, x3), x2), x1))


def contract(model: TrainedModel) -> dict[str, Any]:
    """What the exported file expects and returns, written next to it."""
    grey = ("RGB files become grey with the ITU-R BT.601 luma weights (0.299, 0.587, 0.114)"
            if model.in_channels == 1 else "grey files are replicated to 3 channels")
    return {
        "format": CONTRACT_FORMAT,
        "input": {
            "shape": f"(B, {model.in_channels}, H, W), float32, H and W >= 8 (any size; memory grows with H x W, "
                     "so cut large images into overlapping tiles of about 512 px)",
            "scaling": "8-bit files divided by 255, 16-bit files by 65535 (values in [0, 1]); " + grey,
            "normalisation": "applied inside the model: (x - mean) / std per channel",
            "mean": list(model.mean),
            "std": list(model.std),
        },
        "output": "(B, num_classes, H, W) float32 logits; argmax over dimension 1 gives the class index",
        "class_names": list(model.class_names),
        "method": model.method,
        "source": str(model.source),
        "example": "m = torch.jit.load(path); classes = m(x).argmax(1)",
    }


def export_torchscript(model: TrainedModel, path: Path) -> Path:
    """Script the model with its normalisation and write it and its contract (``<path>.json``)."""
    from pscl.models.unet import UNet

    if not isinstance(model.backbone, UNet):
        raise DataError(f"export supports pscl's UNet backbones, not {type(model.backbone).__name__}", model.source)
    wrapper = NormalisedUNet(model.backbone.float().cpu().eval(), model.mean, model.std).eval()
    scripted = torch.jit.script(wrapper)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    scripted.save(str(partial))
    os.replace(partial, path)
    atomic_write_text(contract_path(path), json.dumps(contract(model), indent=2))
    return path


def contract_path(path: Path) -> Path:
    """``model.ts.pt`` -> ``model.ts.json``."""
    return path.with_suffix(".json")


def run(argv: list[str] | None = None) -> int:
    """``pscl-export``; returns 0, or 2 on a user error."""
    parser = argparse.ArgumentParser(prog="pscl-export", description="Export a trained pscl run for plain PyTorch.")
    parser.add_argument("model", type=Path, help="a pscl run folder, its model.pt, or a checkpoint inside it")
    parser.add_argument("--format", choices=FORMATS, default="torchscript")
    parser.add_argument("--out", type=Path, default=None,
                        help="output file (default: <run>/export/model.ts.pt, or beside the given file)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    try:
        model = load_trained_model(args.model)
        base = args.model if args.model.is_dir() else args.model.parent
        out = args.out or base / "export" / "model.ts.pt"
        if out.exists() and not args.overwrite:
            raise DataError("already exists; nothing was written", out, "add --overwrite, or choose another --out")
        export_torchscript(model, out)
    except PsclError as exc:
        print(f"pscl-export: error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(f"pscl-export: wrote {out} and its input contract {contract_path(out)}", flush=True)
    return 0


def main() -> None:
    """Console entry point."""
    sys.exit(run())


if __name__ == "__main__":
    main()
