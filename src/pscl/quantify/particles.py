"""Particles of one segmented micrograph: the connected components of each precipitate class.

Lengths are in pixels (``*_px``) and, when the pixel size is known, in µm (``*_um``; areas in µm²);
the µm columns are None otherwise. Centroids are measured from the top-left corner of the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.measure import label, regionprops_table

from pscl.quantify.phases import check_mask, check_pixel_size

_PROPERTIES = ("area", "equivalent_diameter_area", "axis_major_length", "axis_minor_length", "perimeter",
               "centroid", "bbox")


def _scaled(value: float, pixel_size_um: float | None, power: int = 1) -> float | None:
    return None if pixel_size_um is None else value * pixel_size_um ** power


def _row(image: str, name: str, particle: int, props: dict[str, np.ndarray], i: int,
         shape: tuple[int, int], pixel_size_um: float | None) -> dict:
    area = int(props["area"][i])
    major, minor = float(props["axis_major_length"][i]), float(props["axis_minor_length"][i])
    diameter, perimeter = float(props["equivalent_diameter_area"][i]), float(props["perimeter"][i])
    cy, cx = float(props["centroid-0"][i]), float(props["centroid-1"][i])
    top, left, bottom, right = (int(props[f"bbox-{k}"][i]) for k in range(4))
    return {
        "image": image, "class": name, "particle": particle,
        "area_px": area, "equivalent_diameter_px": diameter, "major_axis_px": major, "minor_axis_px": minor,
        "aspect_ratio": major / minor if minor > 0 else None, "perimeter_px": perimeter,
        "centroid_x_px": cx, "centroid_y_px": cy,
        "touches_border": top == 0 or left == 0 or bottom == shape[0] or right == shape[1],
        "area_um2": _scaled(area, pixel_size_um, 2), "equivalent_diameter_um": _scaled(diameter, pixel_size_um),
        "major_axis_um": _scaled(major, pixel_size_um), "minor_axis_um": _scaled(minor, pixel_size_um),
        "perimeter_um": _scaled(perimeter, pixel_size_um), "centroid_x_um": _scaled(cx, pixel_size_um),
        "centroid_y_um": _scaled(cy, pixel_size_um),
    }


def particle_rows(image: str, mask: np.ndarray, class_names: Sequence[str], pixel_size_um: float | None,
                  min_area_px: int = 0, classes: Sequence[int] | None = None,
                  connectivity: int = 1) -> list[dict]:
    """One row per connected component of each class in ``classes`` (default: all but class 0).

    ``connectivity`` 1 joins pixels sharing an edge, 2 also those sharing a corner. Components with
    fewer than ``min_area_px`` pixels are dropped; ``particle`` numbers the rest 1, 2, ... per class
    in raster order of their first pixel.
    """
    mask = np.asarray(mask)
    check_mask(image, mask, len(class_names))
    check_pixel_size(image, pixel_size_um)
    chosen = range(1, len(class_names)) if classes is None else classes
    rows: list[dict] = []
    for c in chosen:
        if not 0 <= c < len(class_names):
            raise ValueError(f"{image}: class {c} is not one of 0..{len(class_names) - 1}")
        labels = label(mask == c, connectivity=connectivity)
        if min_area_px > 1:  # specks are dropped before measuring: regionprops costs ~1 ms per component
            small = np.bincount(labels.ravel()) < min_area_px
            small[0] = False
            labels[small[labels]] = 0
        if not labels.any():
            continue
        props = regionprops_table(labels, properties=_PROPERTIES)
        rows.extend(_row(image, class_names[c], i + 1, props, i, mask.shape, pixel_size_um)
                    for i in range(len(props["area"])))
    return rows
