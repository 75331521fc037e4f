"""The images ``pscl-select`` may choose from, and reading them.

* A pscl data folder (``images/`` and ``classes.txt``, or the authors' ``train_numf/``): its
  training ids, split exactly as training splits them (:func:`dataset_pool`), so the chosen ids
  are ids ``data.labeled_ids`` accepts. Its test and validation images and every mask are never
  opened; ``unlabeled/`` images have no id training could annotate and are not candidates.
* Anything else (:func:`file_pool`): image files, folders of images (not recursive) or quoted
  globs; an image's id is its file stem.

:func:`read_pool` reads the candidates one by one; an unreadable image is named in a warning and
left out, and the others are still ranked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pscl.data.image_files import list_image_files
from pscl.data.io import read_image
from pscl.data.samples import first_shared_stem
from pscl.errors import DataError

INPUT_FIX = ("give a pscl data folder, a folder of images, image files, or a quoted glob like 'pool/*.tif' "
             "(folders are not searched recursively)")


@dataclass(frozen=True)
class Candidate:
    """One image that may be chosen: its id and its file."""

    id: str
    path: Path


@dataclass(frozen=True)
class Pool:
    """The candidates in id order; ``data`` holds the split settings when the pool is a data folder's
    training images (None: files given directly)."""

    source: str
    candidates: tuple[Candidate, ...]
    data: dict[str, Any] | None = None
    presets: Mapping[tuple[int, int], Sequence[str]] = field(default_factory=dict)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(c.id for c in self.candidates)

    def without(self, ids: set[str]) -> Pool:
        """The pool less ``ids`` (images that could not be read); presets naming them are dropped."""
        kept = tuple(c for c in self.candidates if c.id not in ids)
        presets = {key: value for key, value in self.presets.items() if not set(value) & ids}
        return dataclasses.replace(self, candidates=kept, presets=presets)


def is_data_folder(path: Path) -> bool:
    """A pscl data folder (``images/`` with ``classes.txt`` or ``masks/``) or the authors' layout."""
    from pscl.data.authors_layout import is_authors_layout

    return path.is_dir() and (((path / "images").is_dir() and ((path / "classes.txt").is_file()
                                                               or (path / "masks").is_dir()))
                              or is_authors_layout(path))


def dataset_pool(root: Path, layout: str = "auto", split_seed: int = 0, test_fraction: float = 0.2,
                 val_fraction: float = 0.0) -> Pool:
    """The training images of a data folder, split as :meth:`MicrographDataModule.setup` splits it
    (a ``val_fraction`` carves validation out of train when the folder defines none).

    Only file names are listed: no image or mask is opened here.
    """
    from pscl.data.index import index_with_validation

    index, _ = index_with_validation(root, layout, split_seed, test_fraction, val_fraction)
    candidates = tuple(Candidate(i, index.samples[i].image.resolve()) for i in sorted(index.train_ids))
    settings = {"root": str(index.root.resolve()), "layout": index.layout, "split_seed": split_seed,
                "test_fraction": test_fraction, "val_fraction": val_fraction}
    return Pool(str(root.resolve()), candidates, settings, dict(index.labeled_presets))


def file_pool(inputs: Sequence[str]) -> Pool:
    """Image files named by ``inputs`` (files, folders, globs); ids are file stems, which must be unique.

    A file named explicitly is kept whatever its suffix (if it is no image, reading names it).
    """
    unique = list_image_files(inputs, missing_fix=INPUT_FIX, unlisted_fix="check that you may read it",
                              empty_fix=INPUT_FIX)
    shared = first_shared_stem(unique)
    if shared is not None:
        first, second = shared
        raise DataError(f"two images have the id `{second.stem}` ({first} and {second}); ids are file "
                        "stems and must be unique", second, "rank them in separate calls, or rename one")
    by_id = {path.stem: path for path in unique}
    return Pool(" ".join(inputs), tuple(Candidate(i, by_id[i]) for i in sorted(by_id)))


def make_pool(inputs: Sequence[str], **split: Any) -> Pool:
    """:func:`dataset_pool` when ``inputs`` is one data folder, else :func:`file_pool`."""
    if len(inputs) == 1 and is_data_folder(Path(inputs[0]).expanduser()):
        return dataset_pool(Path(inputs[0]).expanduser(), **split)
    return file_pool(inputs)


def read_pool(pool: Pool, in_channels: int, warn: Callable[[str], None], skip: set[str] | None = None,
              stage: str = "reading") -> Iterator[tuple[int, np.ndarray]]:
    """``(position in pool, (H, W, in_channels) float32 image in [0, 1])`` of each readable candidate,
    with a tqdm bar (``stage``) on stderr. An unreadable image is passed to ``warn`` (its path and the reason)
    and added to ``skip``; ids already in ``skip`` are not read again."""
    from tqdm.auto import tqdm

    skip = set() if skip is None else skip
    candidates = list(enumerate(pool.candidates))
    bar = tqdm(candidates, desc=f"pscl-select: {stage}", unit="image", dynamic_ncols=True, leave=False)
    for position, candidate in bar:
        if candidate.id in skip:
            continue
        try:
            image = read_image(candidate.path, in_channels)
        except DataError as exc:
            skip.add(candidate.id)
            bar.clear()
            warn(f"{str(exc).splitlines()[0]}; it is left out (the other images are still ranked)")
            continue
        yield position, image
