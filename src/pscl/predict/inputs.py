"""What ``pscl-predict`` reads besides the model: the image list, ``meta.csv``, the output folder."""

from __future__ import annotations

import csv
import glob
import math
from dataclasses import dataclass
from pathlib import Path

from pscl.data.io import is_image_file
from pscl.errors import DataError

_GLOB_CHARACTERS = set("*?[")


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files named by ``inputs``: files, folders (their image files, not recursive) or globs.

    A file named explicitly is kept whatever its suffix (an unreadable one is reported later, in
    ``errors.csv``); folders and globs contribute image files only. Raises :class:`DataError`
    when nothing is found, or when two images would write the same output name.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
        elif path.is_file():
            found.append(path)
        elif _GLOB_CHARACTERS & set(item):
            found += sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                            if Path(p).is_file() and is_image_file(Path(p)))
        else:
            raise DataError("not found", path, "give image files, folders of images, or a quoted glob like 'run1/*.tif'")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise DataError("no image files (.png, .tif, .tiff, .jpg, .jpeg, .bmp) found", " ".join(inputs),
                        "check the paths; folders are not searched recursively (use a glob like 'dir/**/*.tif')")
    by_stem: dict[str, Path] = {}
    for path in unique:
        if path.stem in by_stem:
            raise DataError(f"two inputs would write the same outputs `{path.stem}.*`: {by_stem[path.stem]} and {path}",
                            path, "predict them into separate --out folders, or rename one")
        by_stem[path.stem] = path
    return unique


@dataclass(frozen=True)
class ImageMeta:
    """What ``meta.csv`` says about one image: its group and its pixel size in µm (None: unknown)."""

    group: str | None = None
    pixel_size_um: float | None = None


def read_meta(path: Path) -> dict[str, ImageMeta]:
    """``meta.csv`` as image id (file stem) -> :class:`ImageMeta`.

    Columns: ``id`` (required), ``group`` and ``pixel_size_um`` (both optional; an empty cell
    means unknown). A bad pixel size raises :class:`DataError` naming the row.
    """
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        if "id" not in columns or not columns & {"group", "pixel_size_um"}:
            raise DataError("meta.csv needs a header with `id` and `group` and/or `pixel_size_um`", path,
                            "e.g. a first line `id,group,pixel_size_um`, then one line per image (id = file name "
                            "without suffix)")
        meta: dict[str, ImageMeta] = {}
        for line, row in enumerate(reader, start=2):
            image_id = (row.get("id") or "").strip()
            if not image_id:
                continue
            size_text = (row.get("pixel_size_um") or "").strip()
            size = None
            if size_text:
                try:
                    size = float(size_text)
                except ValueError:
                    size = math.nan
                if not (math.isfinite(size) and size > 0):
                    raise DataError(f"line {line}: pixel_size_um {size_text!r} is not a positive number", path,
                                    "write the pixel size in µm (e.g. 0.0125), or leave the cell empty")
            group = (row.get("group") or "").strip() or None
            meta[image_id] = ImageMeta(group, size)
    return meta


def find_meta(images: list[Path], explicit: Path | None) -> Path | None:
    """``--meta`` if given, else a ``meta.csv`` beside the images or one level up (a pscl data folder)."""
    if explicit is not None:
        if not explicit.is_file():
            raise DataError("not found", explicit, "give the path of a meta.csv, or leave --meta out")
        return explicit
    folders = list(dict.fromkeys(p.parent for p in images))
    if len(folders) != 1:
        return None
    for candidate in (folders[0] / "meta.csv", folders[0].parent / "meta.csv"):
        if candidate.is_file():
            return candidate
    return None


def prepare_output(out: Path, overwrite: bool) -> None:
    """Create ``out``; an existing non-empty folder is refused unless ``overwrite`` (files of the same
    name are then replaced; nothing else in it is touched)."""
    if out.exists() and not out.is_dir():
        raise DataError("exists and is not a folder", out, "choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise DataError("already holds files; nothing was written", out,
                        "choose a new --out folder, or add --overwrite to replace the outputs of the same name")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot be created ({exc.strerror})", out, "choose a writable --out folder") from None
