"""Keyframe extraction without a detector: segment the product from the background, keep its busiest span."""

from __future__ import annotations

import cv2
import numpy as np

from kdcvg.media.border import border_ring, plane_image

_FG_THRESHOLD = 30  # max-channel distance from the background model that counts as foreground (levels)
_CHANGE_THRESHOLD = 25  # per-pixel change between frames that counts as motion, above codec noise (levels)


def _check(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError("frames must be a uint8 array of shape (T, H, W, 3)")
    if frames.shape[0] == 0:
        raise ValueError("frames must hold at least one frame")


def _background(frames: np.ndarray) -> np.ndarray:
    """A smooth background model: a plane per channel fitted to the border of the clip's median frame."""
    median = np.median(frames, axis=0).astype(np.float32)
    height, width, _ = median.shape
    ys, xs, design = border_ring(height, width)
    values = median[ys, xs].astype(np.float64)
    keep = np.ones(len(ys), bool)
    # The product may touch the border in some frames of the median: refit without the outliers once.
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        resid = np.abs(design @ coef - values).max(axis=1)
        inliers = resid < _FG_THRESHOLD / 2
        if inliers.sum() < 0.25 * len(ys):
            break
        keep = inliers
    return plane_image(coef, height, width).astype(np.float32)


def foreground_masks(frames: np.ndarray) -> np.ndarray:
    """(T, H, W) bool: the product region of each frame (its largest foreground blob and nearby parts)."""
    _check(frames)
    bg = _background(frames)
    diff = np.abs(frames.astype(np.float32) - bg).max(axis=-1) > _FG_THRESHOLD
    kernel = np.ones((3, 3), np.uint8)
    out = np.zeros(diff.shape, bool)
    for t, mask in enumerate(diff.astype(np.uint8)):
        # Dilating first joins thin product parts (a lamp's arm) to the body; thin steady text stays apart.
        n, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.dilate(mask, kernel), connectivity=8)
        if n <= 1:
            continue
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        out[t] = (labels == largest) & mask.astype(bool)
    return out


def _boxes(masks: np.ndarray) -> np.ndarray:
    t, height, width = masks.shape
    boxes = np.tile(np.array([0, 0, width, height], np.int64), (t, 1))
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs):
            boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


def product_boxes(frames: np.ndarray) -> np.ndarray:
    """(T, 4) int boxes (x0, y0, x1, y1), x1/y1 exclusive; a frame with no foreground gets the whole frame."""
    return _boxes(foreground_masks(frames))


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (start, end) index pairs of the True runs."""
    runs, start = [], None
    for i, flag in enumerate(flags):
        if flag and start is None:
            start = i
        if not flag and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(flags) - 1))
    return runs


def motion_segment(frames: np.ndarray) -> tuple[int, int]:
    """Inclusive (first, last) frame of the segment where the product is visible and moving most."""
    _check(frames)
    n, height, width, _ = frames.shape
    if n == 1:
        return 0, 0
    masks = foreground_masks(frames)
    visible = masks.reshape(n, -1).sum(axis=1) >= max(4, 0.002 * height * width)
    boxes = _boxes(masks)
    change = np.abs(np.diff(frames.astype(np.int16), axis=0)).max(axis=-1) > _CHANGE_THRESHOLD
    energy = np.zeros(n - 1)
    for t in range(n - 1):
        if not (visible[t] and visible[t + 1]):
            continue
        x0, y0 = np.minimum(boxes[t, :2], boxes[t + 1, :2]) - 1
        x1, y1 = np.maximum(boxes[t, 2:], boxes[t + 1, 2:]) + 1
        energy[t] = change[t, max(0, y0) : y1, max(0, x0) : x1].sum() / (height * width)
    active = energy >= max(0.25 * energy.max(), 1e-3)
    # A one-step lull (the top of a hop, the turn of a float) does not split a segment.
    gaps = [(a, b) for a, b in _runs(~active) if b - a == 0 and 0 < a and b < len(active) - 1]
    for a, _ in gaps:
        active[a] = True
    runs = _runs(active)
    if runs:
        a, b = max(runs, key=lambda r: (energy[r[0] : r[1] + 1].sum(), r[1] - r[0]))
        return a, b + 1  # step t moves frame t to frame t + 1
    runs = _runs(visible)
    if runs:
        return max(runs, key=lambda r: r[1] - r[0])
    return 0, n - 1


def select_keyframes(frames: np.ndarray, k: int = 8) -> list[int]:
    """k sorted, unique frame indices spread over the product's busiest segment, its ends included."""
    _check(frames)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = frames.shape[0]
    if n <= k:
        return list(range(n))
    first, last = motion_segment(frames)
    # Widen a segment shorter than k frames around its centre, staying inside the clip.
    missing = k - (last - first + 1)
    if missing > 0:
        first = max(0, first - (missing + 1) // 2)
        last = min(n - 1, first + k - 1)
        first = last - k + 1
    if k == 1:
        return [first]
    # With a spacing >= 1, rounding keeps the indices strictly increasing.
    return [int(i) for i in np.round(np.linspace(first, last, k))]
