"""What ``pscl-select`` writes into ``--out``: ``selection.csv``, ``selection.json``, ``contact_sheet.png``.

:func:`check_out` runs before any image is read, so a refusal writes nothing; the three files
are rendered in memory (:func:`selection_table`, :func:`selection_record`,
:func:`contact_sheet`) and written together at the end, each atomically (:func:`write_outputs`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pscl.errors import DataError
from pscl.integrity import atomic_write_bytes, atomic_write_text

TABLE, RECORD, SHEET = "selection.csv", "selection.json", "contact_sheet.png"
OUTPUTS = (TABLE, RECORD, SHEET)
COLUMNS = ("rank", "image", "score", "cluster")
SHEET_COLUMNS = 5
DATA_PARTS = ("images", "masks", "unlabeled")  # what a data folder's index reads
THUMBNAIL_SIDE = 256  # px of the longer side of a contact-sheet image


@dataclass(frozen=True)
class Row:
    """One chosen image of the ranking (rank 1 first)."""

    rank: int
    image: str
    score: float | None
    cluster: int | None
    path: Path


def check_out(out: Path, overwrite: bool, inputs: Sequence[Path]) -> None:
    """Refuse an ``--out`` that could destroy or pollute something, before anything is read.

    Refused: a path that is a file; a pscl data folder, or its ``images/``, ``masks/`` or
    ``unlabeled/`` (anywhere in an authors'-layout folder); the folder of a pool image (the contact sheet would join the
    pool). An earlier selection there is replaced only with ``overwrite``; other files are left alone.
    """
    from pscl.data.authors_layout import is_authors_layout
    from pscl.select.pool import is_data_folder

    if out.exists() and not out.is_dir():
        raise DataError("exists and is not a folder; nothing was written", out, "give a folder for --out")
    resolved = out.expanduser().resolve()
    for above in (resolved, *resolved.parents):
        if is_data_folder(above) and (above == resolved or is_authors_layout(above)
                                      or any(resolved.is_relative_to(above / name) for name in DATA_PARTS)):
            raise DataError(f"is {'a' if above == resolved else 'inside the'} pscl data folder {above}; pscl-select "
                            "never writes where the data is; nothing was written", out,
                            f"choose a folder outside it, e.g. --out {above.parent / (above.name + '_selection')}")
    folders = {path.resolve().parent for path in inputs}
    if resolved in folders:
        raise DataError("holds pool images; the contact sheet would become one of them; nothing was written", out,
                        f"choose another folder, e.g. --out {resolved / 'selection'}")
    existing = [name for name in OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise DataError(f"already holds a selection ({', '.join(existing)}); nothing was written", out,
                        "choose a new --out folder, or add --overwrite to replace it")


def _score_text(score: float | None) -> str:
    return "" if score is None or not math.isfinite(score) else f"{score:.6g}"


def selection_table(rows: Sequence[Row]) -> str:
    """``selection.csv``: rank, image (id), score (empty: none), cluster (empty: none)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row.rank, row.image, _score_text(row.score), "" if row.cluster is None else row.cluster])
    return buffer.getvalue()


def selection_record(rows: Sequence[Row], facts: dict[str, Any]) -> str:
    """``selection.json``: the ordered ids first, then how they were chosen (``facts``)."""
    record = {"ids": [row.image for row in rows],
              "scores": [None if row.score is None or not math.isfinite(row.score) else row.score for row in rows],
              "clusters": [row.cluster for row in rows],
              "files": [str(row.path) for row in rows], **facts}
    return json.dumps(record, indent=2) + "\n"


def thumbnail(image: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """An (H, W, C) image in [0, 1] shrunk (never enlarged) so its longer side is at most ``side``."""
    from skimage.transform import resize

    height, width = image.shape[:2]
    scale = min(1.0, side / max(height, width))
    if scale < 1.0:
        shape = (max(1, round(height * scale)), max(1, round(width * scale)), image.shape[2])
        image = resize(image, shape, anti_aliasing=True, preserve_range=True)
    return np.clip(image, 0.0, 1.0)


def contact_sheet(rows: Sequence[Row], images: Sequence[np.ndarray], title: str) -> bytes:
    """The chosen images in rank order, each titled with its rank, id and score: PNG bytes.

    Drawn on a bare Agg canvas (no pyplot): no display needed, matplotlib's state untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = max(1, min(len(rows), SHEET_COLUMNS))
    lines = math.ceil(max(len(rows), 1) / columns)
    figure = Figure(figsize=(2.6 * columns, 2.8 * lines + 0.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(lines, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= len(rows):
            continue
        image = images[k]
        ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0.0, vmax=1.0)
        score = _score_text(rows[k].score)
        ax.set_title(f"{rows[k].rank}. {rows[k].image}" + (f"\nscore {rows[k].score:.3g}" if score else ""), fontsize=9)
    figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_outputs(out: Path, table: str, record: str, sheet: bytes) -> Path:
    """Create ``out`` and write the three files; returns the path of ``selection.json``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot be created ({exc.strerror})", out, "choose a writable --out folder") from None
    atomic_write_text(out / TABLE, table)
    atomic_write_bytes(out / SHEET, sheet)
    atomic_write_text(out / RECORD, record)  # last: its presence says the selection is complete
    return out / RECORD
