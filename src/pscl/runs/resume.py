"""``pscl-train resume=<folder>``: the command line that continues an interrupted run or multirun.

A run folder keeps the overrides it was started with (``.hydra/overrides.yaml``), a multirun
folder its sweep (``multirun.yaml``). :func:`resume_argv` turns ``resume=<folder>`` into those
overrides plus ``resume=<folder>`` and the folder itself as Hydra's run (or sweep) directory, so
every job lands in its old folder: finished jobs are skipped, interrupted ones continue from
their last checkpoint (:func:`pscl.training.pipeline.train`), and jobs that never started run.

Those files are read from disk, so they are checked before Hydra sees them
(:func:`pscl.integrity.configs.check_overrides`): an edited file cannot make a resumed run build
anything but pscl's own classes. The folder may be any path a run can be written to (spaces,
quotes, non-ASCII), and resuming never rewrites the run's ``.hydra/`` files: Hydra is told not to
write them (``hydra.output_subdir=null``), and a multirun job that never started gets its record
from :func:`write_run_record`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pscl.errors import DataError
from pscl.integrity.configs import check_overrides
from pscl.runs.quoting import hydra_value, unquote_value

MULTIRUN_FLAGS = ("-m", "--multirun")
# overrides that say where a run goes or that it resumes: replaced, never carried over
_PLACEMENT = ("resume=", "+resume=", "hydra.run.dir=", "hydra.sweep.dir=", "hydra.sweep.subdir=",
              "hydra.output_subdir=")
_EDITED_FIX = ("the file was edited or does not come from pscl: restore it from the run's original command, "
               "or start a new run instead of resuming")


def _kept(overrides: Sequence[str]) -> list[str]:
    return [str(o) for o in overrides if not str(o).startswith(_PLACEMENT)]


def resume_argv(argv: Sequence[str]) -> list[str] | None:
    """The arguments that continue the folder named by ``resume=`` in ``argv``; None without one.

    Raises :class:`DataError` if the folder is not a pscl run or multirun folder, or if other
    overrides are given (a resumed run keeps its own configuration).
    """
    given = [a for a in argv if a.startswith(("resume=", "+resume="))]
    if not given:
        return None
    value = unquote_value(given[-1].split("=", 1)[1])
    if value in ("", "null", "None"):
        return None
    folder = Path(value).expanduser().absolute()
    others = [a for a in argv if a not in given and a not in MULTIRUN_FLAGS]
    if others:
        raise DataError(f"resume= continues a run with the configuration it started with, but other arguments "
                        f"were given: {' '.join(others)}", folder, f"run `pscl-train resume={value}` alone")
    if not folder.is_dir():
        raise DataError("no such run folder", folder, "pass the folder a run printed (`run folder: ...`)")
    single = folder / ".hydra" / "overrides.yaml"
    sweep = folder / "multirun.yaml"
    place = hydra_value(str(folder))
    if single.is_file():
        overrides = _string_list(_load(single), single, "a list of overrides")
        check_overrides(_kept(overrides), single, _EDITED_FIX)
        return [*_kept(overrides), f"resume={place}", f"hydra.run.dir={place}", "hydra.output_subdir=null"]
    if sweep.is_file():
        saved = _load(sweep)
        task = _string_list(OmegaConf.select(saved, "hydra.overrides.task", default=[]), sweep, "hydra.overrides.task")
        hydra = _string_list(OmegaConf.select(saved, "hydra.overrides.hydra", default=[]), sweep,
                             "hydra.overrides.hydra")
        check_overrides(_kept(task), sweep, _EDITED_FIX)
        check_overrides(_kept(hydra), sweep, _EDITED_FIX, hydra_settings=True)
        return ["-m", *_kept(task), *_kept(hydra), f"resume={place}", f"hydra.sweep.dir={place}",
                "hydra.output_subdir=null"]
    raise DataError("is neither a run folder (.hydra/overrides.yaml) nor a multirun folder (multirun.yaml)", folder,
                    "pass the run folder itself, or the multirun folder that holds the numbered job folders")


def _load(path: Path) -> Any:
    """A YAML file of a run folder, or a :class:`DataError` naming it."""
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    try:
        return OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, YAMLError, OmegaConfBaseException, ValueError) as exc:
        raise DataError(f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})", path,
                        _EDITED_FIX) from None


def _string_list(node: Any, path: Path, what: str) -> list[str]:
    """``node`` as a list of override strings, or a :class:`DataError` naming ``what`` in ``path``."""
    from omegaconf import ListConfig

    if node is None:
        return []
    if isinstance(node, ListConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if not isinstance(node, list) or not all(isinstance(item, str) for item in node):
        raise DataError(f"{what} is not a list of overrides (`key=value` strings)", path, _EDITED_FIX)
    return list(node)


RECORD_FOLDER = ".hydra"


def write_run_record(output_dir: Path, config: Any, task_overrides: Sequence[str]) -> bool:
    """Give a run folder its ``.hydra/config.yaml`` and ``overrides.yaml`` if it has none; True if written.

    A resumed multirun runs with ``hydra.output_subdir=null`` so that no finished or interrupted
    job's record is rewritten; a job that never started still gets one (what ``pscl-report`` and
    the next ``resume=`` read), without the resume's own placement overrides.
    """
    from pscl.integrity import atomic_write_text

    record = Path(output_dir) / RECORD_FOLDER
    if (record / "overrides.yaml").is_file() or (record / "config.yaml").is_file():
        return False
    atomic_write_text(record / "config.yaml", OmegaConf.to_yaml(config))
    atomic_write_text(record / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(_kept(task_overrides))))
    return True
