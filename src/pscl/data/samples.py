"""What a data folder holds, whatever its layout: :class:`Sample` and :class:`DatasetIndex`, and
the readers every layout shares (image listing, ``classes.txt``, unique ids).

:mod:`pscl.data.index` (the pscl folder format, and which layout a folder is in) and
:mod:`pscl.data.authors_layout` both build on this module; nothing here reads pixels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pscl.data.io import is_image_file
from pscl.data.text import read_text
from pscl.errors import DataError


@dataclass(frozen=True)
class Sample:
    """One micrograph: its id (file stem), image path, mask path (None if unlabelled) and group."""

    id: str
    image: Path
    mask: Path | None = None
    group: str | None = None


@dataclass
class DatasetIndex:
    """Everything a data module needs to know about a data folder, without pixels."""

    root: Path
    layout: str
    class_names: tuple[str, ...]
    samples: dict[str, Sample]
    train_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    val_ids: tuple[str, ...] = ()
    unlabeled: tuple[Sample, ...] = ()
    # Labelled subsets fixed by the dataset's authors: (num_labeled, label_seed) -> ids.
    labeled_presets: dict[tuple[int, int], tuple[str, ...]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def groups(self) -> tuple[str, ...]:
        """Sorted distinct groups of annotated and unlabelled samples (empty if none are known)."""
        found = {s.group for s in self.samples.values()} | {s.group for s in self.unlabeled}
        return tuple(sorted(g for g in found if g is not None))


def list_image_files(folder: Path) -> list[Path]:
    """Image files of a folder, sorted; a non-image file is an error (hidden files are skipped)."""
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.is_dir():
            continue
        if not is_image_file(path):
            raise DataError(
                "is not an image file (expected .png, .tif, .tiff, .jpg, .jpeg or .bmp)",
                path,
                f"move it out of {folder}",
            )
        files.append(path)
    return files


def read_class_names(path: Path) -> tuple[str, ...]:
    """Class names, one per line, index 0 first."""
    if not path.is_file():
        raise DataError(
            "classes.txt is missing",
            path,
            "create it with one class name per line, class 0 (e.g. the matrix) first",
        )
    names = tuple(line.strip() for line in read_text(path, "classes.txt").splitlines() if line.strip())
    if len(names) < 2:
        raise DataError("classes.txt must list at least two classes", path,
                        "write one class name per line, class 0 first")
    if len(set(names)) != len(names):
        raise DataError("classes.txt lists a class name twice", path, "make every name unique")
    return names


def first_shared_stem(paths: Iterable[Path]) -> tuple[Path, Path] | None:
    """The first two of ``paths`` (in their order) with the same file stem, or None when every stem is
    unique. An image's id, and the name of what is written for it, is its stem, so it must be unique."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            return seen[path.stem], path
        seen[path.stem] = path
    return None
