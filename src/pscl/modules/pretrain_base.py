"""What every pretraining method shares: the backbone, the optimiser, logging, the transfer.

:class:`PretrainModule` holds the backbone (whose ``encoder``/``decoder`` weights are handed to
fine-tuning), builds Adam over all trainable parameters and logs ``pretrain/...`` values.
:class:`MomentumPretrainModule` adds an EMA copy of chosen modules and its momentum schedule.
A method adds only its heads, its pretraining views and its loss.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from pscl.errors import ConfigError
from pscl.models.base import SegmentationBackbone


class PretrainModule(pl.LightningModule):
    """Base class of the pretraining methods.

    By default a method sees batches ``{"unlabeled": {"x0", "x1", "group", "id"}}`` of two
    independently augmented views (:class:`pscl.data.independent_views.TwoAugmentedViews`, options in
    ``view_options``); PSCL overrides :meth:`views` and also receives the annotated image.
    """

    #: whether pretraining depends on the round's annotated images (then it is rerun per round
    #: and also gets a ``"labeled"`` batch; otherwise it is reused across rounds, pscl.training.pretrain_cache)
    uses_labels: bool = False
    #: whether the method's loss reaches the decoder; if not, the decoder is frozen (not in the
    #: optimiser, no gradient), which also keeps DDP from waiting for gradients that never come
    trains_decoder: bool = False
    #: the fewest pool images a pretraining batch may hold (data.unlabeled_batch_size; checked before
    #: training by pscl.checks.config.check_batch_sizes)
    min_batch_size: int = 1

    def __init__(self, backbone: SegmentationBackbone,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None, lr: float = 1e-4,
                 view_options: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not lr > 0:
            raise ConfigError("method.lr", f"learning rate must be > 0, got {lr}")
        self.backbone = backbone
        # the classifier is never pretrained nor transferred; the decoder only by methods that use it
        backbone.classifier.requires_grad_(False)
        if not self.trains_decoder:
            backbone.decoder.requires_grad_(False)
        self.optimizer_factory = optimizer or torch.optim.Adam
        self.lr = lr
        self.view_options = dict(view_options or {})

    def views(self, mean: tuple[float, ...], std: tuple[float, ...], crop_size: int | None) -> Callable:
        """The callable that turns one image (and, if given, its mask) into a pretraining item."""
        from pscl.data.independent_views import TwoAugmentedViews

        try:
            return TwoAugmentedViews(crop_size, mean, std, **self.view_options)
        except (TypeError, ValueError) as exc:
            raise ConfigError("method.pretrain.view_options", str(exc),
                              "valid keys: scale, jitter, blur_p") from None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck grid of the (query) backbone: the encoder alone, the decoder is not run."""
        return self.backbone.forward_bottleneck(x)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return self.optimizer_factory(params, lr=self.lr)

    def transferable_state_dict(self) -> dict[str, torch.Tensor]:
        """Encoder and decoder weights of the (query) backbone, for fine-tuning."""
        return self.backbone.transferable_state_dict()

    def log_losses(self, values: Mapping[str, torch.Tensor], batch_size: int) -> None:
        self.log("pretrain/loss", values["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict({f"pretrain/{k}": v for k, v in values.items() if k != "loss"}, batch_size=batch_size)


class MomentumPretrainModule(PretrainModule):
    """Adds EMA copies (``<name>_momentum``) of chosen sub-modules and a momentum schedule.

    ``momentum`` is the EMA coefficient m (key <- m * key + (1 - m) * query); with
    ``momentum_schedule='cosine'`` it rises from ``momentum`` to 1 over training (BYOL).
    """

    def __init__(self, *args: Any, momentum: float = 0.99, momentum_schedule: str = "constant", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError("method.momentum", f"must lie in [0, 1), got {momentum}")
        if momentum_schedule not in {"constant", "cosine"}:
            raise ConfigError("method.momentum_schedule", f"must be constant or cosine, got {momentum_schedule}")
        self.momentum = momentum
        self.momentum_schedule = momentum_schedule
        self._momentum_pairs: list[tuple[str, str]] = []

    def add_momentum_copy(self, name: str) -> nn.Module:
        """Create ``<name>_momentum`` as a frozen copy of sub-module ``name`` and register the pair."""
        copy_module = copy.deepcopy(getattr(self, name))
        for p in copy_module.parameters():
            p.requires_grad_(False)
        setattr(self, f"{name}_momentum", copy_module)
        self._momentum_pairs.append((name, f"{name}_momentum"))
        return copy_module

    def current_momentum(self) -> float:
        trainer = self._trainer  # None outside a Trainer (then the base momentum applies)
        if self.momentum_schedule == "constant" or trainer is None or not trainer.estimated_stepping_batches:
            return self.momentum
        return float(cosine_schedule(int(trainer.global_step), int(trainer.estimated_stepping_batches),
                                     self.momentum, 1.0))

    @torch.no_grad()
    def update_momentum_copies(self) -> float:
        """EMA step for every registered pair (parameters only; buffers such as BN statistics are the key's own)."""
        m = self.current_momentum()
        for online, target in self._momentum_pairs:
            update_momentum(getattr(self, online), getattr(self, target), m)
        return m
