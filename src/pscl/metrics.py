"""Segmentation metrics as the literature reports them, built on torchmetrics.

* ``dice`` - the paper's Dice: per foreground class, pooled over every pixel of the whole test
  set (2 TP / (2 TP + FP + FN), i.e. the global F1 score, :func:`pscl.dice.class_dice`), then the
  unweighted mean over the foreground classes (class 0, the matrix, is excluded; a class in
  neither the predictions nor the masks scores 0, as in torchmetrics' F1);
* ``acc`` - the paper's ACC: pixel accuracy of each image over all classes, averaged over images;
* ``miou`` - IoU per class pooled over the test set, mean over all classes (background included);
* ``dice_<class>`` and ``iou_<class>`` per class.

Pixels labelled 255 are ignored everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex, MulticlassStatScores

from pscl.constants import IGNORE_INDEX
from pscl.dice import class_dice


class SegmentationMetrics(nn.Module):
    """Accumulates predictions over a test set; :meth:`compute` returns the named values."""

    def __init__(self, class_names: Sequence[str], ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        n = len(self.class_names)
        self.pooled_counts = MulticlassStatScores(n, average="none", multidim_average="global",
                                                  ignore_index=ignore_index)
        self.image_acc = MulticlassAccuracy(n, average="micro", multidim_average="samplewise",
                                            ignore_index=ignore_index)
        self.pooled_iou = MulticlassJaccardIndex(n, average="none", ignore_index=ignore_index)
        self.num_updates = 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds`` and ``target``: (B, H, W) class indices."""
        self.pooled_counts.update(preds, target)
        self.image_acc.update(preds, target)
        self.pooled_iou.update(preds, target)
        self.num_updates += 1

    def compute(self) -> dict[str, float]:
        tp, fp, _, fn, _ = self.pooled_counts.compute().unbind(-1)
        dice = class_dice(tp, fp, fn).nan_to_num(0.0)  # an absent class scores 0
        iou = self.pooled_iou.compute()
        out = {
            "dice": float(dice[1:].mean()),
            "acc": float(self.image_acc.compute().float().mean()),
            "miou": float(iou.mean()),
        }
        for k, name in enumerate(self.class_names):
            out[f"dice_{name}"] = float(dice[k])
            out[f"iou_{name}"] = float(iou[k])
        return out

    def reset(self) -> None:
        self.pooled_counts.reset()
        self.image_acc.reset()
        self.pooled_iou.reset()
        self.num_updates = 0
