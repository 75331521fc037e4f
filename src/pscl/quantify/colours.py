"""Class colours shared by overlays, galleries and plots (no heavy imports: numpy only)."""

from __future__ import annotations

import numpy as np

# Colours for classes 1.. (class 0, the matrix, is left uncoloured in overlays).
PALETTE = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180],
     [70, 240, 240], [245, 130, 48], [240, 50, 230], [128, 128, 0]], dtype=np.uint8)


def colour_overlay(grey: np.ndarray, classes: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(H, W) grey image in [0, 1] and (H, W) class indices -> (H, W, 3) uint8 overlay.

    Painted pixels are ``(1 - alpha) * grey + alpha * colour``; the blend is computed for the
    painted pixels only, so a large image costs little more than its uint8 result.
    """
    base = np.clip(grey, 0, 1).astype(np.float32) * np.float32(255)
    out = np.repeat(base.round().astype(np.uint8)[..., None], 3, axis=-1)
    painted = np.asarray(classes) > 0
    colours = PALETTE[np.asarray(classes)[painted] % len(PALETTE)].astype(np.float32)
    out[painted] = ((1 - alpha) * base[painted][:, None] + alpha * colours).round().astype(np.uint8)
    return out
