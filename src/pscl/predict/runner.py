"""Segment a list of micrographs with a trained model and write masks, overlays and the tables.

Per image: ``masks/<id>.png`` (class indices), ``overlays/<id>.png`` (classes painted on the
micrograph) and, if asked, ``probabilities/<id>.npy`` (float16, C x H x W). For the batch:
``phases.csv``, ``particles.csv``, ``summary.csv``, ``summary.png`` (:mod:`pscl.quantify`),
``errors.csv`` (one line per image that could not be processed, whatever went wrong with it;
the others go on) and ``predict.json`` (the model, the settings, the units, and every file the
batch wrote: ``--overwrite`` replaces only those). The tables and ``predict.json`` are written
even when every image fails. ``predict.json`` is first written before the first image with
``"state": "running"`` and the files the batch may write, so that an interrupted batch can be
replaced with ``--overwrite``; it says ``"done"`` at the end.
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

from pscl.constants import MIN_IMAGE_SIDE
from pscl.data.datasets import image_to_tensor
from pscl.data.io import read_image
from pscl.data.transforms import normalise_whole_image
from pscl.errors import DataError
from pscl.integrity import atomic_write_bytes, atomic_write_text
from pscl.predict.inputs import RECORD_FILE, ImageMeta, recorded_outputs
from pscl.models.model_file import TrainedModel
from pscl.predict.tiling import TileSettings, segment, window_count, window_multiple

log = logging.getLogger("pscl.predict")

ERROR_COLUMNS = ("image", "error")
TABLE_FILES = ("phases.csv", "particles.csv", "summary.csv", "summary.png", "errors.csv")


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
    (C, H, W) tensor the network takes: the same reader and normalisation as the run's test.

    A ``per_image`` model standardises the whole micrograph (after ``crop_bottom``, so the
    information band does not count) before :func:`segment` cuts any tiles: every tile sees the
    statistics of its whole image, as training crops do."""
    image = read_image(path, model.in_channels)
    if crop_bottom:
        if crop_bottom >= image.shape[0]:
            raise DataError(f"crop_bottom={crop_bottom} removes the whole image ({image.shape[0]} px high)", path,
                            "give the height of the information band only")
        image = image[: image.shape[0] - crop_bottom]
    _check_size(path, image.shape[0], image.shape[1], crop_bottom)
    normalised = normalise_whole_image(image, model.mean, model.std, model.normalisation)
    return image.mean(axis=-1), image_to_tensor(normalised)


def _check_size(path: Path, height: int, width: int, crop_bottom: int) -> None:
    """Refuse an image smaller than the network takes, instead of torch's "Output size is too small"."""
    if min(height, width) < MIN_IMAGE_SIDE:
        cropped = f" after --crop-bottom {crop_bottom}" if crop_bottom else ""
        side = MIN_IMAGE_SIDE
        raise DataError(f"is {width}x{height} px{cropped}; pscl-predict needs at least {side}x{side} px "
                        "(pscl's smallest image side)", path,
                        "leave it out, or segment the larger micrograph it was cut from")


def image_outputs(image_id: str, save_probabilities: bool) -> list[str]:
    """The files (relative to ``--out``) written for one image."""
    files = [f"masks/{image_id}.png", f"overlays/{image_id}.png"]
    return files + [f"probabilities/{image_id}.npy"] if save_probabilities else files


def planned_outputs(images: list[Path], save_probabilities: bool) -> list[str]:
    """Every file (relative to ``--out``) a batch over ``images`` may write: checked before it starts."""
    per_image = [name for path in images for name in image_outputs(path.stem, save_probabilities)]
    return per_image + [*TABLE_FILES, RECORD_FILE]


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_bytes(probabilities: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, probabilities.numpy().astype(np.float16))
    return buffer.getvalue()


def _write_image_outputs(out: Path, image_id: str, grey: np.ndarray, classes: np.ndarray,
                         probabilities: torch.Tensor | None, written: list[str]) -> None:
    """Write one image's files, all or none, and add their names to ``written``."""
    from pscl.quantify.colours import colour_overlay

    contents = [_png_bytes(classes), _png_bytes(colour_overlay(grey, classes))]
    if probabilities is not None:
        contents.append(_npy_bytes(probabilities))
    done: list[str] = []
    try:
        for name, data in zip(image_outputs(image_id, probabilities is not None), contents):
            atomic_write_bytes(out / name, data)
            done.append(name)
    except BaseException:
        for name in done:  # a mask without its overlay would look like a finished image
            (out / name).unlink(missing_ok=True)
        raise
    written += done


def _failure(exc: Exception) -> str:
    """The ``errors.csv`` text of an image that failed: a user error's message, else the exception's type too."""
    if isinstance(exc, DataError):
        return str(exc).replace("\n", " ")
    return f"failed: {type(exc).__name__}: {str(exc)[:300]}".replace("\n", " ")


def predict_images(model: TrainedModel, images: list[Path], out: Path, settings: PredictSettings,
                   meta: dict[str, ImageMeta] | None = None) -> PredictOutcome:
    """Segment and quantify ``images`` into ``out`` (already prepared); see the module docstring."""
    meta = meta or {}
    outcome = PredictOutcome(out)
    rows = _Rows()
    written: list[str] = []
    earlier = recorded_outputs(out)
    network = model.backbone.to(settings.device).eval()
    started = time.time()
    planned = planned_outputs(images, settings.save_probabilities)
    _write_record(out, model, settings, rows.infos, outcome, 0.0, planned, earlier, "running")
    for path in tqdm(images, desc="pscl-predict", unit="image", dynamic_ncols=True):
        try:
            _predict_one(network, model, path, out, settings, meta.get(path.stem, ImageMeta()), rows, written)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong with one image must not lose the batch
            outcome.failed.append((str(path), _failure(exc)))
            continue
        outcome.done.append(path.stem)
    written += _write_tables(out, model, rows.phases, rows.particles, rows.infos, outcome)
    _write_record(out, model, settings, rows.infos, outcome, time.time() - started, written, earlier, "done")
    return outcome


@dataclass
class _Rows:
    """The table rows of the images done so far."""

    phases: list[dict[str, Any]] = field(default_factory=list)
    particles: list[dict[str, Any]] = field(default_factory=list)
    infos: list[dict[str, Any]] = field(default_factory=list)


def _predict_one(network: torch.nn.Module, model: TrainedModel, path: Path, out: Path, settings: PredictSettings,
                 info: ImageMeta, rows: _Rows, written: list[str]) -> None:
    """Segment one image, write its files and add its rows; the rows only once all of it worked."""
    from pscl.quantify import particle_rows, phase_rows

    image_id = path.stem
    grey, tensor = prepare_input(path, model, settings.crop_bottom)
    height, width = grey.shape
    windows = window_count(height, width, settings.tiles, window_multiple(network))
    if windows > 1:
        log.info("%s: %d x %d px in %d windows", image_id, width, height, windows)
    classes_t, probabilities = segment(network, tensor, settings.tiles, settings.device,
                                       keep_probabilities=settings.save_probabilities)
    del tensor  # large images: only the classes and the grey image are kept from here
    classes = classes_t.numpy()
    pixel_size = info.pixel_size_um if info.pixel_size_um is not None else settings.pixel_size_um
    phases = phase_rows(image_id, classes, model.class_names, pixel_size)
    particles = particle_rows(image_id, classes, model.class_names, pixel_size, min_area_px=settings.min_particle_px)
    _write_image_outputs(out, image_id, grey, classes, probabilities, written)
    rows.phases += phases
    rows.particles += particles
    rows.infos.append({"image": image_id, "group": info.group, "pixel_size_um": pixel_size,
                       "height": height, "width": width, "source": str(path)})


def _write_tables(out: Path, model: TrainedModel, phases: list[dict[str, Any]], particles: list[dict[str, Any]],
                  infos: list[dict[str, Any]], outcome: PredictOutcome) -> list[str]:
    """The tables (with their headers even when no image was done) and the summary figure; returns their names."""
    from pscl.quantify import PARTICLE_COLUMNS, PHASE_COLUMNS, plot_summary, summary_columns, summary_rows, write_csv

    summary = summary_rows(phases, particles, infos, model.class_names) if infos else []
    write_csv(out / "phases.csv", phases, PHASE_COLUMNS)
    write_csv(out / "particles.csv", particles, PARTICLE_COLUMNS)
    write_csv(out / "summary.csv", summary, summary_columns(model.class_names))
    write_csv(out / "errors.csv", [dict(zip(ERROR_COLUMNS, row)) for row in outcome.failed], ERROR_COLUMNS)
    written = ["phases.csv", "particles.csv", "summary.csv", "errors.csv"]
    if infos:  # a figure of nothing would only mislead
        plot_summary(out / "summary.png", summary, particles, model.class_names)
        written.append("summary.png")
    return written


def _write_record(out: Path, model: TrainedModel, settings: PredictSettings, infos: list[dict[str, Any]],
                  outcome: PredictOutcome, seconds: float, outputs: list[str], earlier: set[str],
                  state: str) -> None:
    """``predict.json``: which model, which settings, which units, enough to redo the batch; and the
    files it wrote (``outputs``; while ``state`` is "running", every file it may write) and the files
    an earlier batch recorded that are still there (``earlier_outputs``): ``--overwrite`` replaces only these."""
    sized = [i for i in infos if i["pixel_size_um"] is not None]
    outputs = sorted({*outputs, RECORD_FILE})
    kept = sorted(name for name in earlier - set(outputs) if (out / name).exists())
    record = {
        "state": state,
        "model": str(model.source),
        "method": model.method,
        "class_names": list(model.class_names),
        "in_channels": model.in_channels,
        "normalisation": {"mode": model.normalisation, "mean": list(model.mean), "std": list(model.std)},
        "settings": {**asdict(settings), "tiles": asdict(settings.tiles),
                     "window_multiple": window_multiple(model.backbone)},
        "units": ("um" if len(sized) == len(infos) and infos else "px" if not sized else "mixed: see pixel_size_um"),
        "images": infos,
        "failed": [{"image": image, "error": error} for image, error in outcome.failed],
        "outputs": outputs,
        "earlier_outputs": kept,
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    atomic_write_text(out / RECORD_FILE, json.dumps(record, indent=2))
