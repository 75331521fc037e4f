"""Configs that come from a file are data, never code: exact targets, plain values, checked first.

pscl builds objects from a config read from a file in two places: a model file (``model.pt``'s
backbone config, or the ``.hydra/config.yaml`` of an older run folder: ``pscl-predict``,
``pscl-export``) and ``resume=`` (the overrides saved in ``.hydra/overrides.yaml`` or
``multirun.yaml``, replayed through Hydra). Anyone who can write such a file could otherwise
name any callable: Hydra follows a ``_target_`` like ``pscl.models.unet.torch.hub.load`` through
the module's attributes to ``torch.hub.load``, and instantiates nested ``_target_`` nodes too.

So before Hydra (or any constructor) sees such a config, :func:`check_file_config` requires

* one ``_target_``, named exactly as one of an explicit set of classes (no prefix matching);
* no other key that Hydra treats specially (``_target_`` nested anywhere, ``_partial_``,
  ``_args_``, ``_recursive_``, ``_convert_``): nothing below the top can be instantiated;
* plain values only: numbers, strings, booleans, null, and lists or mappings of them, with no
  ``${...}`` interpolation (which could reach resolvers);

and :func:`check_overrides` accepts only overrides that set plain values of pscl's own config,
choose options that exist in pscl's config groups, or say where Hydra puts the run.
:func:`check_run_targets` is the last check of a resumed run's composed config.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from pscl.errors import DataError

# Hydra's special keys: any of them lets a config do more than hold values
HYDRA_SPECIAL_KEYS = frozenset({"_target_", "_partial_", "_args_", "_recursive_", "_convert_"})

# every class pscl's own configs instantiate (conf/); tests/integrity/test_security.py checks the list is complete
RUN_TARGETS = frozenset({
    "pscl.models.unet.UNet",
    "pscl.models.smp_backbone.SmpBackbone",
    "pscl.data.datamodule.MicrographDataModule",
    "pscl.modules.segmentation.SegmentationModule",
    "pscl.modules.simclr.SimCLRModule",
    "pscl.modules.moco.MoCoModule",
    "pscl.modules.byol.BYOLModule",
    "pscl.modules.densecl.DenseCLModule",
    "pscl.modules.pscl.PSCLModule",
    "pscl.callbacks.resume_checkpoint.ResumeCheckpoint",
    "pscl.callbacks.predictions.PredictionWriter",
    "lightning.pytorch.Trainer",
    "lightning.pytorch.callbacks.TQDMProgressBar",
    "lightning.pytorch.loggers.CSVLogger",
    "lightning.pytorch.loggers.TensorBoardLogger",
    "torch.optim.Adam",
})

# Hydra settings a resumed run may replay: where the run goes, and the SLURM resources of
# pscl's launcher config. Nothing that runs commands (the launcher's `setup`, `srun_args`),
# loads configs (`searchpath`) or plugins (`callbacks`), or sets the environment (`job.env_set`).
SAFE_HYDRA_KEYS = frozenset({
    "hydra.mode", "hydra.run.dir", "hydra.sweep.dir", "hydra.sweep.subdir", "hydra.job.chdir", "hydra.verbose",
    "hydra.output_subdir",
})
SAFE_LAUNCHER_KEYS = frozenset({
    "timeout_min", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "cpus_per_gpu", "gpus_per_task",
    "mem_gb", "mem_per_gpu", "mem_per_cpu", "partition", "account", "qos", "comment", "constraint", "exclude",
    "gres", "name", "array_parallelism", "max_num_timeout", "signal_delay_s",
})
HYDRA_GROUPS = {"hydra/launcher": ("basic", "slurm", "submitit_slurm", "submitit_local")}
_INTERPOLATION = re.compile(r"\$\{")
_MAX_DEPTH = 32


class UnsafeConfigError(DataError):
    """A config read from a file that names code or holds more than plain values: refused, never built."""


def _refuse(problem: str, path: Path | str | None, fix: str) -> UnsafeConfigError:
    return UnsafeConfigError(f"refused: {problem}; nothing in it was built or run", path, fix)


def _check_plain(value: Any, where: str, path: Path | str | None, fix: str, depth: int = 0) -> None:
    """Raise unless ``value`` is plain data: scalars, lists and string-keyed mappings of them."""
    if depth > _MAX_DEPTH:
        raise _refuse(f"`{where}` is nested more than {_MAX_DEPTH} levels deep", path, fix)
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, str):
        if _INTERPOLATION.search(value):
            raise _refuse(f"`{where}` holds an interpolation ({value[:80]!r}); a saved config holds values only",
                          path, fix)
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]", path, fix, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _refuse(f"`{where}` has a key that is not a string ({key!r})", path, fix)
            if key in HYDRA_SPECIAL_KEYS or key.startswith("_"):
                raise _refuse(f"`{where}.{key}` is a key Hydra would act on (a nested target, or a call's "
                              "arguments); a saved config may name one class, at its top", path, fix)
            _check_plain(item, f"{where}.{key}", path, fix, depth + 1)
        return
    raise _refuse(f"`{where}` is a {type(value).__name__}, not a plain value", path, fix)


def check_file_config(config: Any, allowed: Iterable[str], path: Path | str | None, where: str,
                      fix: str) -> tuple[str, dict[str, Any]]:
    """``(target, settings)`` of a config read from a file, after checking it (module docstring).

    ``allowed``: the exact class names it may name. Raises :class:`UnsafeConfigError` naming
    ``path`` and the offending key; nothing is imported or built before the check passes.
    """
    if not isinstance(config, Mapping):
        raise _refuse(f"`{where}` is a {type(config).__name__}, not a mapping with a `_target_`", path, fix)
    allowed = frozenset(allowed)
    target = config.get("_target_")
    if not isinstance(target, str) or target not in allowed:
        raise _refuse(f"`{where}._target_` is {target!r}, which is not one of the classes pscl builds from a file "
                      f"({', '.join(sorted(allowed))})", path, fix)
    settings = {k: v for k, v in config.items() if k != "_target_"}
    _check_plain(settings, where, path, fix)
    return target, dict(settings)


def _walk_targets(node: Any, where: str, depth: int = 0) -> Iterable[tuple[str, Any]]:
    """``(where, target)`` of every ``_target_`` in ``node``; a node nested too deep to walk is
    reported as a target of its own (Hydra would instantiate at any depth, so it cannot pass)."""
    if depth > _MAX_DEPTH:
        yield where, f"<nested more than {_MAX_DEPTH} levels deep>"
        return
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "_target_":
                yield where or "<top>", value
            else:
                yield from _walk_targets(value, f"{where}.{key}" if where else str(key), depth + 1)
    elif isinstance(node, (list, tuple)):
        for index, item in enumerate(node):
            yield from _walk_targets(item, f"{where}[{index}]", depth + 1)


def check_run_targets(config: Mapping[str, Any], path: Path | str | None, fix: str,
                      allowed: Iterable[str] = RUN_TARGETS) -> None:
    """Raise :class:`UnsafeConfigError` if any ``_target_`` of a run config (as plain containers,
    unresolved) is not one of ``allowed`` (pscl's own :data:`RUN_TARGETS`)."""
    allowed = frozenset(allowed)
    for where, target in _walk_targets(config, ""):
        if not isinstance(target, str) or target not in allowed:
            raise _refuse(f"`{where}._target_` is {target!r}, which is not a class pscl's configs build", path, fix)


@lru_cache(maxsize=1)
def config_group_options() -> dict[str, frozenset[str]]:
    """``{group: options}`` of pscl's packaged configs (``pscl.conf``), e.g. ``method`` -> simclr, ..."""
    options: dict[str, set[str]] = {}

    def visit(folder: Any, group: str) -> None:
        for entry in folder.iterdir():
            name = entry.name
            if entry.is_dir() and not name.startswith(("_", ".")):
                visit(entry, f"{group}/{name}" if group else name)
            elif group and name.endswith(".yaml"):
                options.setdefault(group, set()).add(name[: -len(".yaml")])

    visit(resources.files("pscl.conf"), "")
    return {group: frozenset(names) for group, names in options.items()}


def _override_key(override: Any) -> str:
    return str(override.key_or_group)


def _choices(override: Any) -> list[str]:
    """The options a group override chooses ([] for a deletion or a glob, which match existing ones only)."""
    from hydra.core.override_parser.types import Glob

    value = override.value()
    if override.is_delete() or isinstance(value, Glob):
        return []
    if override.is_sweep_override():
        return [str(v) for v in override.sweep_string_iterator()]
    return [str(value)]


def _check_override_value(value: Any, text: str, path: Path | str, fix: str, depth: int = 0) -> None:
    """Refuse an override value that could become a node Hydra builds: an interpolation (its
    resolvers can create nodes, e.g. ``oc.create``) or a mapping with a key Hydra acts on, at any depth."""
    from hydra.core.override_parser.types import ChoiceSweep, Glob, IntervalSweep, RangeSweep

    if depth > _MAX_DEPTH:
        raise _refuse(f"the override {text!r} is nested more than {_MAX_DEPTH} levels deep", path, fix)
    if isinstance(value, str):
        if _INTERPOLATION.search(value):
            raise _refuse(f"the override {text!r} holds an interpolation; a replayed override holds values only",
                          path, fix)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if str(key).startswith("_"):
                raise _refuse(f"the override {text!r} holds the key {key!r}, which Hydra would act on", path, fix)
            _check_override_value(item, text, path, fix, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_override_value(item, text, path, fix, depth + 1)
    elif isinstance(value, ChoiceSweep):
        _check_override_value(list(value.list), text, path, fix, depth + 1)
    elif isinstance(value, Glob):
        _check_override_value([*value.include, *value.exclude], text, path, fix, depth + 1)
    elif not (value is None or isinstance(value, (bool, int, float, RangeSweep, IntervalSweep))):
        raise _refuse(f"the override {text!r} holds a {type(value).__name__}, not a plain value", path, fix)


def check_overrides(overrides: Iterable[str], path: Path | str, fix: str, hydra_settings: bool = False) -> None:
    """Raise :class:`UnsafeConfigError` for a saved override that could make Hydra run code.

    ``hydra_settings``: the list is Hydra's own overrides (``multirun.yaml``'s
    ``hydra.overrides.hydra``), where only :data:`SAFE_HYDRA_KEYS`, pscl's launcher choices and
    the launcher's resource keys are accepted. In the task overrides, no key may start with
    ``hydra`` or hold a Hydra special key, and a config-group choice must be an option that
    exists in pscl's packaged configs.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    texts = [str(o) for o in overrides]
    parser = OverridesParser.create()
    groups = {**config_group_options(), **HYDRA_GROUPS}
    for text in texts:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as exc:
            raise DataError(f"holds an override Hydra cannot read ({text!r}: {str(exc).splitlines()[0][:120]})",
                            path, fix) from None
        key = _override_key(override)
        parts = re.split(r"[./]", key)
        if any(part in HYDRA_SPECIAL_KEYS or part.startswith("_") for part in parts):
            raise _refuse(f"the override {text!r} sets a key Hydra would act on", path, fix)
        _check_override_value(override.value(), text, path, fix)
        if key in groups:
            unknown = [c for c in _choices(override) if c not in groups[key]]
            if unknown:
                raise _refuse(f"the override {text!r} chooses {unknown[0]!r}, which is not one of pscl's "
                              f"`{key}` configs ({', '.join(sorted(groups[key]))})", path, fix)
            continue
        is_hydra = key == "hydra" or key.startswith(("hydra.", "hydra/"))
        if not hydra_settings:
            if is_hydra:
                raise _refuse(f"the override {text!r} changes Hydra's own settings in a list of run overrides",
                              path, fix)
            continue
        launcher_key = key.startswith("hydra.launcher.") and key.split(".", 2)[2] in SAFE_LAUNCHER_KEYS
        if not (key in SAFE_HYDRA_KEYS or launcher_key):
            raise _refuse(f"the Hydra override {text!r} is not one a pscl run writes (accepted: where the run goes, "
                          "the launcher and its resources)", path, fix)
