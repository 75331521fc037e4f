"""Training: ``pscl-train`` and :func:`pscl.training.pipeline.train`, the plain function behind it.

A run goes through these modules in this order:

* :mod:`~pscl.training.app` - the Hydra entry point: exit codes, failed jobs of a multirun, resume;
* :mod:`~pscl.training.pipeline` - ``train(cfg)``: checks, data, the stages, ``metrics.json``, the summary;
* :mod:`~pscl.training.pretraining` - the method's pretraining, or an earlier one reused
  (:mod:`~pscl.training.pretrain_cache`), its length and snapshots (:mod:`~pscl.training.pretraining_length`);
* :mod:`~pscl.training.evaluation` - each pretrained network fine-tuned and probed (the snapshot study);
* :mod:`~pscl.training.finetuning` - fine-tuning and the test, and the run's ``model.pt``;
* :mod:`~pscl.training.build` - configs to objects (trainers, backbones) and the checkpoints a stage resumes from.

The callbacks the stages add themselves are here too (:mod:`~pscl.training.stop_on_divergence`,
:mod:`~pscl.training.checkpoint_rng`, :mod:`~pscl.training.online_probe`,
:mod:`~pscl.training.periodic_test`, :mod:`~pscl.training.pretrain_snapshots`); those a config
names are in :mod:`pscl.callbacks`. Importing any of these modules quiets the library noise below.
"""

import logging
import os
import warnings

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before albumentations is first imported

# Noise from library internals that a user can do nothing about.
warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*Total length of `list` across ranks is zero.*")  # no val split
warnings.filterwarnings("ignore", message=".*passed in a `val_dataloader` but have no `validation_step`.*")


class _DropAdvertising(logging.Filter):
    """Lightning advertises a cloud logger at every start; a user of an offline tool has no use for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertising())
