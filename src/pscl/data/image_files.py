"""The image files that command-line inputs name: files, folders of images (not recursive) and globs."""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from pscl.data.io import is_image_file
from pscl.errors import DataError

_GLOB_CHARACTERS = set("*?[")


def list_image_files(inputs: Sequence[str], *, missing_fix: str, unlisted_fix: str, empty_fix: str) -> list[Path]:
    """Image files named by ``inputs``, resolved, in the order given and without repeats.

    A folder adds the image files directly inside it, a glob the image files it matches (each
    sorted); a file named explicitly is kept whatever its suffix. Raises :class:`DataError`, with
    the fix the caller gives, for an input that is none of these (``missing_fix``), a folder that
    cannot be listed (``unlisted_fix``), or when no image file is found at all (``empty_fix``).
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            try:
                found += sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p))
            except OSError as exc:
                raise DataError(f"cannot be listed ({exc.strerror})", path, unlisted_fix) from None
        elif path.is_file():
            found.append(path)
        elif _GLOB_CHARACTERS & set(item):
            found += sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                            if Path(p).is_file() and is_image_file(Path(p)))
        else:
            raise DataError("not found", path, missing_fix)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise DataError("no image files (.png, .tif, .tiff, .jpg, .jpeg, .bmp) found", " ".join(inputs), empty_fix)
    return unique
