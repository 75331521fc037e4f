"""A per-pixel linear classifier on frozen features (pure tensor functions).

Pixels are sampled class-balanced from the annotated images (:func:`sample_pixels`), features
are standardised with the sampled pixels' mean and std, and a multinomial logistic regression
with a small L2 penalty is fitted by full-batch L-BFGS (:func:`fit_linear_probe`). Balanced
sampling makes rare classes as frequent as the matrix; the bias is then shifted by
``log(prior / sampled share)`` per class, so that the probe predicts with the class frequencies
of the annotated pixels (the Bayes correction for a changed prior) instead of flooding the image
with rare classes. No setting is chosen on any evaluation data: the defaults are fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pscl.constants import IGNORE_INDEX


@dataclass
class LinearProbe:
    """Standardisation then a linear map: ``logits = W ((x - mean) / std) + b``."""

    mean: torch.Tensor  # (F,)
    std: torch.Tensor  # (F,)
    weight: torch.Tensor  # (K, F)
    bias: torch.Tensor  # (K,)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, F) rows or (B, F, H, W) maps -> (N, K) or (B, K, H, W) logits."""
        if features.dim() == 2:
            return ((features - self.mean) / self.std) @ self.weight.T + self.bias
        scale = (self.weight / self.std).unsqueeze(-1).unsqueeze(-1)  # (K, F, 1, 1): fold the standardisation
        shift = self.bias - (self.weight * (self.mean / self.std)).sum(dim=1)
        return F.conv2d(features, scale, shift)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Class indices: (N,) for rows, (B, H, W) for maps."""
        return self.logits(features).argmax(dim=1)


def sample_pixels(features: torch.Tensor, mask: torch.Tensor, num_classes: int, per_class: int,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_class`` random pixels of every class present in ``mask``.

    ``features`` (F, H, W), ``mask`` (H, W) long with 255 = ignore -> rows (N, F) and labels (N,).
    """
    flat = features.flatten(1).T  # (HW, F)
    labels = mask.flatten()
    rows, picked = [], []
    for c in range(num_classes):
        where = torch.nonzero(labels == c).squeeze(1)
        if where.numel() > per_class:
            where = where[torch.randperm(where.numel(), generator=generator)[:per_class]]
        rows.append(flat[where])
        picked.append(labels[where])
    return torch.cat(rows), torch.cat(picked)


def fit_linear_probe(rows: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float = 1e-3,
                     max_iter: int = 100, class_prior: torch.Tensor | None = None) -> LinearProbe:
    """Fit a multinomial logistic regression to ``rows`` (N, F) and ``labels`` (N,) by L-BFGS.

    ``class_prior`` (K,): the class frequencies the probe should predict with (e.g. the annotated
    pixel counts); the bias is shifted by ``log(prior / share in labels)``. Classes absent from
    ``labels`` get a bias of -30, so they are never predicted.
    """
    keep = labels != IGNORE_INDEX
    rows, labels = rows[keep].float(), labels[keep].long()
    if rows.shape[0] == 0:
        raise ValueError("no labelled pixels to fit a probe on")
    mean = rows.mean(dim=0)
    std = rows.std(dim=0, unbiased=False).clamp_min(1e-6)
    x = (rows - mean) / std
    weight = torch.zeros(num_classes, rows.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    sampled = torch.bincount(labels, minlength=num_classes).float()
    present = sampled > 0
    final_bias = bias.detach()
    if class_prior is not None:
        prior = torch.as_tensor(class_prior, dtype=torch.float32)
        shift = torch.log(prior.clamp_min(1e-12) / prior.sum()) - torch.log(sampled.clamp_min(1) / sampled.sum())
        final_bias = final_bias + torch.where(present, shift, torch.zeros_like(shift))
    final_bias = torch.where(present, final_bias, torch.full_like(bias, -30.0))
    return LinearProbe(mean, std, weight.detach(), final_bias)
