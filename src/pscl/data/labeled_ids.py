"""``data.labeled_ids``: the annotated images of a run named by the user instead of drawn.

The value is a path to a ``selection.json`` (written by ``pscl-select``), a list of image ids
(``data.labeled_ids=[img03,img07]``), or ``select:<strategy>[:<seed>]``: choose
``data.num_labeled`` training images in the run, as ``pscl-select --strategy <strategy> --seed
<seed> --features intensity`` would (:mod:`pscl.select`; the seed defaults to ``data.label_seed``;
``select:random:<s>`` is the ``data.label_seed=<s>`` draw). When set it replaces the draw of ``data.num_labeled`` /
``data.label_seed``: the run annotates exactly these images, in this order, and its effective
``num_labeled`` is their number. ``data.num_labeled=all`` contradicts it and is refused.

A selection file is read as hostile input: at most :data:`MAX_SELECTION_BYTES`, a regular file,
UTF-8 JSON, a top-level object whose ``ids`` is a non-empty list of unique non-empty strings.
Its other fields are recorded only when they are small plain values. A relative path is read
from the current folder, the one ``pscl-train`` was started in (Hydra does not change it,
``hydra.job.chdir=false``), as ``data.root`` is.

Every id must then be a training image of the dataset (:func:`resolve_ids`): an unknown id, an
image of the validation or test split, or an extra ``unlabeled/`` image is an error naming it.
Hydra reads an unquoted ``15_016`` on the command line as the number 15016 (underscores group
digits); such a number is matched back to the one id that spells it, or refused with the quoting
that keeps it a string.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pscl.data.samples import DatasetIndex
from pscl.data.splits import parse_num_labeled, select_labeled
from pscl.errors import ConfigError

KEY = "data.labeled_ids"
SELECT_PREFIX = "select:"
#: the strategies of pscl-select (pscl.select.strategies takes them from here: the data layer imports
#: nothing above it)
STRATEGIES = ("coverage", "typical", "random")
MAX_SELECTION_BYTES = 4 << 20  # ~100k ids; a selection file is a few KB
SELECTION_FIELDS = ("strategy", "features", "seed", "budget")
QUOTE_FIX = ("quote the ids so that they stay strings: 'data.labeled_ids=[\"15_016\",\"03_002\"]' "
             "(the single quotes are the shell's, the double quotes Hydra's)")
# what Hydra's override grammar reads as an integer (underscores between digits allowed)
_HYDRA_INT = re.compile(r"[+-]?(?:0|[1-9](?:_?[0-9])*)")
_SHOWN = 8


@dataclass(frozen=True)
class LabeledChoice:
    """The ids a user named, as given (a list may hold numbers Hydra made of them), and where
    they came from: ``{"kind": "selection", "file", "sha256", <selection fields>}`` or
    ``{"kind": "list"}``."""

    ids: tuple[Any, ...]
    source: dict[str, Any] = field(default_factory=dict)
    #: ``select:<strategy>``: the ids are chosen in the run (then ``ids`` is empty)
    strategy: str | None = None
    seed: int | None = None


def seed_source(label_seed: int) -> dict[str, Any]:
    """The source of a drawn round (no ``data.labeled_ids``)."""
    return {"kind": "label_seed", "label_seed": int(label_seed)}


def describe_source(source: dict[str, Any]) -> str:
    """One phrase for log lines and the run summary: where this round's annotated ids came from."""
    kind = source.get("kind")
    if kind == "selection":
        strategy = source.get("strategy")
        if source.get("file") is None:  # chosen in the run
            return f"pscl-select strategy {strategy}, seed {source.get('seed')}"
        return f"selection {source.get('file')}" + (f", strategy {strategy}" if strategy else "")
    if kind == "list":
        return "the list data.labeled_ids"
    return f"label_seed {source.get('label_seed')}"


def _show(ids: Sequence[Any]) -> str:
    shown = [repr(i) if not isinstance(i, str) else (i if len(i) <= 40 else i[:37] + "...") for i in ids[:_SHOWN]]
    return ", ".join(shown) + (f", ... ({len(ids)} in all)" if len(ids) > _SHOWN else "")


def read_choice(value: Any, num_labeled_is_all: bool = False) -> LabeledChoice | None:
    """The choice ``value`` (``data.labeled_ids``) names, checked for shape; None when unset.

    Raises :class:`ConfigError` for a value that is neither a path nor a list, an unreadable or
    malformed selection file, an empty list, duplicates, or ``data.num_labeled=all`` beside it.
    """
    if value is None:
        return None
    if isinstance(value, str) and value.startswith(SELECT_PREFIX):
        choice = read_select_spec(value)
        if num_labeled_is_all:
            raise ConfigError(KEY, f"{value!r} chooses data.num_labeled images, but data.num_labeled=all asks for "
                                   "every training image", "set data.num_labeled to the number to choose, e.g. 1 or 5")
        return choice
    if isinstance(value, (str, os.PathLike)):
        choice = read_selection(Path(value))
    elif isinstance(value, Sequence) and not isinstance(value, bytes):  # a list, or Hydra's ListConfig
        choice = LabeledChoice(tuple(value), {"kind": "list"})
    else:
        raise ConfigError(KEY, f"must be the path of a selection.json or a list of image ids, got "
                               f"{type(value).__name__} {str(value)[:60]!r}",
                          "e.g. data.labeled_ids=selection.json or data.labeled_ids=[img03,img07]")
    _check_ids(choice.ids, choice.source)
    if num_labeled_is_all:
        raise ConfigError(KEY, f"names {len(choice.ids)} annotated image(s) itself, but data.num_labeled=all asks "
                               "for every training image",
                          "drop data.num_labeled=all (the selection sets the number), or drop data.labeled_ids "
                          "to annotate every training image")
    return choice


def read_select_spec(value: str) -> LabeledChoice:
    """``select:<strategy>[:<seed>]`` checked: a strategy of pscl-select and an integer seed."""
    parts = value[len(SELECT_PREFIX):].split(":")
    fix = f"write select:<strategy> or select:<strategy>:<seed>, strategy one of {', '.join(STRATEGIES)}"
    if len(parts) > 2 or parts[0] not in STRATEGIES:
        raise ConfigError(KEY, f"{value!r} names no strategy of pscl-select", fix)
    seed = None
    if len(parts) == 2:
        try:
            seed = int(parts[1])
        except ValueError:
            raise ConfigError(KEY, f"{value!r}: the seed {parts[1]!r} is not a whole number", fix) from None
    source = {"kind": "selection", "strategy": parts[0], "features": None if parts[0] == "random" else "intensity"}
    return LabeledChoice((), source, strategy=parts[0], seed=seed)


def _where(source: dict[str, Any]) -> str:
    return f"{source['file']}: " if source.get("kind") == "selection" else ""


def _check_ids(ids: Sequence[Any], source: dict[str, Any]) -> None:
    where = _where(source)
    if not ids:
        raise ConfigError(KEY, f"{where}names no image: the list of ids is empty",
                          "name at least one training image id, or set data.labeled_ids=null to draw them "
                          "with data.num_labeled and data.label_seed")
    empty = [i for i in ids if isinstance(i, str) and not i.strip()]
    if empty:
        raise ConfigError(KEY, f"{where}holds an empty id", "every id is the file stem of a training image")
    seen: set[tuple[type, Any]] = set()
    repeated = []
    for i in ids:
        if (type(i), i) in seen:
            repeated.append(i)
        seen.add((type(i), i))
    if repeated:
        raise ConfigError(KEY, f"{where}names some images more than once: {_show(sorted(set(map(str, repeated))))}",
                          "list each image once")


def read_selection(path: Path) -> LabeledChoice:
    """Read and check a ``selection.json`` (module docstring); relative paths from the current folder."""
    given = path
    path = path.expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    relative = "" if given.expanduser().is_absolute() else f" (a relative path is read from {Path.cwd()})"
    if not path.exists():
        raise ConfigError(KEY, f"{path}: no such file{relative}",
                          "give the path of a selection.json written by pscl-select, or a list of image ids: "
                          "data.labeled_ids=[img03,img07]")
    if not path.is_file():
        raise ConfigError(KEY, f"{path}: is not a regular file", "give the path of a selection.json")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SELECTION_BYTES + 1)
    except OSError as exc:
        raise ConfigError(KEY, f"{path}: cannot be read ({exc.strerror or exc})",
                          "check that the file exists and that you may read it") from None
    if len(data) > MAX_SELECTION_BYTES:
        raise ConfigError(KEY, f"{path}: is larger than {MAX_SELECTION_BYTES >> 20} MiB, far more than a selection of "
                               "image ids needs; it is not read", "give the selection.json that pscl-select wrote")
    try:
        record = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(KEY, f"{path}: is not UTF-8 text", "give the selection.json that pscl-select wrote") from None
    except (ValueError, RecursionError) as exc:
        raise ConfigError(KEY, f"{path}: is not valid JSON ({str(exc)[:120]})",
                          "give the selection.json that pscl-select wrote") from None
    if not isinstance(record, dict):
        raise ConfigError(KEY, f"{path}: holds a JSON {type(record).__name__}, not an object with `ids`",
                          'write e.g. {"ids": ["img03", "img07"]}')
    ids = record.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ConfigError(KEY, f"{path}: `ids` must be a list of image ids (strings)",
                          'write e.g. {"ids": ["img03", "img07"]}')
    source: dict[str, Any] = {"kind": "selection", "file": str(path), "sha256": hashlib.sha256(data).hexdigest()}
    for name in SELECTION_FIELDS:
        value = _small_plain(record.get(name))
        if value is not None:
            source[name] = value
    return LabeledChoice(tuple(ids), source)


def _small_plain(value: Any) -> Any:
    """``value`` if it is a short string, an integer or a short list of short strings; else None
    (an odd field of a hostile file is not copied into the run's records)."""
    if isinstance(value, str):
        return value[:200]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, list) and len(value) <= 64 and all(isinstance(v, str) and len(v) <= 200 for v in value):
        return list(value)
    return None


def _as_id(value: Any, known: Collection[str]) -> str:
    """The id a list entry names: a string is itself; an integer Hydra made of an id such as
    ``15_016`` is the one known id that Hydra reads as that number."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        spellings = [i for i in known if _HYDRA_INT.fullmatch(i) and int(i) == value]
        if len(spellings) == 1:
            return spellings[0]
        if len(spellings) > 1:
            raise ConfigError(KEY, f"the number {value} may be any of the ids {_show(sorted(spellings))} (Hydra reads "
                                   "unquoted digits, with underscores, as a number)", QUOTE_FIX)
        raise ConfigError(KEY, f"holds the number {value}, which is no image id of this dataset (Hydra reads "
                               "unquoted digits, with underscores, as a number; YAML also reads a leading 0 as octal)",
                          QUOTE_FIX)
    raise ConfigError(KEY, f"holds {value!r} ({type(value).__name__}), not an image id", QUOTE_FIX)


def resolve_ids(choice: LabeledChoice, train_ids: Sequence[str], val_ids: Collection[str] = (),
                test_ids: Collection[str] = (), unlabeled_ids: Collection[str] = (),
                val_carved: bool = False) -> tuple[str, ...]:
    """The training ids ``choice`` names, in its order. Raises :class:`ConfigError` naming the
    ids that are not training images of this dataset and what they are instead."""
    where = _where(choice.source)
    known = {*train_ids, *val_ids, *test_ids}
    ids = [_as_id(value, known) for value in choice.ids]
    _check_ids(ids, choice.source)
    train = set(train_ids)
    outside = [i for i in ids if i not in train]
    if not outside:
        return tuple(ids)
    test = [i for i in outside if i in test_ids]
    if test:
        raise ConfigError(KEY, f"{where}names images of the test split: {_show(test)}; a run never trains on its "
                               "test images", "select from the training images of the same split (data.split_seed, "
                                              "data.test_fraction, splits.json) or remove these ids")
    val = [i for i in outside if i in val_ids]
    if val:
        carved = " (carved from the training images by data.val_fraction)" if val_carved else ""
        raise ConfigError(KEY, f"{where}names images of the validation split{carved}: {_show(val)}",
                          "select from the training images of the same split, remove these ids"
                          + (", or set data.val_fraction=0" if val_carved else ""))
    extra = [i for i in outside if i in set(unlabeled_ids)]
    if extra:
        raise ConfigError(KEY, f"{where}names images of unlabeled/, which have no mask: {_show(extra)}",
                          "name annotated training images (images/ with a mask in masks/)")
    raise ConfigError(KEY, f"{where}names ids that are no image of this dataset: {_show(outside)}",
                      f"use ids of its {len(train_ids)} training images ({_show(sorted(train_ids))}); "
                      "was the selection made for another data.root?")


#: ``(root, {train id: image file}, strategy, budget, seed, presets) -> (ids, facts)``: how a run chooses
#: its images for ``select:<strategy>`` (``pscl.select.choose.choose_training_images``, handed in by
#: training, so that the data layer does not import the selection package above it)
Chooser = Callable[[str, dict[str, Any], str, int, int, Any], tuple[tuple[str, ...], dict[str, Any]]]


def choose_labeled(choice: LabeledChoice | None, index: DatasetIndex, num_labeled: int | str, label_seed: int,
                   root: Path | str, val_carved: bool = False,
                   chooser: Chooser | None = None) -> tuple[tuple[str, ...], dict[str, Any]]:
    """This round's annotated ids, and what a choice made in the run adds to its source record.

    Without ``choice``: the draw of ``num_labeled`` / ``label_seed`` (the authors' preset subsets
    first). With ``select:<strategy>``: ``num_labeled`` training images chosen by that pscl-select
    strategy on intensity features (``chooser``), seeded by the spec's seed or ``label_seed``; the facts added
    are ``seed``, ``budget``, ``scores`` and ``pool_size``. Otherwise the ids ``choice`` names,
    checked against the splits (:func:`resolve_ids`). Facts are ``{}`` unless chosen in the run.
    """
    if choice is None:
        return select_labeled(index.train_ids, num_labeled, label_seed, index.labeled_presets), {}
    if choice.strategy is not None:  # select:<strategy>: chosen here, from the train images
        if chooser is None:
            raise ConfigError(KEY, f"select:{choice.strategy} chooses the annotated images in the run, and this "
                                   "data module was given no way to choose them",
                              "run it through pscl-train, or set datamodule.labeled_chooser = "
                              "pscl.select.choose.choose_training_images before setup(), or pass the "
                              "selection.json that pscl-select writes")
        seed = int(label_seed) if choice.seed is None else int(choice.seed)
        budget = parse_num_labeled(num_labeled)
        assert budget is not None  # read_choice refuses num_labeled=all beside select:
        images = {i: index.samples[i].image for i in index.train_ids}
        ids, facts = chooser(str(root), images, choice.strategy, budget, seed, index.labeled_presets)
        return ids, {"seed": seed, "budget": budget, "scores": facts["scores"], "pool_size": facts["pool_size"]}
    ids = resolve_ids(choice, index.train_ids, index.val_ids, index.test_ids, [s.id for s in index.unlabeled],
                      val_carved=val_carved)
    return ids, {}


def check_same_ids(recorded: Any, current: Sequence[str], what: str, source: dict[str, Any],
                   ordered: bool = True) -> None:
    """Refuse to continue ``what`` (a checkpoint or pretraining of the resumed run) that was trained
    on other annotated images than this run's: the selection file changed since the run started.
    ``ordered=False`` compares them as a set, as the pretraining cache does (pscl.training.pretrain_cache)."""
    if not isinstance(recorded, list):
        return
    if (list(recorded) == list(current)) if ordered else (sorted(map(str, recorded)) == sorted(current)):
        return
    named = source.get("kind") in ("selection", "list")
    raise ConfigError(KEY if named else "data.label_seed",
                      f"{what} was trained on the annotated images {_show(recorded)}, but this run's are "
                      f"{_show(list(current))} ({describe_source(source)}): they changed since the run started",
                      ("restore the selection file the run started with" if named
                       else "restore the data folder (its images, splits.json) as it was") + ", or start a new run")
