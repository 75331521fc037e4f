"""Random generator states in every checkpoint, so a resumed run draws what the uninterrupted one drew.

Lightning restores weights, optimisers, schedules and loop counters but not the generators. At
each save this callback records torch's (CPU and CUDA), NumPy's and Python's global states, and
the private generators of the training datasets (albumentations and the view samplers keep
their own). A checkpoint is written at the end of an epoch and nothing draws between that point
and the next epoch's loader, so setting them back right after the resumed fit builds its loader
(before the loader's first draw) continues the random streams exactly.

Lightning (2.6) may create the first resumed epoch's iterator twice: once when it builds the
loader and again after ``on_train_epoch_start``. When it will, the states are set once more at
that epoch's start. Exact on one process; under DDP the checkpoint holds rank 0's states.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

KEY = "pscl_random_state"


def train_datasets(loader: Any) -> list[Any]:
    """The datasets with a random state behind a training loader (a DataLoader, a CombinedLoader,
    or the dict/list of loaders Lightning hands back), in a fixed order."""
    found: list[Any] = []

    def visit(item: Any) -> None:
        if item is None:
            return
        if hasattr(item, "flattened"):  # CombinedLoader
            for inner in item.flattened:
                visit(inner)
        elif isinstance(item, dict):
            for key in sorted(item, key=str):
                visit(item[key])
        elif isinstance(item, (list, tuple)):
            for inner in item:
                visit(inner)
        elif hasattr(getattr(item, "dataset", None), "random_state"):
            found.append(item.dataset)

    visit(loader)
    return found


def capture(datasets: list[Any] = ()) -> dict[str, Any]:
    """The global generator states, and those of ``datasets``, in types that load with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
        "datasets": [d.random_state() for d in datasets],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any], datasets: list[Any] = ()) -> None:
    """Set the global generators (and those of ``datasets``, if recorded) to a :func:`capture`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    recorded = state.get("datasets") or []
    if datasets and len(recorded) != len(datasets):
        raise ValueError(f"the checkpoint records the random state of {len(recorded)} training datasets, "
                         f"this run has {len(datasets)}")
    for dataset, dataset_state in zip(datasets, recorded):
        dataset.set_random_state(dataset_state)


def _loader_iterated_again(trainer: pl.Trainer) -> bool:
    """Whether Lightning's epoch loop creates a new loader iterator after ``on_train_epoch_start``
    (its condition in ``_TrainingEpochLoop.on_run_start``)."""
    fit_loop = trainer.fit_loop
    return (trainer.current_epoch > 0 and not getattr(fit_loop, "is_resuming", False)
            and not getattr(fit_loop.epoch_loop, "restarting", False))


class RandomState(pl.Callback):
    """Save the random states with each checkpoint; restore them when fit resumes from one."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._datasets: list[Any] = []

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[KEY] = capture(train_datasets(trainer.train_dataloader))

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if KEY not in checkpoint:
            return
        state = self._pending = checkpoint[KEY]
        restore(state)
        datamodule = getattr(trainer, "datamodule", None)

        def after_train_loader(loader: Any) -> None:
            self._datasets = train_datasets(loader)
            restore(state, self._datasets)

        if datamodule is not None and hasattr(datamodule, "after_train_loader"):
            datamodule.after_train_loader = after_train_loader

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None and _loader_iterated_again(trainer):
            restore(self._pending, self._datasets)
        self._pending = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._pending = None  # the resumed epoch has begun (its start hook may not have run)
