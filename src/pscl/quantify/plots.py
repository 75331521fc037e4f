"""One summary figure: phase fractions per group (left), particle size histograms per class (right)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pscl.integrity.files import atomic_write_bytes


def _colour(k: int) -> Any:
    """The class colour of the prediction overlays (the matrix, black there, in grey here)."""
    from pscl.quantify.colours import PALETTE

    return (0.6, 0.6, 0.6) if k == 0 else tuple(PALETTE[k % len(PALETTE)] / 255.0)


def _fraction_bars(ax: Any, summary: list[dict], class_names: Sequence[str]) -> None:
    groups = [row for row in summary if row["level"] == "group"]
    if not groups:
        ax.text(0.5, 0.5, "no images", ha="center", va="center", transform=ax.transAxes)
        return
    x = np.arange(len(groups))
    width = 0.8 / len(class_names)
    for k, name in enumerate(class_names):
        means = [row[f"fraction_{name}_mean"] for row in groups]
        stds = [row[f"fraction_{name}_std"] for row in groups]
        ax.bar(x + (k - (len(class_names) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
               color=_colour(k), label=name)
    ax.set_xticks(x, [f"{row['name']}\n(n = {row['images']})" for row in groups], fontsize=8)
    ax.set_ylabel("area fraction")
    ax.set_ylim(0, 1)
    ax.set_title("phase fraction per group (mean ± std over images)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def _log_ticks(ax: Any, low: float, high: float) -> None:
    """Five plain-number ticks over [low, high]: matplotlib's own overlap when the range is under a decade."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = sorted({float(f"{v:.2g}") for v in np.geomspace(low, high, 5)})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))


def _size_histogram(ax: Any, diameters: list[float], name: str, unit: str, colour: Any) -> None:
    values = np.array([d for d in diameters if d is not None and d > 0], dtype=float)
    ax.set_title(f"{name} (n = {values.size})", fontsize=9)
    if values.size == 0:
        ax.text(0.5, 0.5, "no particles", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    low, high = values.min(), values.max()
    if high <= low * 1.01:
        low, high = low / 1.2, high * 1.2
    bins = np.geomspace(low, high, int(np.clip(np.sqrt(values.size), 5, 40)) + 1)
    ax.hist(values, bins=bins, color=colour, edgecolor="black", linewidth=0.4)
    ax.set_xscale("log")
    _log_ticks(ax, low, high)
    ax.set_xlabel(f"equivalent diameter ({unit})", fontsize=8)
    ax.set_ylabel("particles", fontsize=8)
    ax.grid(alpha=0.3)


def plot_summary(path: Path, summary: list[dict], particles: list[dict], class_names: Sequence[str]) -> Path:
    """Write the summary figure to ``path`` (PNG, atomically) and return ``path``.

    Diameters are in µm when every particle has one, else in px.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    foreground = list(class_names[1:])
    in_um = bool(particles) and all(p.get("equivalent_diameter_um") is not None for p in particles)
    key, unit = ("equivalent_diameter_um", "µm") if in_um else ("equivalent_diameter_px", "px")
    rows = max(len(foreground), 1)
    fig = plt.figure(figsize=(11 if foreground else 6, max(4.0, 2.4 * rows)))
    try:
        grid = fig.add_gridspec(rows, 2 if foreground else 1, width_ratios=(1.4, 1) if foreground else None)
        _fraction_bars(fig.add_subplot(grid[:, 0]), summary, class_names)
        for k, name in enumerate(foreground):
            diameters = [p[key] for p in particles if p["class"] == name]
            _size_histogram(fig.add_subplot(grid[k, 1]), diameters, name, unit, _colour(k + 1))
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path
