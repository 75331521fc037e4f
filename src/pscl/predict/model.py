"""Kept for scripts written before the model file moved: ``model.pt`` is :mod:`pscl.models.model_file`,
shared by training (which writes it) and prediction (which reads it)."""

from pscl.models.model_file import MODEL_FILE, MODEL_FORMAT, TrainedModel, load_trained_model, save_model

__all__ = ["MODEL_FILE", "MODEL_FORMAT", "TrainedModel", "load_trained_model", "save_model"]
