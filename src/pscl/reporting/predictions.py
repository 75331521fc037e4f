"""The test predictions runs saved: the Dice of each (``per_image.csv``) and ``gallery.png``.

A prediction or mask that cannot be read costs that image, with a note on stderr, not the report.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pscl.errors import PsclError
from pscl.reporting.breakdown import ImageScore, image_dice
from pscl.reporting.run_records import Run
from pscl.reporting.tables import method_key, regime_key


def _with_predictions(runs: Sequence[Run]) -> list[Run]:
    """Finished runs that saved test predictions and name their data folder."""
    return [r for r in runs if not r.failed and (r.folder / "predictions").is_dir() and r.data_root]


def _data_index(data_root: str, cache: dict[str, Any]) -> Any:
    """The index of a run's data folder (read once per folder), or None if it cannot be read here."""
    from pscl.data.index import index_dataset

    if data_root not in cache:
        try:
            cache[data_root] = index_dataset(data_root)
        except (PsclError, OSError) as exc:
            print(f"pscl-report: cannot read the data folder {data_root} ({exc}); run pscl-report from "
                  "the folder the runs were started in. Skipping the ground-truth views.", file=sys.stderr)
            cache[data_root] = None
    return cache[data_root]


def _gallery_mask(path: Path) -> Any:
    """An annotated mask for the gallery, or None (with a note) when it is over the pixel limit or unreadable."""
    import numpy as np

    from pscl.data.io import open_checked
    from pscl.errors import DataError

    try:
        with open_checked(path) as image:  # pscl's pixel limit, from the header
            return np.asarray(image)
    except (DataError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"pscl-report: the gallery shows no ground truth for {path}: {reason}", file=sys.stderr)
        return None


def read_prediction(path: Path, num_classes: int | None = None) -> Any:
    """A saved prediction as a 2-D array of class indices, or None (with a note on stderr) if the
    file is not one: a damaged PNG in a run folder costs that image, not the report."""
    import numpy as np

    from pscl.data.io import open_checked
    from pscl.errors import DataError

    try:
        with open_checked(path) as image:  # a decompression bomb is never decoded
            prediction = np.asarray(image)
    except DataError as exc:
        reason = str(exc).removeprefix(f"{path}: ").replace("\n  fix:", "; fix:")
        print(f"pscl-report: {path} left out: {reason}", file=sys.stderr)
        return None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for a damaged file
        print(f"pscl-report: {path} left out: not a readable image ({type(exc).__name__})", file=sys.stderr)
        return None
    if prediction.ndim != 2 or not np.issubdtype(prediction.dtype, np.integer):
        print(f"pscl-report: {path} left out: not a one-channel image of class indices", file=sys.stderr)
        return None
    if num_classes is not None and prediction.size and int(prediction.max()) >= num_classes:
        print(f"pscl-report: {path} left out: class {int(prediction.max())} is not one of the data folder's "
              f"{num_classes} classes", file=sys.stderr)
        return None
    return prediction


def image_scores(runs: Sequence[Run], indexes: dict[str, Any]) -> list[ImageScore]:
    """The foreground Dice of every saved test prediction (the final model of each run)."""
    from pscl.data.io import read_mask

    scores = []
    for run in _with_predictions(runs):
        index = _data_index(run.data_root, indexes)  # type: ignore[arg-type]
        if index is None:
            continue
        num_classes = index.num_classes
        annotated = tuple(sorted({g for i in run.labeled_ids if i in index.samples
                                  for g in [index.samples[i].group] if g is not None}))
        for path in sorted((run.folder / "predictions").glob("*.png")):
            sample = index.samples.get(path.stem)
            if sample is None or sample.mask is None:
                continue
            prediction = read_prediction(path, num_classes)
            if prediction is None:
                continue
            try:
                truth = read_mask(sample.mask, num_classes, prediction.shape)
            except PsclError as exc:
                print(f"pscl-report: {path} left out of per_image.csv: {exc}", file=sys.stderr)
                continue
            scores.append(ImageScore(run.method, run.num_labeled, run.label_seed, path.stem, sample.group,
                                     annotated, image_dice(prediction, truth, num_classes)))
    return scores


def write_per_image_csv(path: Path, scores: Sequence[ImageScore]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "num_labeled", "label_seed", "image", "image_group", "annotated_groups",
                         "same_group", "dice"])
        for s in scores:
            writer.writerow([s.method, s.regime, s.seed, s.image, s.image_group or "", ";".join(s.annotated_groups),
                             "" if s.same_group is None else s.same_group, s.dice])


def plot_gallery(runs: Sequence[Run], path: Path, num_images: int = 3,
                 indexes: dict[str, Any] | None = None) -> Path | None:
    """image | ground truth | one prediction per method (each method's first round of the smallest regime)."""
    import numpy as np

    from pscl.quantify.colours import PALETTE
    from pscl.data.io import read_image

    done = _with_predictions(runs)
    if not done:
        return None
    smallest = min(done, key=regime_key).num_labeled
    chosen: dict[str, Run] = {}
    for run in sorted(done, key=lambda r: r.label_seed):
        if run.num_labeled == smallest:
            chosen.setdefault(run.method, run)
    methods = sorted(chosen, key=method_key)
    index = _data_index(chosen[methods[0]].data_root, {} if indexes is None else indexes)  # type: ignore[arg-type]
    if index is None:
        return None
    # a stray file in predictions/ that names no image of the data folder is not drawn
    ids = sorted(p.stem for p in (chosen[methods[0]].folder / "predictions").glob("*.png")
                 if p.stem in index.samples)[:num_images]
    if not ids:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def colour(classes: np.ndarray) -> np.ndarray:
        return PALETTE[classes % len(PALETTE)]

    columns = 2 + len(methods)
    fig, axes = plt.subplots(len(ids), columns, figsize=(2.2 * columns, 2.2 * len(ids)), squeeze=False)
    for row, sample_id in enumerate(ids):
        sample = index.samples[sample_id]
        panels = [("image", read_image(sample.image)[..., 0], "gray")]
        truth = _gallery_mask(sample.mask) if sample.mask is not None else None
        if truth is not None:
            panels.append(("ground truth", colour(truth), None))
        else:
            panels.append(("ground truth", np.zeros((2, 2)), "gray"))
        for method in methods:
            pred = chosen[method].folder / "predictions" / f"{sample_id}.png"
            picture = read_prediction(pred) if pred.is_file() else None
            panels.append((method, colour(picture) if picture is not None else np.zeros((2, 2)), None))
        for col, (title, picture, cmap) in enumerate(panels):
            ax = axes[row][col]
            ax.imshow(picture, cmap=cmap)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=8)
        axes[row][0].set_ylabel(sample_id, fontsize=7)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=PALETTE[k % len(PALETTE)] / 255.0, edgecolor="black", label=name)
               for k, name in enumerate(index.class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_gallery(runs: Sequence[Run], path: Path, num_images: int, indexes: dict[str, Any]) -> Path | None:
    """:func:`plot_gallery`, or None with a note when a data folder image cannot be drawn."""
    try:
        return plot_gallery(runs, path, num_images, indexes)
    except (PsclError, OSError) as exc:  # a damaged image or mask in the data folder the runs name
        print(f"pscl-report: gallery.png not drawn: {str(exc).splitlines()[0]}", file=sys.stderr)
        return None
