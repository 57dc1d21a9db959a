"""The border ring of an image, where the background model of the judges and the metrics is fitted."""

from __future__ import annotations

import numpy as np

RING_FRACTION = 0.03  # of the shorter side, at least one pixel


def border_ring(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows and columns of the ring's pixels and the design matrix (x / W, y / H, 1) of a plane fit."""
    ring = max(1, round(RING_FRACTION * min(height, width)))
    border = np.zeros((height, width), bool)
    border[:ring] = border[-ring:] = True
    border[:, :ring] = border[:, -ring:] = True
    ys, xs = np.nonzero(border)
    design = np.stack([xs / width, ys / height, np.ones(len(xs))], axis=1)
    return ys, xs, design


def plane_image(coef: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) values of per-channel planes `coef` (3 x 3, from a fit on `border_ring`'s design)."""
    gx, gy = np.meshgrid(np.arange(width) / width, np.arange(height) / height)
    return np.stack([gx, gy, np.ones_like(gx)], axis=-1) @ coef
