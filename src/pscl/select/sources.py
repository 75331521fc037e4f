"""Where ``pscl-select`` gets its patch features: ``--features intensity | random | <run folder>``.

Nothing of the pool is annotated yet, so the features are label-free:

* ``intensity`` - grey-level and texture statistics (:func:`pscl.select.features.intensity_features`);
* ``random`` - a randomly initialised pscl UNet (the paper's widths, grey input, seeded by ``--seed``);
* a run folder - its pretrained network (``pretrain/pretrained.pt`` or its last snapshot), read
  the safe way ``pscl-embed`` reads it (:mod:`pscl.embed.networks`); a run without pretraining
  (``method=supervised``) gives its fine-tuned ``model.pt``. Any run is accepted; one whose
  network learnt from annotations of this pool is named in a warning (:func:`label_warning`).

Inputs reach a network as it was trained: standardised by the pool's own mean and std (as
pretraining standardised its pool), each image by its own with ``data.normalisation=per_image``,
or by a fine-tuned model's recorded statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pscl.data.transforms import DATASET, PER_IMAGE, standardise, standardise_image
from pscl.embed.networks import Run
from pscl.errors import ConfigError
from pscl.models.base import SegmentationBackbone
from pscl.select.features import intensity_features, network_features

NAMED_SOURCES = ("intensity", "random")
# pretraining methods that never see a mask; every other method (pscl_*, supervised) learns from them
LABEL_FREE_METHODS = frozenset({"simclr", "moco", "byol", "densecl"})
FEATURES_FIX = ("give --features intensity, --features random, or a pscl run folder holding pretrain/pretrained.pt "
                "or model.pt")
# the paper's UNet (conf/backbone/unet.yaml) for --features random
RANDOM_WIDTHS = (32, 64, 128, 256)
_PLACEHOLDER_CLASSES = 2  # the classifier is never read: features stop at the decoder


@dataclass
class Source:
    """A feature extractor: ``name`` for the outputs; ``backbone`` None for intensity features.

    ``stats`` is a fine-tuned model's recorded (mean, std); None means the pool's own.
    """

    name: str
    in_channels: int = 1
    backbone: SegmentationBackbone | None = None
    normalisation: str = DATASET
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    run: Run | None = None
    used_labels: bool = False

    @property
    def needs_pool_statistics(self) -> bool:
        """True when inputs are standardised by the pool's mean and std (computed in a first pass)."""
        return self.backbone is not None and self.normalisation == DATASET and self.stats is None

    def patch_rows(self, image: np.ndarray, patch: int,
                   pool_stats: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """(cells, F) features of an (H, W, C) image in [0, 1] (see :mod:`pscl.select.features`)."""
        if self.backbone is None:
            return intensity_features(image, patch)
        if self.normalisation == PER_IMAGE:
            image = standardise_image(image)
        stats = self.stats if self.stats is not None else pool_stats
        if stats is not None:
            image = standardise(image, np.asarray(stats[0]), np.asarray(stats[1]))
        tensor = torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0)))
        return network_features(self.backbone, tensor, patch)


def resolve_source(value: str, seed: int, device: str = "cpu") -> Source:
    """The :class:`Source` that ``--features value`` names; a :class:`ConfigError` for anything else
    and a :class:`DataError` (from :func:`pscl.embed.networks.read_run`) for a folder that is no run."""
    if value == "intensity":
        return Source("intensity")
    if value == "random":
        return _on(Source(f"random UNet (seed {seed})", 1, random_unet(seed)), device)
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise ConfigError("--features", f"{value!r} is neither intensity, random nor a run folder"
                          + (" (it is a file)" if folder.exists() else " (no such folder)"), FEATURES_FIX)
    return _on(run_source(folder, seed), device)


def _on(source: Source, device: str) -> Source:
    """The source's network on ``device``, in eval mode (BatchNorm with its running statistics)."""
    if source.backbone is not None:
        source.backbone.to(device).eval()
    return source


def random_unet(seed: int) -> SegmentationBackbone:
    """The paper's UNet for grey images, initialised under ``seed`` without touching the global stream."""
    from pscl.models.unet import UNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return UNet(in_channels=1, num_classes=_PLACEHOLDER_CLASSES, widths=RANDOM_WIDTHS)


def run_source(folder: Path, seed: int) -> Source:
    """A run's pretrained network, or its fine-tuned model when it has no pretraining."""
    from pscl.embed.features import split_settings
    from pscl.embed.networks import pretrained_network, read_run

    run = read_run(folder)
    if run.pretrained is not None:
        settings = split_settings(run.config.get("data") if isinstance(run.config.get("data"), dict) else None)
        in_channels = int(settings.get("in_channels", 1))
        network = pretrained_network(run, in_channels, _PLACEHOLDER_CLASSES, seed)
        return Source(f"{network.name} ({run.folder})", in_channels, network.backbone,
                      str(settings.get("normalisation", DATASET)), None, run,
                      run.method not in LABEL_FREE_METHODS)
    from pscl.models.model_file import load_trained_model

    model = load_trained_model(run.folder)
    return Source(f"{run.method} fine-tuned ({run.folder})", model.in_channels, model.backbone,
                  model.normalisation, (tuple(model.mean), tuple(model.std)), run, True)


def label_warning(source: Source, pool_ids: Sequence[str], pool_root: str | None) -> str | None:
    """A warning naming the run when its network learnt from annotations of this pool, else None.

    "Of this pool": the run's ``labeled_ids`` (metrics.json) name pool images, or the run was
    trained on the pool's data folder, or it records neither (then it may have been).
    """
    run = source.run
    if run is None or not source.used_labels:
        return None
    labeled = [i for i in run.metrics.get("labeled_ids") or [] if isinstance(i, str)]
    shared = sorted(set(labeled) & set(pool_ids))
    same_root = bool(pool_root and run.data_root and _same_folder(run.data_root, pool_root))
    how = "its pretraining reads masks" if run.pretrained is not None else "its network is the fine-tuned one"
    if shared:
        what = f"the annotations of {len(shared)} image(s) of this pool ({', '.join(shared[:5])}" \
               + (" ..." if len(shared) > 5 else "") + ")"
    elif same_root:
        what = f"annotations of this pool's data folder {pool_root}"
    elif not labeled and not run.data_root:
        what = "annotations (its metrics.json does not say which, so possibly of this pool)"
    else:
        return None
    return (f"the run {run.folder} ({run.method}) learnt from {what}; {how}, so its features know those labels and "
            "this selection is not label-free (for a fair ranking use a SimCLR, MoCo, BYOL or DenseCL run)")


def _same_folder(a: str, b: str) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False
