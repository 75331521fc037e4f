"""What ``pscl-predict`` reads besides the model: the image list, ``meta.csv``, the output folder."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pscl.data.image_files import list_image_files
from pscl.data.samples import first_shared_stem
from pscl.data.text import read_csv_rows
from pscl.errors import DataError

RECORD_FILE = "predict.json"  # what a batch did, and every file it wrote into --out
_NAMED = 5  # files named in a refusal; the rest are counted


def collect_images(inputs: list[str]) -> list[Path]:
    """Image files named by ``inputs``: files, folders (their image files, not recursive) or globs.

    A file named explicitly is kept whatever its suffix (an unreadable one is reported later, in
    ``errors.csv``); folders and globs contribute image files only. Raises :class:`DataError`
    when nothing is found, or when two images would write the same output name.
    """
    unique = list_image_files(
        inputs, missing_fix="give image files, folders of images, or a quoted glob like 'run1/*.tif'",
        unlisted_fix="check that you may read the folder",
        empty_fix="check the paths; folders are not searched recursively (use a glob like 'dir/**/*.tif')")
    shared = first_shared_stem(unique)
    if shared is not None:
        first, second = shared
        raise DataError(f"two inputs would write the same outputs `{second.stem}.*`: {first} and {second}",
                        second, "predict them into separate --out folders, or rename one")
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
    reader = read_csv_rows(path, "meta.csv")
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


def prepare_output(out: Path, overwrite: bool, images: list[Path], planned: list[str]) -> None:
    """Check ``out`` with :func:`check_output`, then create it: nothing is written on a refusal."""
    check_output(out, overwrite, images, planned)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot be created ({exc.strerror})", out, "choose a writable --out folder") from None


def check_output(out: Path, overwrite: bool, images: list[Path], planned: list[str]) -> None:
    """Refuse an output folder whose writing could destroy an input, an annotation or a user's file.

    ``planned`` is every file (relative to ``out``) the batch may write. Refused, with or without
    ``overwrite``: an ``out`` that is or holds an input image, that is a pscl data folder, or whose
    outputs would land in a data folder's ``images/`` or ``masks/``. An existing non-empty ``out``
    is refused unless ``overwrite``; then it is refused still if a planned file exists that no
    earlier ``pscl-predict`` recorded in its ``predict.json`` (a file of the user's own).
    """
    folders = [out, *sorted({(out / name).parent for name in planned} - {out})]
    _refuse_data_folders(out, folders)
    _refuse_inputs_inside(out, folders, images)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir():
        raise DataError("exists and is not a folder; nothing was written", out, f"choose a new folder, e.g. "
                        f"--out {_fresh(out)}")
    if _is_empty(out):
        return
    if not overwrite:
        raise DataError("already holds files; nothing was written", out,
                        "choose a new --out folder, or add --overwrite to replace the files an earlier pscl-predict "
                        "wrote there")
    _refuse_unrecorded(out, folders, planned)


def _is_empty(folder: Path) -> bool:
    """True when ``folder`` holds nothing; an unreadable folder is a :class:`DataError`."""
    try:
        return not any(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot be listed ({exc.strerror})", folder, "choose a --out folder you may write") from None


def _fresh(folder: Path) -> Path:
    """A sibling of ``folder`` to suggest as a fresh ``--out``."""
    return folder.parent / f"{folder.name}_predict"


def _refuse_inputs_inside(out: Path, folders: list[Path], images: list[Path]) -> None:
    """Refuse an ``out`` that is an input image or holds one (resolved: links and ``..`` count)."""
    target = out.resolve()
    inputs = {image.resolve() for image in images}
    if target in inputs:
        raise DataError("is an input image; pscl-predict would write over it; nothing was written", out,
                        f"give a folder for --out, e.g. --out {_fresh(target.parent)}")
    inside = sorted(image for image in inputs if image.is_relative_to(target))
    if inside:
        raise DataError(f"holds the input image {inside[0]}"
                        + (f" and {len(inside) - 1} more" if len(inside) > 1 else "")
                        + "; pscl-predict never writes where its inputs are; nothing was written", out,
                        f"choose a fresh --out outside the input folders, e.g. --out {_fresh(target)}")
    # an output folder may be a link to an input folder: masks/<id>.png would then replace an input
    for folder in folders[1:]:
        resolved = folder.resolve()
        if any(image.parent == resolved for image in inputs):
            raise DataError(f"{folder.relative_to(out)}/ is an input folder (through a link); nothing was written",
                            out, f"choose a fresh --out, e.g. --out {_fresh(target)}")


def is_data_folder(folder: Path) -> bool:
    """A pscl data folder has ``images/`` and ``masks/``, or a ``classes.txt``."""
    return ((folder / "images").is_dir() and (folder / "masks").is_dir()) or (folder / "classes.txt").is_file()


def _refuse_data_folders(out: Path, folders: list[Path]) -> None:
    """Refuse writing into a pscl data folder, or anywhere in its ``images/`` or ``masks/``."""
    if is_data_folder(out):
        raise DataError("is a pscl data folder (images/ and masks/, or classes.txt); pscl-predict never writes into "
                        "one: its masks/ are the annotations; nothing was written", out,
                        f"choose a fresh --out, e.g. --out {_fresh(out.resolve())}")
    for folder in folders:
        resolved = folder.resolve()
        for above in (resolved, *resolved.parents):
            part = next((name for name in ("masks", "images") if resolved.is_relative_to(above / name)), None)
            if part is not None and is_data_folder(above):
                holds = "annotations" if part == "masks" else "micrographs"
                raise DataError(f"would write into {part}/ of the pscl data folder {above} (its {holds}); "
                                "nothing was written", out,
                                f"choose a fresh --out outside the data folder, e.g. --out {_fresh(above)}")


def recorded_outputs(out: Path) -> set[str]:
    """The files (relative to ``out``) an earlier ``pscl-predict`` recorded in ``out/predict.json``.

    A missing, unreadable or foreign ``predict.json`` records nothing, so nothing is replaced.
    Records written before the list was kept name their images: their masks, overlays,
    probabilities and tables are derived from those.
    """
    try:
        record = json.loads((out / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return set()
    if not isinstance(record, dict) or not {"model", "class_names", "images"} <= set(record):
        return set()
    if "outputs" in record:
        return set(_texts(record.get("outputs"))) | set(_texts(record.get("earlier_outputs")))
    return _outputs_of_an_older_record(record)


def _texts(value: object) -> list[str]:
    """The relative paths inside the folder that a JSON list names (anything else: none)."""
    items = value if isinstance(value, list) else []
    return [i for i in items if isinstance(i, str) and not Path(i).is_absolute() and ".." not in Path(i).parts]


def _outputs_of_an_older_record(record: dict) -> set[str]:
    """What a ``predict.json`` without ``outputs`` (written before pscl kept the list) implies was written."""
    settings = record.get("settings") if isinstance(record.get("settings"), dict) else {}
    entries = record["images"] if isinstance(record["images"], list) else []
    images = [entry.get("image") for entry in entries if isinstance(entry, dict)]
    files = {"phases.csv", "particles.csv", "summary.csv", "summary.png", "errors.csv", RECORD_FILE}
    for image in (i for i in images if isinstance(i, str) and i and "/" not in i):
        files |= {f"masks/{image}.png", f"overlays/{image}.png"}
        if settings.get("save_probabilities"):
            files.add(f"probabilities/{image}.npy")
    return files


def _refuse_unrecorded(out: Path, folders: list[Path], planned: Iterable[str]) -> None:
    """With ``--overwrite``: refuse when a file the batch would write exists and no earlier
    ``pscl-predict`` recorded it (or when a folder it writes into is a file)."""
    blocked = [f"{folder.relative_to(out)} (a file where a folder goes)" for folder in folders[1:]
               if os.path.lexists(folder) and not folder.is_dir()]
    recorded = recorded_outputs(out)
    blocked += [name for name in planned if name not in recorded and os.path.lexists(out / name)]
    if blocked:
        more = f" and {len(blocked) - _NAMED} more" if len(blocked) > _NAMED else ""
        raise DataError(f"--overwrite replaces only files an earlier pscl-predict recorded in its {RECORD_FILE}, "
                        f"and these are not: {', '.join(blocked[:_NAMED])}{more}; nothing was written", out,
                        "move those files away, or choose a fresh --out folder")
