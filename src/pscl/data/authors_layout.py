"""Adapter for the PSCL authors' aluminium-dataset layout.

``train_numf/{img,gt}`` holds every training image, ``test_numf/{img,gt}`` the test set and
``sup_num<n>_<k>/{img,gt}`` the ``n`` annotated images the authors chose for round ``k``
(``sup_numf`` = all). Masks are ``gt/<stem>.png`` with values 0..3; the holding-time group is
the first ``_`` token of the file name (``15_1_0_0.jpg`` -> ``15``). Pointing ``data.root`` at such
a folder is enough: rounds ``data.label_seed=k`` use the authors' ``sup_num<n>_<k>`` subsets.
"""

from __future__ import annotations

import re
from pathlib import Path

from pscl.data.samples import DatasetIndex, Sample, list_image_files, read_class_names
from pscl.errors import DataError

# The paper: class 0 = matrix (background), classes 1-3 = microstructure phases.
DEFAULT_CLASS_NAMES = ("matrix", "phase_1", "phase_2", "phase_3")
_PRESET = re.compile(r"^sup_num(\d+)_(\d+)$")


def is_authors_layout(root: Path) -> bool:
    """True when ``root`` looks like the authors' dataset folder."""
    return (root / "train_numf").is_dir()


def group_of(stem: str) -> str:
    """Holding-time group = first ``_`` token of the file name."""
    return stem.split("_", 1)[0]


def _read_split(folder: Path) -> dict[str, Sample]:
    img_dir, gt_dir = folder / "img", folder / "gt"
    if not img_dir.is_dir():
        raise DataError("missing img/ folder", folder, "the authors' layout has <split>/img and <split>/gt")
    samples = {}
    for path in list_image_files(img_dir):
        samples[path.stem] = Sample(path.stem, path, gt_dir / f"{path.stem}.png", group_of(path.stem))
    if not samples:
        raise DataError("img/ holds no images", img_dir)
    return samples


def index_authors_layout(root: Path) -> DatasetIndex:
    """Index the authors' layout; ``sup_num<n>_<k>`` folders become labelled presets."""
    if not (root / "test_numf").is_dir():
        raise DataError("has train_numf/ but no test_numf/", root,
                        "the authors' layout needs both train_numf/{img,gt} and test_numf/{img,gt}")
    train = _read_split(root / "train_numf")
    test = _read_split(root / "test_numf")
    shared = sorted(set(train) & set(test))
    if shared:
        raise DataError(f"images in both train_numf and test_numf: {shared[:5]}", root,
                        "remove the test images from train_numf")
    class_file = root / "classes.txt"
    class_names = read_class_names(class_file) if class_file.is_file() else DEFAULT_CLASS_NAMES
    presets: dict[tuple[int, int], tuple[str, ...]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        match = _PRESET.match(folder.name)
        if not match:
            continue
        ids = tuple(sorted(p.stem for p in list_image_files(folder / "img"))) if (folder / "img").is_dir() else ()
        missing = [i for i in ids if i not in train]
        if missing:
            raise DataError(f"annotated images not found in train_numf/img: {missing[:5]}", folder,
                            "every sup_num image must also be a training image")
        presets[(int(match.group(1)), int(match.group(2)))] = ids
    return DatasetIndex(
        root=root,
        layout="authors",
        class_names=class_names,
        samples={**train, **test},
        train_ids=tuple(sorted(train)),
        test_ids=tuple(sorted(test)),
        labeled_presets=presets,
    )
