"""``pscl-train``: the Hydra entry point around :func:`pscl.training.pipeline.train`, and its exit codes.

Exit codes (:mod:`pscl.errors`): 0 done, 1 a crash (a bug: please report it), 2 a user error (bad
data, config value, option or file), 3 the training diverged (non-finite loss or weights). A
failing job of a multirun writes ``FAILED`` in its folder and the sweep goes on; the command then
exits 1 and lists the failed folders. ``resume=<folder>`` replays a run's saved overrides
(:mod:`pscl.runs.resume`), after checking that they build pscl's own classes only.
"""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from pscl.checks.folders import check_log_folder
from pscl.errors import (
    EXIT_CRASH, EXIT_PARTIAL, EXIT_USER_ERROR, ConfigError, PsclError, crash_message, debugging, run_command)
from pscl.integrity import atomic_write_bytes, atomic_write_text
from pscl.integrity.configs import check_run_targets
from pscl.perf import choose_allocator
from pscl.runs.quoting import unquote_value
from pscl.runs.renamed_keys import translate_overrides
from pscl.runs.resume import resume_argv, write_run_record
from pscl.runs.state import FAILED, failure_line
from pscl.training.build import resuming
from pscl.training.pipeline import train

log = logging.getLogger("pscl.train")  # training's log lines keep the name they had before pscl.training

# what a job returns to Hydra's sweepers
OPTIMISED_METRIC = "dice"
EXIT_DIVERGED = EXIT_PARTIAL

_failed_runs: list[str] = []
_task_started = False
# a resumed multirun's multirun.yaml as it was: Hydra's sweeper rewrites it, resume must not
_sweep_record: tuple[Path, bytes] | None = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MissingMandatoryValue):
        key = getattr(exc, "full_key", "") or "?"
        return str(ConfigError(key, "is required but not set", f"add `{key}=...` to the command line"))
    if isinstance(exc, OmegaConfBaseException):
        return f"config error: {exc}"
    return str(exc)


def _is_multirun() -> bool:
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def _restore_sweep_record() -> None:
    """Put a resumed multirun's ``multirun.yaml`` back as it was before Hydra rewrote it."""
    if _sweep_record is None:
        return
    path, content = _sweep_record
    try:
        if not path.is_file() or path.read_bytes() != content:
            atomic_write_bytes(path, content)
    except OSError as exc:
        log.warning("could not restore %s (%s)", path, exc)


def _prepare_resumed_job(cfg: DictConfig) -> None:
    """Before a resumed job trains: its composed config may build pscl's own classes only (the
    overrides came from a file), and a job that never started gets its ``.hydra/`` record."""
    _restore_sweep_record()
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    fix = "resume only runs that pscl wrote; start a new run instead"
    check_run_targets(OmegaConf.to_container(cfg, resolve=False), output_dir, fix)
    try:  # what Hydra will build is the resolved config: an interpolation may create nodes
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        resolved = None  # it fails the same way when built; nothing of it is built here
    if resolved is not None:
        check_run_targets(resolved, output_dir, fix)
    if HydraConfig.get().output_subdir is None:
        write_run_record(output_dir, cfg, list(HydraConfig.get().overrides.task))


def _refused_resume(exc: PsclError) -> float:
    """A resumed job whose saved config was refused: one message, nothing written to its folder."""
    if debugging():
        traceback.print_exc()
    print(f"pscl-train: error: {exc}", file=sys.stderr, flush=True)
    if _is_multirun():
        _failed_runs.append(str(HydraConfig.get().runtime.output_dir))
        return float("nan")
    sys.exit(int(exc.exit_code))


@hydra.main(version_base="1.3", config_path="pkg://pscl.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    """Run one job. A failure in a multirun is recorded in the job's folder and the sweep goes on."""
    global _task_started
    _task_started = True
    failure: BaseException
    if resuming(cfg) and cfg.get("resume"):
        try:
            _prepare_resumed_job(cfg)
        except PsclError as exc:  # a refused resume leaves the run folder as it was: no FAILED over its state
            return _refused_resume(exc)
    try:
        results = train(cfg)
        return float(results[results["split"]].get(OPTIMISED_METRIC, float("nan")))
    except PsclError as exc:  # a user error (2), or a diverged training (NonFiniteError: 3)
        failure, message, code = exc, _describe(exc), int(exc.exit_code)
    except OmegaConfBaseException as exc:
        failure, message, code = exc, _describe(exc), EXIT_USER_ERROR
    except Exception as exc:  # noqa: BLE001 - a crash of one job must not stop a sweep, nor print a traceback
        failure, message, code = exc, failure_line(exc), EXIT_CRASH
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    if not (output_dir / FAILED).is_file():  # failed before train() marked the folder
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(output_dir / FAILED, message + "\n\n" + traceback.format_exc())
        except OSError as exc:
            log.warning("could not write %s (%s)", output_dir / FAILED, exc)
    if debugging():
        traceback.print_exc()
    if code == EXIT_CRASH:
        print(crash_message("pscl-train", failure), file=sys.stderr, flush=True)
    else:
        print(f"pscl-train: error: {message}", file=sys.stderr, flush=True)
    if _is_multirun():
        _failed_runs.append(str(output_dir))
        log.error("run failed (%s): %s", output_dir, message)
        return float("nan")
    sys.exit(code)


def run_cli() -> int:
    """Run the Hydra app on ``sys.argv`` and return pscl-train's exit code (module docstring).

    Hydra reports a bad option, an unknown config group or an unwritable run folder in one
    message and exits 1 before the task starts: those are user errors, so they return 2.
    """
    global _task_started, _sweep_record
    _task_started = False
    _sweep_record = None
    _failed_runs.clear()
    try:
        resumed = resume_argv(sys.argv[1:])
        if resumed is not None:
            sys.argv = [sys.argv[0], *resumed]
            print(f"pscl-train: resuming with: {' '.join(resumed)}", file=sys.stderr, flush=True)
            sweep = next((a.split("=", 1)[1] for a in resumed if a.startswith("hydra.sweep.dir=")), None)
            if sweep is not None:
                record = Path(unquote_value(sweep)) / "multirun.yaml"
                _sweep_record = (record, record.read_bytes())
        arguments, notes = translate_overrides(sys.argv[1:])
        sys.argv = [sys.argv[0], *arguments]
        for note in notes:
            print(f"pscl-train: note: {note}", file=sys.stderr, flush=True)
        check_log_folder(sys.argv[1:])
    except PsclError as exc:
        if debugging():
            traceback.print_exc()
        print(f"pscl-train: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    try:
        _hydra_main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_CRASH)
        return EXIT_USER_ERROR if code == EXIT_CRASH and not _task_started else code
    finally:
        _restore_sweep_record()
    if _failed_runs:
        print(f"pscl-train: {len(_failed_runs)} run(s) failed; see FAILED in:\n  " + "\n  ".join(_failed_runs),
              file=sys.stderr)
        return EXIT_CRASH
    return 0


def run() -> None:
    """Run ``pscl-train`` once the allocator is chosen; exits non-zero if any job of a multirun failed."""
    sys.exit(run_command("pscl-train", run_cli))


def main() -> None:
    """``python -m pscl.training.app`` (and ``python -m pscl.train``): choose the allocator, then :func:`run`.

    The console script ``pscl-train`` (:func:`pscl.cli.train`) chooses it before importing this
    module, so that torch and Lightning are loaded once, in the final process.
    """
    choose_allocator()
    run()


if __name__ == "__main__":
    main()
