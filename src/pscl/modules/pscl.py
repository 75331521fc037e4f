"""PSCL pretraining: image-level plus patch-sampled, multi-scale contrastive learning.

One training step, in the order of the paper (spec §12):

1. **Views.** Each batch holds the round's annotated image (index 0, with its mask) and the
   unlabelled images, each as view 1 (photometric jitter) and view 2 (jitter, flip, rot90,
   crop, resize) with the geometry of view 2 (:class:`pscl.data.views_with_geometry.TwoViews`).
2. **Network.** The UNet and the projection heads (:class:`pscl.models.heads.PSCLHeads`) give
   an image embedding and dense embeddings at 1/4, 1/2 and 1/1 resolution. SimCLR variant: one
   shared network for both views; MoCo variant: view 2 goes through an EMA key network.
3. **Patches** (:func:`pscl.contrastive.patches.sample_patches`): per scale, ``top_k * 2**s``
   cells per class on the annotated image from its mask, and on each unlabelled image the cells
   most similar to those templates, each cell once; positives are the same place in both views.
4. **Losses** (:mod:`pscl.contrastive.info_nce`): SimCLR - NT-Xent on images, class-masked NT-Xent
   on patches (negatives = other classes), averaged over scales. MoCo - soft-target contrastive
   losses against an image queue (same holding-time group = soft positive) and per-scale
   class-prototype queues (same class = soft positive).
5. **Total** = (1 - global_local_ratio) * image loss + global_local_ratio * patch loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from pscl.contrastive.info_nce import (
    class_masked_nt_xent,
    class_prototypes,
    gather,
    image_queue_targets,
    nt_xent,
    patch_weights,
    prototype_queue_targets,
    soft_contrastive_loss,
)
from pscl.contrastive.patches import PatchSample, gather_rows, sample_patches
from pscl.contrastive.queues import FeatureQueue
from pscl.data.views_with_geometry import TwoViews
from pscl.errors import ConfigError
from pscl.models.base import SegmentationBackbone
from pscl.models.checkpointing import checkpoint_block
from pscl.models.heads import PSCLHeads
from pscl.modules.pretrain_base import MomentumPretrainModule

VARIANTS = ("simclr", "moco")


class PSCLModule(MomentumPretrainModule):
    """PSCL-SimCLR (``variant='simclr'``) and PSCL-MoCo (``variant='moco'``)."""

    uses_labels = True
    trains_decoder = True

    def __init__(
        self,
        backbone: SegmentationBackbone,
        num_classes: int,
        variant: str = "simclr",
        global_local_ratio: float = 0.7,
        temperature: float = 0.5,
        top_k: int = 4,
        sample_ratio: int = 2,
        scales: Sequence[int] = (0, 1, 2),
        guided: bool = True,
        queue_size: int = 504,
        momentum: float = 0.99,
        image_group_decay: float = 0.2,
        patch_group_decay: float = 0.5,
        recency_decay: float = 0.2,
        head_hidden_dim: int = 128,
        head_out_dim: int = 64,
        head_groups: int = 4,
        jitter: float = 0.2,
        crop_min: float = 0.8,
        gather_distributed: bool = True,
        recompute_views: bool = False,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        lr: float = 1e-4,
    ) -> None:
        super().__init__(backbone, optimizer=optimizer, lr=lr, momentum=momentum)
        if variant not in VARIANTS:
            raise ConfigError("method.variant", f"must be one of {VARIANTS}, got {variant!r}")
        if not 0.0 <= global_local_ratio <= 1.0:
            raise ConfigError("method.global_local_ratio", f"must lie in [0, 1], got {global_local_ratio}")
        if not temperature > 0:
            raise ConfigError("method.temperature", f"must be > 0, got {temperature}")
        if int(top_k) < 1:
            raise ConfigError("sampling.top_k", f"must be >= 1, got {top_k}")
        if int(sample_ratio) < 1:
            raise ConfigError("sampling.sample_ratio", f"must be >= 1, got {sample_ratio}")
        scales = tuple(int(s) for s in scales)
        if not scales or any(s not in (0, 1, 2) for s in scales) or len(set(scales)) != len(scales):
            raise ConfigError("sampling.scales", f"must be distinct values among 0 (1/4), 1 (1/2), 2 (1/1), got {list(scales)}")
        if variant == "moco" and int(queue_size) < 1:
            raise ConfigError("method.queue_size", f"must be >= 1, got {queue_size}")
        if not 0.0 < crop_min <= 1.0:
            raise ConfigError("method.crop_min", f"must lie in (0, 1], got {crop_min}")
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.variant = variant
        self.num_classes = int(num_classes)
        self.scales = scales
        # dense heads only for the pretrained scales (an unused head would stall DDP)
        self.heads = PSCLHeads(backbone.bottleneck_channels, tuple(backbone.decoder_channels[s] for s in scales),
                               head_hidden_dim, head_out_dim, head_groups)
        if variant == "moco":
            self.add_momentum_copy("backbone")
            self.add_momentum_copy("heads")
            self.image_queue = FeatureQueue(int(queue_size), head_out_dim)
            # one prototype per class slot of every enqueued image (spec §5.3: 4 x 504 per scale)
            self.prototype_queues = torch.nn.ModuleList(
                FeatureQueue(int(queue_size) * self.num_classes, head_out_dim) for _ in scales)

    # ------------------------------------------------------------------ data
    def views(self, mean: tuple[float, ...], std: tuple[float, ...], crop_size: int | None) -> Callable:
        hp = self.hparams
        if crop_size is not None:
            self.check_crop_size(int(crop_size))
        return TwoViews(crop_size, mean, std, jitter=hp.jitter, crop_min=hp.crop_min)

    def check_crop_size(self, crop_size: int) -> None:
        """Every scale's smallest crop grid must hold the C * K_s cells sampled there."""
        for scale in self.scales:
            grid = crop_size // (4 // 2**scale)
            cells = int(self.hparams.crop_min * grid) ** 2
            needed = self.num_classes * self.patches_per_class(scale)
            if cells < needed:
                raise ConfigError(
                    "sampling.top_k",
                    f"samples {needed} cells ({self.num_classes} classes x {self.patches_per_class(scale)}) at scale "
                    f"{scale}, but a {crop_size} px crop gives only {cells} cells there after view-2 cropping",
                    "lower sampling.top_k or sampling.sample_ratio, or raise data.crop_size")

    def patches_per_class(self, scale: int) -> int:
        """K_s = top_k * sample_ratio ** s."""
        return int(self.hparams.top_k) * int(self.hparams.sample_ratio) ** scale

    # ------------------------------------------------------------------ step
    @staticmethod
    def _join(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Annotated sample first, then the unlabelled images: one batch of views and geometry."""
        labeled, unlabeled = batch["labeled"], batch["unlabeled"]
        joined = {key: torch.cat([labeled[key][:1], unlabeled[key]]) for key in ("x0", "x1", "flip", "rot_k", "crop", "group")}
        joined["mask"] = labeled["mask"][0]
        return joined

    def _sample(self, scale_index: int, match_map: torch.Tensor, views: dict[str, torch.Tensor]) -> PatchSample:
        scale = self.scales[scale_index]
        try:
            return sample_patches(match_map, views["flip"], views["rot_k"], views["crop"], views["mask"],
                                  self.num_classes, self.patches_per_class(scale), guided=bool(self.hparams.guided))
        except ValueError as exc:  # too few cells for the requested patches
            raise ConfigError("sampling.top_k", str(exc), "lower sampling.top_k or raise data.crop_size") from None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        views = self._join(batch)
        losses = self._simclr_step(views) if self.variant == "simclr" else self._moco_step(views)
        ratio = float(self.hparams.global_local_ratio)
        losses["loss"] = (1 - ratio) * losses["image_loss"] + ratio * losses["patch_loss"]
        self.log_losses(losses, batch_size=views["x0"].shape[0])
        return losses["loss"]

    def _decoder_maps(self, features: dict) -> list[torch.Tensor]:
        return [features["decoder"][s] for s in self.scales]

    def _view_features(self, x: torch.Tensor) -> dict:
        """Backbone features of one view; with ``recompute_views`` its activations are not kept but
        recomputed in backward, one view at a time (about half the peak memory for one more
        forward pass). BatchNorm running statistics are updated once, not again when recomputing."""
        if not (self.hparams.recompute_views and torch.is_grad_enabled()):
            return self.backbone.forward_features(x)

        def run(inp: torch.Tensor) -> tuple[torch.Tensor, ...]:
            feats = self.backbone.forward_features(inp)
            return (feats["bottleneck"], *feats["decoder"])

        bottleneck, *decoder = checkpoint_block(run, x, stats_of=self.backbone)
        return {"bottleneck": bottleneck, "decoder": list(decoder)}

    def _simclr_step(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hp = self.hparams
        feats0 = self._view_features(views["x0"])
        feats1 = self._view_features(views["x1"])
        z0, z1 = self.heads.global_head(feats0["bottleneck"]), self.heads.global_head(feats1["bottleneck"])
        image_loss = nt_xent(z0, z1, hp.temperature, gather_distributed=hp.gather_distributed)
        scale_losses = {}
        maps = zip(self._decoder_maps(feats0), self._decoder_maps(feats1), self.heads.dense_heads)
        for i, (dec0, dec1, head) in enumerate(maps):
            with torch.no_grad():  # view-2 embeddings of every cell, only to match cells to templates
                match_map = head(dec1)
            patches = self._sample(i, match_map, views)
            query = head.forward_rows(gather_rows(dec0, patches.image, patches.query_cell))
            key = head.forward_rows(gather_rows(dec1, patches.image, patches.key_cell))
            scale_losses[f"patch_loss_s{self.scales[i]}"] = class_masked_nt_xent(
                query, key, patches.slots, hp.temperature, gather_distributed=hp.gather_distributed)
        patch_loss = torch.stack(list(scale_losses.values())).mean()
        return {"image_loss": image_loss, "patch_loss": patch_loss, **scale_losses}

    def _moco_step(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        hp = self.hparams
        step = int(self.global_step)
        feats_q = self.backbone.forward_features(views["x0"])
        momentum = self.update_momentum_copies()  # before the keys are computed (spec §5.3)
        with torch.no_grad():
            feats_k = self.backbone_momentum.forward_features(views["x1"])
            out_k = self.heads_momentum(feats_k["bottleneck"], self._decoder_maps(feats_k))
        q_img = F.normalize(self.heads.global_head(feats_q["bottleneck"]), dim=1)
        k_img = F.normalize(out_k["z"], dim=1)
        groups = views["group"].long()
        queue = self.image_queue
        image_targets = image_queue_targets(groups, queue.group, queue.age(step), queue.valid, hp.image_group_decay)
        image_loss = soft_contrastive_loss(q_img, k_img, queue.features, image_targets, temperature=hp.temperature,
                                           bank_valid=queue.valid)
        batch = views["x0"].shape[0]
        scale_losses, enqueue = {}, []
        key_maps = out_k["dense"]
        for i, (dec_q, key_map, head) in enumerate(zip(self._decoder_maps(feats_q), key_maps,
                                                       self.heads.dense_heads)):
            patches = self._sample(i, key_map, views)
            # the query head runs on the sampled cells only; losses and matching normalise rows
            query = head.forward_rows(gather_rows(dec_q, patches.image, patches.query_cell))
            key = F.normalize(gather_rows(key_map, patches.image, patches.key_cell), dim=1)
            protos = self.prototype_queues[i]
            # a patch's targets depend only on its (class slot, image group): one row per distinct pair
            kinds, kind_of_row = torch.unique(torch.stack([patches.slots, groups[patches.image]], dim=1), dim=0,
                                              return_inverse=True)
            targets = prototype_queue_targets(kinds[:, 0], kinds[:, 1], protos.slot, protos.group,
                                              protos.age(step), protos.valid, hp.patch_group_decay, hp.recency_decay)
            # how genuine each annotated patch is (fillers of a rare class ~0), reused for every image
            weights = patch_weights(patches.values).flatten().repeat(batch)
            scale_losses[f"patch_loss_s{self.scales[i]}"] = soft_contrastive_loss(
                query, key, protos.features, targets, temperature=hp.temperature,
                bank_valid=protos.valid, row_weights=weights, target_rows=kind_of_row)
            enqueue.append(class_prototypes(key.view(batch, patches.num_classes, patches.k, -1), patches.values))
        patch_loss = torch.stack(list(scale_losses.values())).mean()
        self._enqueue(k_img, groups, enqueue, step)
        return {"image_loss": image_loss, "patch_loss": patch_loss, "momentum": torch.tensor(momentum), **scale_losses}

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor, groups: torch.Tensor, prototypes: list[torch.Tensor], step: int) -> None:
        """Push this step's image keys and class prototypes (gathered over DDP ranks)."""
        gather_fn = gather if self.hparams.gather_distributed else (lambda x: x)
        all_groups = gather_fn(groups)
        self.image_queue.enqueue(gather_fn(keys), all_groups, None, step)
        for queue, protos in zip(self.prototype_queues, prototypes):
            protos = gather_fn(protos)  # (B, C, D)
            batch, classes, dim = protos.shape
            slots = torch.arange(classes, device=protos.device).repeat(batch)
            queue.enqueue(protos.reshape(batch * classes, dim), all_groups.repeat_interleave(classes), slots, step)
