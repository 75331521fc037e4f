"""CSV tables of the quantification: column orders and an atomic writer.

Empty cells stand for None (e.g. µm columns when the pixel size is unknown); floats carry up to 6
significant digits. Units are in the column names (``_px``, ``_um``, ``_um2``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pscl.integrity.files import atomic_write_text

PHASE_COLUMNS = ["image", "class", "area_fraction", "area_px", "area_um2"]
PARTICLE_COLUMNS = [
    "image", "class", "particle", "area_px", "equivalent_diameter_px", "major_axis_px", "minor_axis_px",
    "aspect_ratio", "perimeter_px", "centroid_x_px", "centroid_y_px", "touches_border",
    "area_um2", "equivalent_diameter_um", "major_axis_um", "minor_axis_um", "perimeter_um",
    "centroid_x_um", "centroid_y_um",
]


def format_cell(value: object) -> str:
    """The CSV text of one value: '' for None, 6 significant digits for floats, str otherwise."""
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


def write_csv(path: Path, rows: list[dict], columns: Sequence[str]) -> Path:
    """Write ``rows`` (missing keys: empty cells) under a header of ``columns``, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([format_cell(row.get(column)) for column in columns] for row in rows)
    path = Path(path)
    atomic_write_text(path, buffer.getvalue())
    return path
