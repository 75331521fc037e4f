"""segmentation_models_pytorch (smp) networks as pscl backbones (``backbone=smp``, docs/backbones.md).

:class:`SmpBackbone` holds the three parts of an ``smp.Unet`` under pscl's names: ``encoder`` and
``decoder`` are smp's own modules (so their state-dict keys are the ones ``smp.Unet`` uses, and
the pretrained weights travel by the same ``encoder.`` / ``decoder.`` prefixes as the paper
UNet's), and ``classifier`` is smp's ``segmentation_head``. For the losses it exposes

* the bottleneck: the encoder's deepest map (stride ``encoder.output_stride``, 32 for a depth-5
  ResNet; the paper UNet's is 8): image-level losses pool it, DenseCL reads its grid;
* the decoder maps at 1/4, 1/2 and 1/1: the outputs of smp's last three decoder blocks, which the
  patch losses and the probe read.

An input whose sides are not multiples of the encoder's stride (whole test images) is padded on
the bottom and right by reflection and every output is cropped back, so any size works.
Grey micrographs (``in_channels=1``) use smp's adaptation of the first convolution (its RGB
filters summed when RGB weights are loaded). ``encoder_weights``: ``null`` (random), a local
file of encoder weights (read with ``weights_only=True``: the encoder's own state dict, or a whole
smp model's, whose ``encoder.`` keys are taken; it must hold every weight of this encoder with
its shape, classification-head keys aside), or ``imagenet`` (downloaded by smp: it needs network
access, and without it the run stops before training with a message).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pscl.errors import ConfigError, DataError
from pscl.models.base import BackboneFeatures, SegmentationBackbone

ARCHITECTURES = ("unet",)
# smp's default decoder widths for a depth-5 encoder (smp.Unet(...) without decoder_channels)
SMP_DECODER_CHANNELS = (256, 128, 64, 32, 16)
_WEIGHTS_FIX = ("set backbone.encoder_weights=null (random initialisation), or give a local file of this encoder's "
                "weights: backbone.encoder_weights=/path/to/weights.pth (docs/backbones.md says how to make one)")


def smp_encoder_names() -> list[str]:
    """Every encoder name smp knows (its own and ``tu-<timm name>`` ones are listed by smp)."""
    import segmentation_models_pytorch as smp

    return sorted(smp.encoders.get_encoder_names())


def _check_encoder_name(name: str) -> None:
    """Raise :class:`ConfigError` for a name smp does not know, listing the closest ones."""
    if name.startswith("tu-"):  # any timm model; timm itself checks the name
        import timm

        if timm.is_model(name[3:]):
            return
        close = difflib.get_close_matches(name[3:], timm.list_models(), n=5)
        raise ConfigError("backbone.encoder_name", f"{name!r} is not a timm model",
                          "closest: " + ", ".join(f"tu-{c}" for c in close) if close else None)
    names = smp_encoder_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "see smp's list of encoders"
        raise ConfigError("backbone.encoder_name", f"{name!r} is not an encoder segmentation_models_pytorch knows",
                          hint + " (or tu-<any timm model>)")


def read_encoder_weights(path: Path, encoder_name: str) -> dict[str, torch.Tensor]:
    """The encoder weights in a local file: a state dict of the encoder, or of a whole smp model
    (its ``encoder.`` keys are taken). Read with ``weights_only=True``: a pickle that would run
    code is refused. Raises :class:`DataError` naming the file."""
    from pscl.integrity.loading import load_weights

    blob = load_weights(path, _WEIGHTS_FIX)
    if isinstance(blob, dict) and isinstance(blob.get("state_dict"), dict):
        blob = blob["state_dict"]
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise DataError(f"is not a state dict of {encoder_name} encoder weights (a mapping of names to tensors)",
                        path, _WEIGHTS_FIX)
    if any(str(k).startswith("encoder.") for k in blob):
        blob = {k[len("encoder."):]: v for k, v in blob.items() if str(k).startswith("encoder.")}
    return {str(k): v for k, v in blob.items()}


class SmpBackbone(SegmentationBackbone):
    """An smp UNet (``arch="unet"``) with any smp encoder, as a pscl backbone (module docstring)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 4, arch: str = "unet",
                 encoder_name: str = "resnet18", encoder_depth: int = 5, encoder_weights: str | None = None,
                 decoder_channels: tuple[int, ...] | list[int] | None = None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        if arch not in ARCHITECTURES:
            raise ConfigError("backbone.arch", f"must be one of {ARCHITECTURES}, got {arch!r}",
                              "the patch losses need decoder maps at 1/4, 1/2 and 1/1, which smp's UNet has")
        depth = int(encoder_depth)
        if not 3 <= depth <= 5:
            raise ConfigError("backbone.encoder_depth", f"must be 3, 4 or 5, got {encoder_depth}",
                              "the decoder needs at least three blocks (1/4, 1/2, 1/1)")
        _check_encoder_name(str(encoder_name))
        if encoder_weights == "imagenet":
            _check_imagenet_weights(str(encoder_name))  # before building: some encoders are large
        widths = tuple(int(c) for c in (decoder_channels or SMP_DECODER_CHANNELS[-depth:]))
        if len(widths) != depth:
            raise ConfigError("backbone.decoder_channels",
                              f"needs one width per decoder block ({depth}), got {list(widths)}")
        model = smp.Unet(encoder_name=str(encoder_name), encoder_depth=depth, encoder_weights=None,
                         in_channels=int(in_channels), classes=int(num_classes), decoder_channels=widths)
        self.encoder = model.encoder
        self.decoder = model.decoder
        self.classifier = model.segmentation_head
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.encoder_name = str(encoder_name)
        self.encoder_depth = depth
        self.bottleneck_channels = int(self.encoder.out_channels[-1])
        self.decoder_channels = widths[-3:]
        self.stride = int(self.encoder.output_stride)
        if encoder_weights is not None:
            self._load_encoder_weights(str(encoder_weights))
        self.unused_encoder_parameters = freeze_unused_parameters(self.encoder, self.in_channels, 2 * self.stride)

    def _load_encoder_weights(self, weights: str) -> None:
        """Put ImageNet weights (downloaded by smp) or a local file's into the encoder."""
        if weights == "imagenet":
            state = self._download_imagenet()
            source: Any = f"ImageNet weights of {self.encoder_name}"
        else:
            path = encoder_weights_path(weights)
            if path is None:
                raise ConfigError("backbone.encoder_weights", f"is neither null, imagenet nor a file: {weights!r}",
                                  _WEIGHTS_FIX)
            state, source = read_encoder_weights(path, self.encoder_name), path
        state = _adapt_first_conv(self.encoder, state)  # a grey (or n-channel) encoder from RGB weights
        state = _matching_state(self.encoder, state, self.encoder_name, source)
        # nn.Module's own loading: smp's encoders override load_state_dict (dropping heads, renaming
        # keys, some without ``strict``), and the keys were matched above
        torch.nn.Module.load_state_dict(self.encoder, state, strict=False)

    def _download_imagenet(self) -> dict[str, torch.Tensor]:
        """smp's ImageNet weights for this encoder (3 input channels), or one message without network."""
        import segmentation_models_pytorch as smp

        weights: Any = True if self.encoder_name.startswith("tu-") else "imagenet"  # smp asks tu- encoders for True
        save = ("on a machine with network access, save them with `python -c \"import segmentation_models_pytorch "
                "as smp, torch; torch.save(smp.encoders.get_encoder("
                f"'{self.encoder_name}', depth={self.encoder_depth}, weights={weights!r}).state_dict(), "
                "'encoder.pth')\"`, copy encoder.pth to this machine and set "
                "backbone.encoder_weights=/path/to/encoder.pth; or set backbone.encoder_weights=null "
                "(random initialisation)")
        try:
            reference = smp.encoders.get_encoder(self.encoder_name, in_channels=3, depth=self.encoder_depth,
                                                 weights=weights)
        except Exception as exc:  # noqa: BLE001 - any download failure (DNS, HTTP, hub) is the same message
            raise ConfigError("backbone.encoder_weights",
                              f"imagenet weights of {self.encoder_name} could not be downloaded "
                              f"({_first_sentence(exc)})", save) from None
        return dict(reference.state_dict())

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(pad_to_multiple(x, self.stride))

    def forward_features(self, x: torch.Tensor) -> BackboneFeatures:
        """The bottleneck and the outputs of the last three decoder blocks, cropped to ``x``'s size."""
        height, width = x.shape[-2:]
        features = self._encode(x)
        shapes = [f.shape[2:] for f in features][::-1]
        skips = features[1:][::-1]
        y = self.decoder.center(skips[0])
        maps = []
        for i, block in enumerate(self.decoder.blocks):
            skip = skips[i + 1] if i + 1 < len(skips) else None
            y = block(y, shapes[i + 1][0], shapes[i + 1][1], skip_connection=skip)
            maps.append(y)
        decoder = [_crop(m, height, width, s) for m, s in zip(maps[-3:], self.decoder_strides)]
        return {"bottleneck": _crop(features[-1], height, width, self.stride), "decoder": decoder}

    def forward_bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's deepest map alone (the decoder is skipped)."""
        height, width = x.shape[-2:]
        return _crop(self._encode(x)[-1], height, width, self.stride)


def freeze_unused_parameters(encoder: torch.nn.Module, in_channels: int, side: int) -> list[str]:
    """Set ``requires_grad=False`` on the encoder parameters its forward never uses, and return
    their names. smp keeps every stage of an encoder whatever ``encoder_depth`` (a depth-3 ResNet
    still holds ``layer3`` and ``layer4``): such parameters never get a gradient, which stops DDP
    (it waits for every trainable parameter's gradient), and the optimiser would carry them for
    nothing. They stay in the state dict, so ``smp.Unet`` loads pscl's weights as before.

    Found by one forward of a ``side`` x ``side`` zero image in eval mode (BatchNorm statistics and
    the random stream untouched) and the gradient of its outputs, computed with ``autograd.grad``
    (no ``.grad`` is written). An encoder built on the ``meta`` device (to check a model file's
    shapes before its weights are read) is left as it is."""
    params = [(name, p) for name, p in encoder.named_parameters() if p.requires_grad]
    if not params or any(p.is_meta for _, p in params):  # a build on the meta device checks shapes only
        return []
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.enable_grad():
            outputs = [f for f in encoder(torch.zeros(1, in_channels, side, side)) if f.requires_grad]
            total = torch.stack([f.float().sum() for f in outputs]).sum()
            grads = torch.autograd.grad(total, [p for _, p in params], allow_unused=True)
    finally:
        encoder.train(was_training)
    unused = []
    for (name, p), grad in zip(params, grads):
        if grad is None:
            p.requires_grad_(False)
            unused.append(name)
    return unused


def encoder_weights_path(weights: str | None) -> Path | None:
    """The local file ``backbone.encoder_weights`` names (``~`` expanded), or None for ``null``,
    ``imagenet`` or a path that is not a file. The backbone reads it; the pretraining cache hashes it."""
    if weights is None or str(weights) == "imagenet":
        return None
    path = Path(str(weights)).expanduser()
    return path if path.is_file() else None


def pad_to_multiple(x: torch.Tensor, stride: int) -> torch.Tensor:
    """``x`` padded on the bottom and right to sides that are multiples of ``stride``: by reflection,
    or by replication where the image is too small to reflect. Scriptable: the TorchScript export
    (:class:`pscl.predict.export_smp.NormalisedSmp`) pads with it too."""
    height, width = x.shape[-2], x.shape[-1]
    bottom = (stride - height % stride) % stride
    right = (stride - width % stride) % stride
    if bottom > 0 or right > 0:
        mode = "reflect" if min(height, width) > max(bottom, right) else "replicate"
        x = F.pad(x, [0, right, 0, bottom], mode=mode)
    return x


def _crop(features: torch.Tensor, height: int, width: int, stride: int) -> torch.Tensor:
    """The part of a map at ``stride`` that covers an unpadded input of ``height`` x ``width``."""
    return features[..., : -(-height // stride), : -(-width // stride)]


def _adapt_first_conv(encoder: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RGB weights for an encoder built with other input channels: smp's own rule for its pretrained
    weights, applied to the first convolution whose weights have 3 input channels where the
    encoder's have another count (1 channel: summed over RGB; more: RGB repeated, scaled by 3/n)."""
    own = encoder.state_dict()
    adapted = dict(state)
    for key, weight in state.items():
        target = own.get(key)
        if target is None or weight.ndim != 4 or weight.shape[1] != 3 or target.shape[1] == 3 \
                or weight.shape[0] != target.shape[0]:
            continue
        channels = target.shape[1]
        if channels == 1:
            adapted[key] = weight.sum(1, keepdim=True)
        else:
            adapted[key] = weight[:, [i % 3 for i in range(channels)]] * (3 / channels)
        break
    return adapted


# keys of the classification heads that ImageNet checkpoints hold and smp's encoders drop
_HEAD_PREFIXES = ("fc.", "_fc.", "last_linear.", "classifier.", "head.", "linear.")


def _matching_state(encoder: torch.nn.Module, state: dict[str, torch.Tensor], encoder_name: str,
                    source: Any) -> dict[str, torch.Tensor]:
    """``state`` without classification-head keys, after checking that it holds every weight of
    ``encoder`` with its shape (BatchNorm's ``num_batches_tracked`` may be missing, as in older
    torchvision files). Raises :class:`DataError` naming ``source`` otherwise."""
    own = encoder.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(_HEAD_PREFIXES)}
    needed = [k for k in own if not k.endswith("num_batches_tracked")]
    missing = [k for k in needed if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        problems = [f"{len(missing)} of the encoder's {len(needed)} weights are missing (first: {missing[0]})"] \
            if missing else []
        problems += [f"{len(unexpected)} of the file's {len(state)} weights are not {encoder_name}'s "
                     f"(first: {unexpected[0]})"] if unexpected else []
        raise DataError(f"does not hold {encoder_name} encoder weights: {'; '.join(problems)}", source, _WEIGHTS_FIX)
    wrong = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        key = wrong[0]
        raise DataError(f"does not hold weights of this {encoder_name} encoder: {len(wrong)} tensors differ in shape "
                        f"(first: {key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}; a file of another "
                        "encoder, or of other input channels)", source, _WEIGHTS_FIX)
    return state


def _check_imagenet_weights(name: str) -> None:
    """Raise :class:`ConfigError` when smp (or timm, for ``tu-``) has no ImageNet weights for ``name``."""
    import segmentation_models_pytorch as smp

    if name.startswith("tu-"):
        import timm

        if not timm.models.is_model_pretrained(name[3:]):
            raise ConfigError("backbone.encoder_weights", f"timm has no pretrained weights for {name[3:]!r}",
                              "set backbone.encoder_weights=null, or choose a tu- encoder timm has weights for")
        return
    available = list(smp.encoders.encoders[name]["pretrained_settings"])
    if "imagenet" not in available:
        raise ConfigError("backbone.encoder_weights", f"smp has no imagenet weights for {name} "
                          f"(it has {', '.join(available) or 'none'})",
                          "set backbone.encoder_weights=null, or give a local file of this encoder's weights")


def _first_sentence(exc: BaseException) -> str:
    """The first sentence of an exception's message (at most 200 characters), or its type."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= 200 else sentence[:199] + "…"
