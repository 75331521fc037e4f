"""What every ``pscl-report`` curve shares (the Dice axis, saving a figure), and the
label-efficiency curve."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pscl.reporting.tables import method_key, reported_regimes


def style_dice_axis(ax: Any, xlabel: str, legend_size: int = 8, ticks: Sequence[float] = ()) -> None:
    """A log-x Dice axis with grid and legend, as every pscl-report curve has; ``ticks``: label
    exactly these x values (the measured points) instead of the log axis's own labels."""
    ax.set_xscale("log")
    if ticks:
        from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

        ax.xaxis.set_major_locator(FixedLocator(sorted(set(ticks))))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test Dice (foreground mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_label_efficiency(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Dice vs number of annotated images per method, with std error bars (needs >= 2 regimes)."""
    if len(reported_regimes(rows)) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({row["method"] for row in rows}, key=method_key):
        points = sorted((row["num_images"], row["dice_mean"], row["dice_std"]) for row in rows
                        if row["method"] == method and row["rounds"] and row["num_images"])
        if not points:
            continue
        xs, ys, es = zip(*points)
        ax.errorbar(xs, ys, yerr=[0 if math.isnan(e) else e for e in es], marker="o", capsize=3, label=method)
    style_dice_axis(ax, "annotated images")
    return save_figure(fig, path)
