"""Applying a trained run to new micrographs: ``pscl-predict`` and ``pscl-export``.

* ``model.pt`` (:mod:`pscl.models.model_file`, which training writes with) - the fine-tuned network
  with its normalisation, channels, class names, method and config; loads run folders, model
  files and checkpoints;
* :mod:`pscl.predict.tiling` - sliding-window inference of any image size (Gaussian blending), with TTA;
* :mod:`pscl.predict.inputs` - image lists, ``meta.csv``, the output folder;
* :mod:`pscl.predict.runner` - the batch: masks, overlays and the :mod:`pscl.quantify` tables;
* :mod:`pscl.predict.cli` and :mod:`pscl.predict.export` - the two commands.
"""

from pscl.models.model_file import MODEL_FILE, TrainedModel, load_trained_model, save_model
from pscl.predict.tiling import TileSettings, segment, tile_plan

__all__ = ["MODEL_FILE", "TileSettings", "TrainedModel", "load_trained_model", "save_model", "segment", "tile_plan"]
