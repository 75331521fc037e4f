"""Dice from pixel counts: the one computation behind every Dice pscl reports.

* :func:`dice_counts` - true positives, false positives and false negatives per class of one
  prediction (pixels labelled :data:`~pscl.constants.IGNORE_INDEX` left out); pooling over a test
  set is adding the counts;
* :func:`class_dice` - Dice per class, ``2 TP / (2 TP + FN + FP)``, NaN for a class that is in
  neither the prediction nor the truth;
* :func:`foreground_dice` - the mean over the foreground classes (class 0, the matrix, excluded)
  that are present.

Used by the runs' own metrics (:mod:`pscl.metrics`, which pools over the test set and, as the paper
and torchmetrics do, scores an absent class 0 instead of leaving it out), by ``pscl-report``'s
per-image Dice (:func:`pscl.reporting.breakdown.image_dice`) and by the intensity floor
(:mod:`pscl.reporting.intensity_baseline`). Only NumPy is imported: the torch path is reached
through the tensors a caller passes in.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pscl.constants import IGNORE_INDEX


def dice_counts(prediction: np.ndarray, truth: np.ndarray, num_classes: int,
                ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tp, fp, fn)``, each (C,) int64, of ``prediction`` against ``truth`` (class indices, same shape).

    Pixels labelled ``ignore_index`` in ``truth`` count for nothing, and so do values outside
    ``0 .. num_classes - 1``.
    """
    kept = np.asarray(truth) != ignore_index
    predicted = np.asarray(prediction)[kept].astype(np.int64)
    actual = np.asarray(truth)[kept].astype(np.int64)
    tp = np.bincount(predicted[predicted == actual], minlength=num_classes)[:num_classes]
    fp = np.bincount(predicted, minlength=num_classes)[:num_classes] - tp
    fn = np.bincount(actual, minlength=num_classes)[:num_classes] - tp
    return tp, fp, fn


def class_dice(tp: Any, fp: Any, fn: Any) -> Any:
    """(C,) Dice per class from counts; NaN (0 / 0) for a class in neither prediction nor truth.

    NumPy counts give float64, exact up to the one rounding of the division (the sums of integer
    counts are exact). Torch counts give float32 computed with the operations of torchmetrics'
    ``MulticlassF1Score``, in its order, so the values are bit for bit its values (which are 0
    where these are NaN); above 2**24 pixels float32 rounds the counts, as torchmetrics does.
    """
    if isinstance(tp, np.ndarray):
        twice = 2.0 * tp
        with np.errstate(invalid="ignore"):
            return twice / (twice + fn + fp)
    tp, fp, fn = tp.float(), fp.float(), fn.float()
    twice = 2 * tp
    return twice / (twice + fn + fp)


def foreground_dice(per_class: Any) -> float:
    """Mean of the foreground classes' (1 ..) Dice that are not NaN; NaN when none is present.

    ``per_class`` is a NumPy array or a torch tensor (:func:`class_dice`); the mean is taken by its
    own library in its own precision (the two sum in different orders, so they may differ in the
    last bit).
    """
    foreground = per_class[1:]
    present = foreground[foreground == foreground]  # NaN, an absent class, is the one value unequal to itself
    return float(present.mean()) if len(present) else math.nan
