""":func:`train`: one experiment from a composed config, without the CLI (tests call it directly).

``train(cfg)`` checks the config, builds the data module, pretrains (or reuses a pretraining,
:mod:`pscl.training.pretraining`), fine-tunes and tests from each snapshot and from the final
weights (:mod:`pscl.training.evaluation`), writes ``metrics.json`` in the run folder, prints the
summary and returns the metrics. The summary ends with the commands that go on from the run:
fine-tuning from its pretraining, or applying its model to new micrographs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from pscl.checks import check_batch_sizes, check_config
from pscl.checks.config import single_crop_side
from pscl.data.labeled_ids import describe_source, seed_source
from pscl.errors import ConfigError
from pscl.integrity import atomic_write_text
from pscl.models.model_file import MODEL_FILE
from pscl.models.transfer import load_pretrained
from pscl.runs import METRICS, read_state, run_markers
from pscl.runs.quoting import command_arg
from pscl.select.choose import choose_training_images
from pscl.training.build import build_datamodule, eval_split, resuming
from pscl.training.evaluation import evaluate_weights, finetune_from_snapshot, random_init_probe
from pscl.training.finetuning import protocol
from pscl.training.pretraining import Pretraining, pretrain_or_reuse

log = logging.getLogger("pscl.train")  # training's log lines keep the name they had before pscl.training


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run one experiment described by ``cfg``; returns ``{"test": {...}, ...}`` and writes metrics.json.

    ``stage=both`` pretrains (if the method has a pretraining stage), fine-tunes and tests;
    ``stage=pretrain`` stops after pretraining; ``stage=finetune`` fine-tunes from
    ``pretrained_ckpt`` (or from scratch for ``method=supervised``). The run folder is marked
    ``RUNNING`` meanwhile and ends with ``metrics.json`` or ``FAILED`` (:mod:`pscl.runs.state`).
    """
    output_dir = Path(cfg.paths.output_dir)
    state = read_state(output_dir) if resuming(cfg) else None
    if state is not None and state.state == "finished":
        log.info("resume: %s had finished; nothing to do", output_dir)
        print(f"pscl: {output_dir} had finished (metrics.json); nothing to resume", flush=True)
        return json.loads((output_dir / METRICS).read_text())
    with run_markers(output_dir, enabled=rank_zero_only.rank == 0 and not cfg.trainer.get("fast_dev_run")):
        return _train(cfg, output_dir)


def _train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    started = time.time()
    check_config(cfg)
    check_batch_sizes(cfg)
    stage = str(cfg.get("stage", "both"))
    if stage not in {"pretrain", "finetune", "both"}:
        raise ConfigError("stage", f"must be pretrain, finetune or both, got {stage!r}")
    has_pretraining = cfg.method.get("pretrain") is not None
    if stage == "pretrain" and not has_pretraining:
        raise ConfigError("stage", f"method={cfg.method.name} has no pretraining stage", "use stage=both")
    if stage == "finetune" and has_pretraining and not cfg.get("pretrained_ckpt"):
        raise ConfigError("pretrained_ckpt", f"stage=finetune with method={cfg.method.name} needs pretrained weights",
                          "add pretrained_ckpt=<run>/pretrain/pretrained.pt, or use stage=both")
    if cfg.get("print_config"):
        log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    log.info("memory allocator: %s (PSCL_ALLOCATOR; docs/performance.md)",
             os.environ.get("PSCL_ALLOCATOR_IN_EFFECT", "unchanged"))
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    output_dir.mkdir(parents=True, exist_ok=True)

    datamodule = build_datamodule(cfg)
    datamodule.labeled_chooser = choose_training_images  # data.labeled_ids=select:<strategy>
    datamodule.single_crop_side = single_crop_side(cfg)  # what the configured backbone needs
    datamodule.prepare_data()
    datamodule.setup("fit")

    pretraining = Pretraining()
    if cfg.get("pretrained_ckpt"):
        pretraining.weights = load_pretrained(cfg.pretrained_ckpt)
        pretraining.info["source"] = str(cfg.pretrained_ckpt)
    elif has_pretraining:
        pretraining = pretrain_or_reuse(cfg, datamodule, output_dir)
    split = eval_split(cfg)
    results: dict[str, Any] = {
        "method": cfg.method.name,
        "num_labeled": datamodule.num_labeled,
        "label_seed": datamodule.label_seed,
        "labeled_ids": list(datamodule.labeled_ids),
        "labeled_source": datamodule.labeled_source,
        "data_root": str(datamodule.root),
        "split": split,
        split: {},
        "pretraining": pretraining.info,
        "output_dir": str(output_dir),
    }
    if stage != "pretrain":
        probing = bool((cfg.get("eval") or {}).get("probe", False))
        floor = random_init_probe(cfg, datamodule, split) if probing else None
        points = []
        for snapshot in pretraining.snapshots[:-1]:  # shorter pretrainings first; the final one last
            points.append(finetune_from_snapshot(cfg, datamodule, snapshot, floor, output_dir))
        final = evaluate_weights(cfg, datamodule, pretraining.weights, floor, model_file=output_dir / MODEL_FILE)
        if pretraining.snapshots:
            epoch, steps, _ = pretraining.snapshots[-1]
            points.append({"epoch": epoch, "steps": steps, **final})
            results["snapshots"] = points
        results["test_history"] = final["history"]
        results["protocol"] = protocol(cfg)
        results[split] = final[split]
        if probing:
            results["probe"] = final["probe"]
        results["transferred_keys"] = 0 if pretraining.weights is None else len(pretraining.weights)
    results["wall_time_s"] = round(time.time() - started, 1)
    if rank_zero_only.rank == 0 and not cfg.trainer.get("fast_dev_run"):
        atomic_write_text(output_dir / "metrics.json", json.dumps(results, indent=2))
    _print_summary(results, output_dir, cfg)
    return results


# overrides a printed fine-tuning command sets itself, or that say where a run went or that it resumed
_NOT_CARRIED = ("stage", "pretrained_ckpt", "resume")


def _run_overrides(output_dir: Path) -> list[str] | None:
    """The overrides this run was started with (Hydra's task overrides); None outside a Hydra job."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    # a Hydra job that ran earlier in this process leaves its config behind: it must be this run's
    if Path(str(hydra_cfg.runtime.output_dir)).resolve() != Path(output_dir).resolve():
        return None
    return [str(override) for override in hydra_cfg.overrides.task]


def _carried(override: str) -> bool:
    key = override.split("=", 1)[0].lstrip("+~")
    return key not in _NOT_CARRIED and not key.startswith("hydra.")


def finetune_command(output_dir: Path, cfg: DictConfig) -> str:
    """The ``pscl-train`` command that fine-tunes from this run's pretraining: the run's own overrides
    (so data, backbone and experiment match) with ``stage=finetune`` and ``pretrained_ckpt=`` set, and
    without the ones that placed or resumed it. Outside a Hydra job (``train(cfg)``) only the method
    is known."""
    overrides = _run_overrides(output_dir)
    # the run's overrides are already Hydra syntax as typed (e.g. data.root='/my data'): shell quoting only
    kept = ([command_arg(o) for o in overrides if _carried(o)] if overrides is not None
            else [command_arg(str(cfg.method.name), "method")])
    weights = output_dir / "pretrain" / "pretrained.pt"
    return " ".join(["pscl-train", *kept, command_arg("finetune", "stage"),
                     command_arg(str(weights), "pretrained_ckpt")])


def predict_command(output_dir: Path, data_root: str | None) -> str:
    """The ``pscl-predict`` command that applies this run's model to a folder of micrographs, each
    path quoted for the shell (its arguments are argparse's, not Hydra's)."""
    images = Path(data_root) / "images" if data_root and (Path(data_root) / "images").is_dir() else None
    image_arg = command_arg(str(images)) if images is not None else "<micrographs>"
    return " ".join(["pscl-predict", command_arg(str(output_dir)), image_arg, "--out",
                     command_arg(str(output_dir / "predict"))])


def _print_summary(results: dict[str, Any], output_dir: Path, cfg: DictConfig) -> None:
    split = results["split"]
    test = results[split]
    if rank_zero_only.rank != 0:
        return
    if not test:
        if (output_dir / "pretrain" / "pretrained.pt").is_file():
            note = ""
            if _run_overrides(output_dir) is None:  # train(cfg) called directly: only the method is known
                note = "\n  (add the other overrides this run was started with, e.g. data= and backbone=)"
            print(f"pscl: {results['method']} pretraining done; fine-tune with\n"
                  f"  {finetune_command(output_dir, cfg)}{note}", flush=True)
        return
    source = describe_source(results.get("labeled_source") or seed_source(results["label_seed"]))
    lines = [
        f"pscl: {results['method']} with {results['num_labeled']} annotated image(s) "
        f"({source}: {', '.join(results['labeled_ids'][:5])})",
        f"  {split} Dice {test['dice']:.4f} (mean over foreground classes)   ACC {test['acc']:.4f}   mIoU {test['miou']:.4f}",
    ]
    if "probe" in results:
        probe = results["probe"]
        lines.append(f"  probe Dice {probe['dice']:.4f} (frozen network, linear per pixel; random init "
                     f"{probe['random_init']['dice']:.4f})")
    by_steps = bool(cfg.get("snapshot_steps"))
    for point in results.get("snapshots", [])[:-1]:
        probe_text = f"   probe Dice {point['probe']['dice']:.4f}" if "probe" in point else ""
        where = (f"step {point['steps']} (epoch {point['epoch']})" if by_steps
                 else f"epoch {point['epoch']} ({point['steps']} steps)")
        lines.append(f"  from pretraining {where}: {split} Dice {point[split]['dice']:.4f}{probe_text}")
    if "predictions" in (cfg.get("callbacks") or {}):
        lines.append(f"  predictions: {cfg.callbacks.predictions.dirpath}")
    if "tensorboard" in (cfg.get("logger") or {}):
        lines.append(f"  TensorBoard: tensorboard --logdir {output_dir}")
    if (output_dir / MODEL_FILE).is_file():
        lines.append(f"  apply it to new micrographs: {predict_command(output_dir, results.get('data_root'))}")
    lines.append(f"  run folder: {output_dir}   ({results['wall_time_s']} s)")
    print("\n".join(lines), flush=True)
