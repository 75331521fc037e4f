"""One probe of a frozen backbone on a round's data, and the random-initialisation floor.

The probe is fitted on the round's annotated image(s) only (``datamodule.labeled_ids``, whole
images, normalised like the test images) and scored on one evaluation split (``test`` for
reporting, ``val`` during protocol selection) with :class:`pscl.metrics.SegmentationMetrics`,
the fine-tuner's metrics. The backbone is put in eval mode and restored afterwards; the global
random state is left untouched, so a probe inside training changes nothing of the training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pscl.errors import ConfigError
from pscl.metrics import SegmentationMetrics
from pscl.models.base import SegmentationBackbone
from pscl.probe.features import FEATURE_CHOICES, dense_features
from pscl.probe.linear import fit_linear_probe, sample_pixels

SPLITS = ("test", "val")


@dataclass(frozen=True)
class ProbeSettings:
    """Fixed probe settings (``probe.*`` in the config); none is tuned on evaluation data."""

    features: str = "multiscale"
    pixels_per_class: int = 4096
    l2: float = 1e-3
    max_iter: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.features not in FEATURE_CHOICES:
            raise ConfigError("probe.features", f"must be one of {FEATURE_CHOICES}, got {self.features!r}")
        if int(self.pixels_per_class) < 1:
            raise ConfigError("probe.pixels_per_class", f"must be >= 1, got {self.pixels_per_class}")
        if float(self.l2) < 0:
            raise ConfigError("probe.l2", f"must be >= 0, got {self.l2}")
        if int(self.max_iter) < 1:
            raise ConfigError("probe.max_iter", f"must be >= 1, got {self.max_iter}")


def _eval_ids(datamodule: Any, split: str) -> Sequence[str]:
    if split not in SPLITS:
        raise ConfigError("eval.split", f"must be one of {SPLITS}, got {split!r}")
    ids = datamodule.index.test_ids if split == "test" else datamodule.index.val_ids
    if not ids:
        raise ConfigError("data.val_fraction", f"the probe evaluates on the {split} split, which is empty",
                          "set data.val_fraction>0 to carve a validation split from the training images")
    return ids


def probe_backbone(backbone: SegmentationBackbone, datamodule: Any, settings: ProbeSettings = ProbeSettings(),
                   split: str = "test") -> dict[str, Any]:
    """Fit the probe on ``backbone``'s features of the annotated images and score it on ``split``.

    Returns the metrics of :class:`~pscl.metrics.SegmentationMetrics` (``dice``, ``acc``, ...)
    plus ``features``, ``pixels`` (fitted), ``split`` and ``seconds``.
    """
    started = time.perf_counter()
    eval_ids = _eval_ids(datamodule, split)
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    generator = torch.Generator().manual_seed(int(settings.seed))
    num_classes = datamodule.num_classes
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            rows, labels = [], []
            annotated = datamodule.whole_image_dataset(datamodule.labeled_ids)
            for item in (annotated[k] for k in range(len(annotated))):  # indexed: the dataset cycles
                maps = dense_features(backbone, item["image"].unsqueeze(0).to(device), settings.features)[0].cpu()
                r, y = sample_pixels(maps, item["mask"], num_classes, int(settings.pixels_per_class), generator)
                rows.append(r)
                labels.append(y)
            probe = fit_linear_probe(torch.cat(rows), torch.cat(labels), num_classes, float(settings.l2),
                                     int(settings.max_iter),
                                     class_prior=torch.tensor(datamodule.labeled_pixel_counts(), dtype=torch.float32))
            metrics = SegmentationMetrics(datamodule.class_names)
            evaluated = datamodule.whole_image_dataset(eval_ids)
            for item in (evaluated[k] for k in range(len(evaluated))):
                maps = dense_features(backbone, item["image"].unsqueeze(0).to(device), settings.features).cpu()
                metrics.update(probe.predict(maps), item["mask"].unsqueeze(0))
            values = metrics.compute()
    finally:
        backbone.train(was_training)
    return {**values, "features": settings.features, "pixels": int(sum(len(y) for y in labels)),
            "split": split, "seconds": round(time.perf_counter() - started, 1)}


def random_init_probe(make_backbone: Callable[[], SegmentationBackbone], datamodule: Any,
                      settings: ProbeSettings = ProbeSettings(), split: str = "test", seed: int = 0) -> dict[str, Any]:
    """The floor: the same probe on a freshly initialised backbone (initialised under ``seed``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        backbone = make_backbone()
    return probe_backbone(backbone, datamodule, settings, split)


def settings_from_config(node: Any) -> ProbeSettings:
    """:class:`ProbeSettings` from the ``probe`` config node (unknown keys are an error)."""
    values = dict(node or {})
    values.pop("every_n_epochs", None)
    known = set(asdict(ProbeSettings()))
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"probe.{unknown[0]}", "is not a probe setting", f"valid keys: {', '.join(sorted(known))}, every_n_epochs")
    return ProbeSettings(**values)
