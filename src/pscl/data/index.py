"""What a data folder holds: annotated samples, splits, groups, extra unlabelled images.

Two layouts are understood:

* the pscl folder format (``images/``, ``masks/``, ``classes.txt``, optional ``meta.csv``,
  ``splits.json`` and ``unlabeled/``), see :func:`index_folder`;
* the PSCL authors' layout (``train_numf``, ``test_numf``, ``sup_num1_k`` ...), see
  :mod:`pscl.data.authors_layout`.

Both produce a :class:`~pscl.data.samples.DatasetIndex`; :func:`index_dataset` tells which
layout a folder is in. Nothing here reads pixels.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from pscl.data.authors_layout import index_authors_layout, is_authors_layout
from pscl.data.samples import DatasetIndex, Sample, first_shared_stem, list_image_files, read_class_names
from pscl.data.splits import carve_validation, seeded_split
from pscl.data.text import read_csv_rows, read_text
from pscl.errors import DataError

log = logging.getLogger("pscl.data")


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
    shared = first_shared_stem(image_files)
    if shared is not None:
        first, second = shared
        raise DataError(f"two images share the id `{second.stem}` ({first.name}, {second.name})",
                        images_dir, "give every image a unique file stem")
    stems = {path.stem: path for path in image_files}
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
    root = Path(root).expanduser()
    if layout == "auto":
        layout = "authors" if is_authors_layout(root) else "folder"
    if layout == "authors":
        return index_authors_layout(root)
    if layout == "folder":
        return index_folder(root, **split_kwargs)  # type: ignore[arg-type]
    raise DataError(f"unknown layout `{layout}`", root, "set data.layout to auto, folder or authors")


def index_with_validation(root: Path | str, layout: str = "auto", split_seed: int = 0, test_fraction: float = 0.2,
                          val_fraction: float = 0.0) -> tuple[DatasetIndex, bool]:
    """:func:`index_dataset`, with a validation split carved from the training images (never from
    test; the authors' preset images stay in train) when ``val_fraction`` > 0 and the folder
    defines none. Returns the index and whether validation was carved."""
    index = index_dataset(root, layout, split_seed=split_seed, test_fraction=test_fraction, val_fraction=val_fraction)
    carved = bool(val_fraction and not index.val_ids)
    if carved:
        groups = {i: index.samples[i].group for i in index.train_ids}
        presets = {i for ids in index.labeled_presets.values() for i in ids}
        train, val = carve_validation(index.train_ids, groups, split_seed, float(val_fraction), keep=presets)
        index = dataclasses.replace(index, train_ids=train, val_ids=val)
    return index, carved
