"""Per-image, per-group and overall summaries of the phase and particle tables.

One row per image (``level="image"``), then one per group (``level="group"``; images without a
group form ``"(no group)"``), then one over all images (``level="all"``, ``name="all"``). Columns:

- ``images``: how many images the row covers.
- ``unit``: ``"um"`` when every image of the row has a pixel size, else ``"px"``; it is the unit of
  the density and diameter columns of that row.
- ``fraction_<class>_mean`` / ``fraction_<class>_std``: area fraction (0..1) of the class, mean and
  population std (ddof=0) over the row's images (0 for a single image).
- per foreground class (all but class 0):
  ``count_<class>``: particles per image, mean over the row's images;
  ``density_<class>``: the row's particles divided by its analysed area (pixels not ignored),
  per µm² when ``unit`` is ``"um"``, else per megapixel (10^6 px²);
  ``mean_diameter_<class>``: mean equivalent diameter of the row's particles, in µm or px as
  ``unit`` says; None when there are no particles.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

NO_GROUP = "(no group)"
MEGAPIXEL = 1e6


def summary_columns(class_names: Sequence[str]) -> list[str]:
    """The ordered columns of :func:`summary_rows` for these classes."""
    columns = ["level", "name", "images", "unit"]
    columns += [f"fraction_{name}_{stat}" for name in class_names for stat in ("mean", "std")]
    for name in class_names[1:]:
        columns += [f"count_{name}", f"density_{name}", f"mean_diameter_{name}"]
    return columns


def _summarise(level: str, name: str, images: list[dict], fractions: dict, areas: dict, particles: dict,
               class_names: Sequence[str]) -> dict:
    known = all(image["pixel_size_um"] is not None for image in images)
    names = [image["image"] for image in images]
    row: dict = {"level": level, "name": name, "images": len(images), "unit": "um" if known else "px"}
    for class_name in class_names:
        values = np.array([fractions[(n, class_name)] for n in names], dtype=float)
        row[f"fraction_{class_name}_mean"] = float(values.mean())
        row[f"fraction_{class_name}_std"] = float(values.std())
    if known:
        area = sum(areas[image["image"]] * image["pixel_size_um"] ** 2 for image in images)
    else:
        area = sum(areas[n] for n in names) / MEGAPIXEL
    for class_name in class_names[1:]:
        found = [p for n in names for p in particles.get((n, class_name), [])]
        diameters = [p["equivalent_diameter_um" if known else "equivalent_diameter_px"] for p in found]
        row[f"count_{class_name}"] = len(found) / len(images)
        row[f"density_{class_name}"] = len(found) / area if area > 0 else None
        row[f"mean_diameter_{class_name}"] = float(np.mean(diameters)) if diameters else None
    return row


def summary_rows(phases: list[dict], particles: list[dict], images: list[dict],
                 class_names: Sequence[str]) -> list[dict]:
    """Rows per image, per group and over all images; see the module docstring for the columns."""
    fractions = {(p["image"], p["class"]): p["area_fraction"] for p in phases}
    areas: dict[str, int] = defaultdict(int)
    for p in phases:
        areas[p["image"]] += p["area_px"]
    missing = [image["image"] for image in images if image["image"] not in areas]
    if missing:
        raise ValueError(f"no phase rows for images {missing[:5]}")
    by_image_class: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for p in particles:
        by_image_class[(p["image"], p["class"])].append(p)
    groups: dict[str, list[dict]] = {}
    for image in images:
        groups.setdefault(NO_GROUP if image["group"] is None else image["group"], []).append(image)

    def summarise(level: str, name: str, members: list[dict]) -> dict:
        return _summarise(level, name, members, fractions, areas, by_image_class, class_names)

    rows = [summarise("image", image["image"], [image]) for image in images]
    rows += [summarise("group", group, members) for group, members in groups.items()]
    if images:
        rows.append(summarise("all", "all", images))
    return rows
