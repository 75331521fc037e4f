"""Segment a list of micrographs with a trained model and write masks, overlays and the tables.

Per image: ``masks/<id>.png`` (class indices), ``overlays/<id>.png`` (classes painted on the
micrograph) and, if asked, ``probabilities/<id>.npy`` (float16, C x H x W). For the batch:
``phases.csv``, ``particles.csv``, ``summary.csv``, ``summary.png`` (:mod:`pscl.quantify`),
``errors.csv`` (one line per image that could not be processed; the others go on) and
``predict.json`` (the model, the settings and the units).
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pscl.data.datasets import image_to_tensor
from pscl.data.io import read_image
from pscl.data.transforms import test_transform
from pscl.errors import DataError
from pscl.integrity import atomic_write_bytes, atomic_write_text
from pscl.predict.inputs import ImageMeta
from pscl.predict.model import TrainedModel
from pscl.predict.tiling import TileSettings, segment, window_count

log = logging.getLogger("pscl.predict")

ERROR_COLUMNS = ("image", "error")


@dataclass(frozen=True)
class PredictSettings:
    """Everything about a prediction batch besides the model and the images."""

    tiles: TileSettings = field(default_factory=TileSettings)
    crop_bottom: int = 0
    pixel_size_um: float | None = None
    min_particle_px: int = 4
    save_probabilities: bool = False
    device: str = "cpu"


@dataclass
class PredictOutcome:
    """What a batch did: the images segmented and those that failed, with the reason."""

    out: Path
    done: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def prepare_input(path: Path, model: TrainedModel, crop_bottom: int) -> tuple[np.ndarray, torch.Tensor]:
    """The micrograph as read for training (grey in [0, 1], for the overlay) and the normalised
    (C, H, W) tensor the network takes: the same reader and normalisation as the run's test."""
    image = read_image(path, model.in_channels)
    if crop_bottom:
        if crop_bottom >= image.shape[0]:
            raise DataError(f"crop_bottom={crop_bottom} removes the whole image ({image.shape[0]} px high)", path,
                            "give the height of the information band only")
        image = image[: image.shape[0] - crop_bottom]
    normalised = test_transform(model.mean, model.std)(image=image)["image"]
    return image.mean(axis=-1), image_to_tensor(normalised)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_image_outputs(out: Path, image_id: str, grey: np.ndarray, classes: np.ndarray,
                         probabilities: torch.Tensor | None) -> None:
    from pscl.quantify.colours import colour_overlay

    atomic_write_bytes(out / "masks" / f"{image_id}.png", _png_bytes(classes))
    atomic_write_bytes(out / "overlays" / f"{image_id}.png", _png_bytes(colour_overlay(grey, classes)))
    if probabilities is not None:
        buffer = io.BytesIO()
        np.save(buffer, probabilities.numpy().astype(np.float16))
        atomic_write_bytes(out / "probabilities" / f"{image_id}.npy", buffer.getvalue())


def predict_images(model: TrainedModel, images: list[Path], out: Path, settings: PredictSettings,
                   meta: dict[str, ImageMeta] | None = None) -> PredictOutcome:
    """Segment and quantify ``images`` into ``out`` (already prepared); see the module docstring."""
    from pscl.quantify import particle_rows, phase_rows

    meta = meta or {}
    outcome = PredictOutcome(out)
    phases: list[dict[str, Any]] = []
    particles: list[dict[str, Any]] = []
    infos: list[dict[str, Any]] = []
    network = model.backbone.to(settings.device).eval()
    started = time.time()
    for path in tqdm(images, desc="pscl-predict", unit="image", dynamic_ncols=True):
        image_id = path.stem
        try:
            grey, tensor = prepare_input(path, model, settings.crop_bottom)
            height, width = grey.shape
            windows = window_count(height, width, settings.tiles)
            if windows > 1:
                log.info("%s: %d x %d px in %d windows", image_id, width, height, windows)
            classes_t, probabilities = segment(network, tensor, settings.tiles, settings.device,
                                               keep_probabilities=settings.save_probabilities)
            del tensor  # large images: only the classes and the grey image are kept from here
            classes = classes_t.numpy()
            _write_image_outputs(out, image_id, grey, classes, probabilities)
        except DataError as exc:
            outcome.failed.append((str(path), str(exc).replace("\n", " ")))
            continue
        except (OSError, ValueError, RuntimeError, MemoryError) as exc:  # one image must not stop the batch
            outcome.failed.append((str(path), f"failed: {type(exc).__name__}: {str(exc)[:300]}".replace("\n", " ")))
            continue
        info = meta.get(image_id, ImageMeta())
        pixel_size = info.pixel_size_um if info.pixel_size_um is not None else settings.pixel_size_um
        phases += phase_rows(image_id, classes, model.class_names, pixel_size)
        particles += particle_rows(image_id, classes, model.class_names, pixel_size,
                                   min_area_px=settings.min_particle_px)
        infos.append({"image": image_id, "group": info.group, "pixel_size_um": pixel_size,
                      "height": height, "width": width, "source": str(path)})
        outcome.done.append(image_id)
    _write_tables(out, model, phases, particles, infos, outcome)
    _write_record(out, model, settings, infos, outcome, time.time() - started)
    return outcome


def _write_tables(out: Path, model: TrainedModel, phases: list[dict[str, Any]], particles: list[dict[str, Any]],
                  infos: list[dict[str, Any]], outcome: PredictOutcome) -> None:
    from pscl.quantify import PARTICLE_COLUMNS, PHASE_COLUMNS, plot_summary, summary_columns, summary_rows, write_csv

    write_csv(out / "phases.csv", phases, PHASE_COLUMNS)
    write_csv(out / "particles.csv", particles, PARTICLE_COLUMNS)
    write_csv(out / "errors.csv", [dict(zip(ERROR_COLUMNS, row)) for row in outcome.failed], ERROR_COLUMNS)
    if infos:
        summary = summary_rows(phases, particles, infos, model.class_names)
        write_csv(out / "summary.csv", summary, summary_columns(model.class_names))
        plot_summary(out / "summary.png", summary, particles, model.class_names)


def _write_record(out: Path, model: TrainedModel, settings: PredictSettings, infos: list[dict[str, Any]],
                  outcome: PredictOutcome, seconds: float) -> None:
    """``predict.json``: which model, which settings, which units; enough to redo the batch."""
    sized = [i for i in infos if i["pixel_size_um"] is not None]
    record = {
        "model": str(model.source),
        "method": model.method,
        "class_names": list(model.class_names),
        "in_channels": model.in_channels,
        "normalisation": {"mean": list(model.mean), "std": list(model.std)},
        "settings": {**asdict(settings), "tiles": asdict(settings.tiles)},
        "units": ("um" if len(sized) == len(infos) and infos else "px" if not sized else "mixed: see pixel_size_um"),
        "images": infos,
        "failed": [{"image": image, "error": error} for image, error in outcome.failed],
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    atomic_write_text(out / "predict.json", json.dumps(record, indent=2))
