"""What a data folder holds: annotated samples, splits, groups, extra unlabelled images.

Two layouts are understood:

* the pscl folder format (``images/``, ``masks/``, ``classes.txt``, optional ``meta.csv``,
  ``splits.json`` and ``unlabeled/``), see :func:`index_folder`;
* the PSCL authors' layout (``train_numf``, ``test_numf``, ``sup_num1_k`` ...), see
  :mod:`pscl.data.authors_layout`.

Both produce a :class:`DatasetIndex`; nothing here reads pixels.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pscl.data.io import is_image_file
from pscl.data.splits import seeded_split
from pscl.data.text import read_csv_rows, read_text
from pscl.errors import DataError

log = logging.getLogger("pscl.data")


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


def read_groups(path: Path) -> dict[str, str]:
    """``meta.csv`` (columns ``id,group``) as id -> group."""
    reader = read_csv_rows(path, "meta.csv")
    if reader.fieldnames is None or not {"id", "group"} <= set(reader.fieldnames):
        raise DataError("meta.csv needs the header `id,group`", path,
                        "add a first line `id,group` and one line per image id")
    return {row["id"]: row["group"] for row in reader if row.get("id")}


def read_splits(path: Path, known_ids: set[str]) -> dict[str, tuple[str, ...]]:
    """``splits.json``: ``train`` and ``test`` id lists, optional ``val``; checked for sanity."""
    try:
        raw = json.loads(read_text(path, "splits.json"))
    except json.JSONDecodeError as exc:
        raise DataError(f"not valid JSON: {exc}", path, "fix the syntax or delete the file") from None
    if not isinstance(raw, dict) or "train" not in raw or "test" not in raw:
        raise DataError("splits.json needs the keys `train` and `test` (lists of image ids)", path,
                        'write e.g. {"train": ["a", "b"], "test": ["c"]}')
    splits: dict[str, tuple[str, ...]] = {}
    for name in ("train", "val", "test"):
        ids = raw.get(name, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataError(f"`{name}` must be a list of image ids (strings)", path)
        unknown = sorted(set(ids) - known_ids)
        if unknown:
            raise DataError(
                f"`{name}` names ids without an annotated image: {unknown[:5]}",
                path,
                "use the file stems of images/ (each with a mask in masks/)",
            )
        splits[name] = tuple(ids)
    for a, b in (("train", "test"), ("train", "val"), ("val", "test")):
        shared = set(splits[a]) & set(splits[b])
        if shared:
            raise DataError(f"ids in both `{a}` and `{b}`: {sorted(shared)[:5]}", path,
                            "every id belongs to one split")
    if not splits["train"] or not splits["test"]:
        raise DataError("`train` and `test` must each hold at least one id", path)
    return splits


def index_folder(root: Path | str, split_seed: int = 0, test_fraction: float = 0.2,
                 val_fraction: float = 0.0) -> DatasetIndex:
    """Index a folder in the pscl format.

    Layout: ``images/<id>.<ext>``, ``masks/<id>.png``, ``classes.txt``, optional ``meta.csv``
    (``id,group``), optional ``splits.json`` and optional ``unlabeled/`` with extra images.
    Without ``splits.json`` the split is drawn with ``split_seed``, stratified by group.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError("data folder does not exist", root,
                        "set data.root to a folder holding images/, masks/ and classes.txt")
    if not root.is_dir():
        raise DataError("data root is not a folder", root, "set data.root to a folder")
    images_dir, masks_dir = root / "images", root / "masks"
    if not images_dir.is_dir():
        raise DataError("no images/ folder", root,
                        "put the annotated micrographs in <root>/images/ and their masks in <root>/masks/")
    class_names = read_class_names(root / "classes.txt")
    image_files = list_image_files(images_dir)
    if not image_files:
        raise DataError("images/ is empty", images_dir, "add annotated micrographs")
    stems: dict[str, Path] = {}
    for path in image_files:
        if path.stem in stems:
            raise DataError(f"two images share the id `{path.stem}` ({stems[path.stem].name}, {path.name})",
                            images_dir, "give every image a unique file stem")
        stems[path.stem] = path
    groups = read_groups(root / "meta.csv") if (root / "meta.csv").is_file() else {}
    samples = {
        stem: Sample(stem, path, masks_dir / f"{stem}.png", groups.get(stem))
        for stem, path in stems.items()
    }
    unlabeled: tuple[Sample, ...] = ()
    if (root / "unlabeled").is_dir():
        unlabeled = tuple(
            Sample(p.stem, p, None, groups.get(p.stem)) for p in list_image_files(root / "unlabeled")
        )
    if groups:
        lacking = sorted(s.id for s in (*samples.values(), *unlabeled) if s.id not in groups)
        if lacking:
            log.warning("%s lists no group for %d image(s): %s%s; they get no group (splits and the "
                        "report treat them as a group of their own)", root / "meta.csv", len(lacking),
                        ", ".join(lacking[:10]), " ..." if len(lacking) > 10 else "")
    if (root / "splits.json").is_file():
        splits = read_splits(root / "splits.json", set(samples))
    else:
        ids = sorted(samples)
        splits = seeded_split(ids, {i: samples[i].group for i in ids}, split_seed, test_fraction,
                              val_fraction)
        if not splits["train"]:
            raise DataError(f"only {len(ids)} annotated image(s): too few to split into train and test",
                            images_dir, "add images or write a splits.json")
    return DatasetIndex(
        root=root,
        layout="folder",
        class_names=class_names,
        samples=samples,
        train_ids=splits["train"],
        test_ids=splits["test"],
        val_ids=splits.get("val", ()),
        unlabeled=unlabeled,
    )


def index_dataset(root: Path | str, layout: str = "auto", **split_kwargs: float) -> DatasetIndex:
    """Index ``root`` in the given layout (``auto`` detects the authors' layout by ``train_numf/``)."""
    from pscl.data.authors_layout import index_authors_layout, is_authors_layout

    root = Path(root).expanduser()
    if layout == "auto":
        layout = "authors" if is_authors_layout(root) else "folder"
    if layout == "authors":
        return index_authors_layout(root)
    if layout == "folder":
        return index_folder(root, **split_kwargs)  # type: ignore[arg-type]
    raise DataError(f"unknown layout `{layout}`", root, "set data.layout to auto, folder or authors")
