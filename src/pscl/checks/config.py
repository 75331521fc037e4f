"""Checked ranges for every user-facing config value, tested once before anything is built.

A bad value stops the run at once with one line naming the key, the allowed range and the value
(:class:`~pscl.errors.ConfigError`, exit 2), instead of a traceback minutes later. The modules keep
their own checks for callers that build them without a config.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pscl.constants import BOTTLENECK_STRIDE, MIN_IMAGE_SIDE
from pscl.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    """``key`` must be a ``kind`` (int or float) within [low, high] (None: unbounded); open bounds
    are strict; ``nullable`` accepts null; ``only_if``: checked only when that key is set."""

    key: str
    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    only_if: str | None = None

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            bounds = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            bounds = f"{'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            bounds = f"{'<' if self.high_open else '<='} {self.high:g}"
        else:
            bounds = ""
        return f"must be {what} {bounds}".rstrip() + (" or null" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


def _rules() -> tuple[Rule, ...]:
    positive_int = {"kind": int, "low": 1}
    count = {"kind": int, "low": 0}
    fraction = {"kind": float, "low": 0, "high": 1}
    learning_rate = {"kind": float, "low": 0, "high": 10, "low_open": True}
    return (
        Rule("seed", **count),
        Rule("data.label_seed", **count),
        Rule("data.split_seed", **count),
        Rule("data.crop_size", int, MIN_IMAGE_SIDE, nullable=True),
        Rule("data.batch_size", **positive_int),
        Rule("data.test_batch_size", **positive_int),
        Rule("data.samples_per_epoch", **positive_int),
        Rule("data.unlabeled_batch_size", **positive_int),
        Rule("data.num_workers", **count),
        Rule("data.jitter", **fraction),
        Rule("data.test_fraction", float, 0, 1, low_open=True, high_open=True),
        Rule("data.val_fraction", float, 0, 1, high_open=True),
        Rule("trainer.max_epochs", **positive_int),
        Rule("method.pretrain_epochs", **positive_int, only_if="method.pretrain"),
        # null: the length is method.pretrain_epochs; set, it wins over them
        Rule("method.pretrain_steps", **positive_int, nullable=True, only_if="method.pretrain"),
        # lightly's losses refuse |temperature| < 1e-8; below 1e-3 the logits overflow anyway
        Rule("method.temperature", float, 1e-3, 100),
        Rule("method.global_local_ratio", **fraction),
        Rule("method.momentum", float, 0, 1, high_open=True),
        Rule("method.queue_size", **positive_int),
        Rule("method.dense_weight", **fraction),
        Rule("method.finetune.encoder_lr", **learning_rate),
        Rule("method.finetune.decoder_lr", **learning_rate),
        Rule("method.pretrain.lr", **learning_rate),
        Rule("finetune.module.ce_weight", float, 0),
        Rule("finetune.module.dice_weight", float, 0),
        Rule("finetune.module.encoder_warmup_epochs", **count),
        Rule("sampling.top_k", **positive_int),
        Rule("sampling.sample_ratio", **positive_int),
        Rule("probe.pixels_per_class", **positive_int),
        Rule("probe.l2", float, 0),
        Rule("probe.max_iter", **positive_int),
        Rule("probe.every_n_epochs", **count),
        Rule("checkpoint.pretrain_every_n_epochs", **count),
        Rule("checkpoint.finetune_every_n_epochs", **count),
    )


CONFIG_RULES: tuple[Rule, ...] = _rules()
_MISSING = object()


def _example(rule: Rule) -> str:
    if rule.low is None:
        return "0"
    value = rule.low if not rule.low_open else (rule.low + (rule.high if rule.high is not None else 1)) / 2
    return str(int(value)) if rule.kind is int else f"{value:g}"


def check_config(cfg: DictConfig, rules: tuple[Rule, ...] = CONFIG_RULES,
                 select: Callable[[DictConfig, str], Any] | None = None) -> None:
    """Raise :class:`ConfigError` for the first value of ``cfg`` outside its rule (absent keys pass)."""
    for rule in rules:
        value = OmegaConf.select(cfg, rule.key, default=_MISSING, throw_on_missing=False) if select is None \
            else select(cfg, rule.key)
        if value is _MISSING or (rule.only_if and OmegaConf.select(cfg, rule.only_if, default=None) is None):
            continue
        if not rule.accepts(value):
            raise ConfigError(rule.key, f"{rule.describe()}, got {value!r}", f"e.g. {rule.key}={_example(rule)}")


def _pretraining_class(cfg: DictConfig) -> type | None:
    """The class of the method's pretraining module, or None if it has none (or it cannot be found:
    building it reports that)."""
    import hydra

    target = OmegaConf.select(cfg, "method.pretrain._target_", default=None)
    if target is None:
        return None
    try:
        return hydra.utils.get_class(str(target))
    except ImportError:
        return None


def pretrains(cfg: DictConfig) -> bool:
    """True when this run pretrains: the method has a pretraining stage, and neither
    ``stage=finetune`` nor ``pretrained_ckpt`` skips it."""
    return (OmegaConf.select(cfg, "method.pretrain", default=None) is not None
            and str(cfg.get("stage", "both")) != "finetune" and not cfg.get("pretrained_ckpt"))


def check_batch_sizes(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` when training batches are too small for BatchNorm to train on.

    A method whose projection head normalises pooled features over the batch (SimCLR, BYOL:
    ``min_batch_size`` of the module class) needs two pool images per batch; so does every stage
    whose ``data.crop_size`` leaves the bottleneck 1x1 px (at the configured backbone's stride,
    :func:`bottleneck_stride`). With whole images (``data.crop_size``
    null) the data module checks fine-tuning batches, as it knows the image sizes.
    """
    if pretrains(cfg):
        _check_pretraining_batches(cfg)
    if str(cfg.get("stage", "both")) != "pretrain":
        _check_single_crops(cfg, "data.batch_size")


def _check_pretraining_batches(cfg: DictConfig) -> None:
    """``data.unlabeled_batch_size`` against the method's ``min_batch_size`` and the crop."""
    module_class = _pretraining_class(cfg)
    size = OmegaConf.select(cfg, "data.unlabeled_batch_size", default=None)
    if module_class is None or not isinstance(size, int):
        return
    method = OmegaConf.select(cfg, "method.name", default="this method")
    needed = int(getattr(module_class, "min_batch_size", 1))
    if size < needed:
        raise ConfigError("data.unlabeled_batch_size",
                          f"is {size} but method={method} needs at least {needed} images per pretraining batch: "
                          "BatchNorm in its projection head cannot train on a single image",
                          f"set data.unlabeled_batch_size={needed} or more (the pool must hold that many images)")
    _check_single_crops(cfg, "data.unlabeled_batch_size")


def _check_single_crops(cfg: DictConfig, key: str) -> None:
    """Refuse a batch size ``key`` of 1 when ``data.crop_size`` leaves the bottleneck 1x1 px."""
    size = OmegaConf.select(cfg, key, default=None)
    crop = OmegaConf.select(cfg, "data.crop_size", default=None)
    if isinstance(size, int) and size < 2 and isinstance(crop, int) and bottleneck_side(cfg, crop) < 2:
        stride = bottleneck_stride(cfg)
        of = f" (1/{stride} of the input with backbone.encoder_depth={stride.bit_length() - 1})" \
            if _pads(cfg) else ""
        raise ConfigError(key, f"is {size} but data.crop_size={crop} leaves the network's bottleneck 1x1 px{of}, and "
                               "BatchNorm cannot train on a single value per channel",
                          f"set {key}=2 or more, or data.crop_size={2 * stride} or more")


# the configured backbones whose input is padded to a multiple of their stride (their bottleneck
# covers a partial last cell), against pscl's UNet, which drops the rows and columns that do not fill one
PADDING_BACKBONES = ("pscl.models.smp_backbone.SmpBackbone",)
SMP_ENCODER_DEPTH = 5  # conf/backbone/smp.yaml's encoder_depth
SMP_DEPTHS = (3, 4, 5)  # the depths SmpBackbone takes (it refuses any other when it is built)


def bottleneck_stride(cfg: DictConfig) -> int:
    """The down-sampling of the configured backbone's bottleneck (``cfg.backbone``):
    2**``backbone.encoder_depth`` for ``backbone=smp`` (32 at depth 5; a depth it does not take
    counts as 5 here, and building the backbone refuses it), else pscl's UNet's
    :data:`~pscl.constants.BOTTLENECK_STRIDE` (8)."""
    if _pads(cfg):
        depth = OmegaConf.select(cfg, "backbone.encoder_depth", default=None)
        return 2 ** (int(depth) if depth in SMP_DEPTHS and not isinstance(depth, bool) else SMP_ENCODER_DEPTH)
    return BOTTLENECK_STRIDE


def single_crop_side(cfg: DictConfig) -> int:
    """The smallest input side whose bottleneck is 2 px for the configured backbone (16 for pscl's
    UNet, 33 for smp at depth 5): a batch of one smaller crop cannot train BatchNorm. A padding
    backbone's bottleneck gains its second pixel one pixel past its stride (:func:`bottleneck_side`
    rounds up), the UNet's at twice its stride (it rounds down)."""
    stride = bottleneck_stride(cfg)
    return stride + 1 if _pads(cfg) else 2 * stride


def bottleneck_side(cfg: DictConfig, side: int) -> int:
    """Pixels of the configured backbone's bottleneck along an input side of ``side`` px: rounded
    up for a backbone that pads its input (smp), down for pscl's UNet."""
    stride = bottleneck_stride(cfg)
    return -(-side // stride) if _pads(cfg) else side // stride


def _pads(cfg: DictConfig) -> bool:
    return OmegaConf.select(cfg, "backbone._target_", default=None) in PADDING_BACKBONES
