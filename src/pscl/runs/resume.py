"""``pscl-train resume=<folder>``: the command line that continues an interrupted run or multirun.

A run folder keeps the overrides it was started with (``.hydra/overrides.yaml``), a multirun
folder its sweep (``multirun.yaml``). :func:`resume_argv` turns ``resume=<folder>`` into those
overrides plus ``resume=<folder>`` and the folder itself as Hydra's run (or sweep) directory, so
every job lands in its old folder: finished jobs are skipped, interrupted ones continue from
their last checkpoint (:func:`pscl.train.train`), and jobs that never started run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from pscl.errors import DataError

MULTIRUN_FLAGS = ("-m", "--multirun")
# overrides that say where a run goes or that it resumes: replaced, never carried over
_PLACEMENT = ("resume=", "+resume=", "hydra.run.dir=", "hydra.sweep.dir=", "hydra.sweep.subdir=")


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
    value = given[-1].split("=", 1)[1]
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
    if single.is_file():
        overrides = OmegaConf.to_container(OmegaConf.load(single))
        return [*_kept(overrides or []), f"resume={folder}", f"hydra.run.dir={folder}"]
    if sweep.is_file():
        saved = OmegaConf.load(sweep)
        task = OmegaConf.to_container(OmegaConf.select(saved, "hydra.overrides.task", default=[])) or []
        hydra = OmegaConf.to_container(OmegaConf.select(saved, "hydra.overrides.hydra", default=[])) or []
        return ["-m", *_kept(task), *_kept(hydra), f"resume={folder}", f"hydra.sweep.dir={folder}"]
    raise DataError("is neither a run folder (.hydra/overrides.yaml) nor a multirun folder (multirun.yaml)", folder,
                    "pass the run folder itself, or the multirun folder that holds the numbered job folders")
