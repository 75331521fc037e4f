"""The figure and the table of ``pscl-embed``: one panel per network, points coloured by true class.

The figure is drawn on a bare Agg canvas (no pyplot), so it neither needs a display nor changes
matplotlib's global state. Files are written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pscl.integrity import atomic_write_bytes, atomic_write_text

COLUMNS = ("network", "class", "x", "y")
MAX_PANELS_PER_ROW = 4


@dataclass(frozen=True)
class Panel:
    """One network's map: its name (the table's ``network``), its title, the points and their classes."""

    name: str
    title: str
    points: np.ndarray  # (N, 2)
    labels: np.ndarray  # (N,) class indices


def class_colours(count: int) -> list[tuple[float, float, float, float]]:
    """One distinct colour per class (tab10, or tab20 beyond ten classes)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if count <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(count)]


def grid_shape(panels: int) -> tuple[int, int]:
    """(rows, columns) of the panel grid: at most :data:`MAX_PANELS_PER_ROW` per row."""
    columns = max(1, min(panels, MAX_PANELS_PER_ROW))
    return math.ceil(max(panels, 1) / columns), columns


def plot_panels(panels: Sequence[Panel], class_names: Sequence[str], path: Path) -> Path:
    """Draw ``panels`` side by side with one legend of ``class_names``; writes the PNG ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows, columns = grid_shape(len(panels))
    figure = Figure(figsize=(3.6 * columns, 3.6 * rows + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    colours = class_colours(len(class_names))
    axes = figure.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_axis_off()
            continue
        panel = panels[k]
        for c in range(len(class_names)):
            chosen = panel.labels == c
            if chosen.any():
                ax.scatter(panel.points[chosen, 0], panel.points[chosen, 1], s=5, color=colours[c], alpha=0.7,
                           linewidths=0, rasterized=True)
        ax.set_title(panel.title, fontsize=9)
        ax.set_xticks([])  # t-SNE coordinates have no meaning, only neighbourhoods do
        ax.set_yticks([])
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[c], label=name)
               for c, name in enumerate(class_names)]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(class_names), 6), frameon=False,
                  title="true class")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def points_table(panels: Sequence[Panel], class_names: Sequence[str]) -> str:
    """The points as CSV text: ``network,class,x,y``, one row per point, class by name."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for panel in panels:
        for (x, y), label in zip(panel.points.tolist(), panel.labels.tolist()):
            writer.writerow([panel.name, class_names[int(label)], f"{x:.4f}", f"{y:.4f}"])
    return buffer.getvalue()


def write_points(panels: Sequence[Panel], class_names: Sequence[str], path: Path) -> Path:
    """Write :func:`points_table` to ``path``."""
    atomic_write_text(path, points_table(panels, class_names))
    return path
