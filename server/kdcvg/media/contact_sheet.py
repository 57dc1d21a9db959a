"""Contact sheets: a clip's frames (or several clips, one per row) tiled into one image, for a quick look."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

_BORDER = 1  # px between tiles and around the sheet, before scaling is not applied to it
_BORDER_RGB = (40, 40, 44)
_CAPTION_RGB = (235, 235, 235)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _check_clip(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3 and frames.shape[-1] == 3:
        frames = frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError("frames must be a uint8 array of shape (T, H, W, 3) with T >= 1")
    return frames


def _caption_band(text: str, width: int) -> np.ndarray:
    """A dark band of the sheet's width with `text` in it, shortened with '...' to fit."""
    scale, thickness = 0.4, 1
    (_, th), base = cv2.getTextSize("Ag", _FONT, scale, thickness)
    band = np.empty((th + base + 6, width, 3), np.uint8)
    band[:] = _BORDER_RGB
    while text and cv2.getTextSize(text, _FONT, scale, thickness)[0][0] > width - 6:
        text = text[:-4] + "..." if len(text) > 4 else text[:-1]
    cv2.putText(band, text, (3, th + 3), _FONT, scale, _CAPTION_RGB, thickness, cv2.LINE_AA)
    return band


def _grid(frames: np.ndarray, columns: int, scale: int, labels: Sequence[str] | None) -> np.ndarray:
    t, h, w, _ = frames.shape
    th, tw = h * scale, w * scale
    cols = max(1, min(columns, t))
    rows = -(-t // cols)
    sheet = np.empty((rows * (th + _BORDER) + _BORDER, cols * (tw + _BORDER) + _BORDER, 3), np.uint8)
    sheet[:] = _BORDER_RGB
    for i, frame in enumerate(frames):
        r, c = divmod(i, cols)
        y, x = _BORDER + r * (th + _BORDER), _BORDER + c * (tw + _BORDER)
        tile = frame if scale == 1 else cv2.resize(frame, (tw, th), interpolation=cv2.INTER_NEAREST)
        tile = np.ascontiguousarray(tile)
        if labels is not None and labels[i]:
            fs = max(0.3, 0.0055 * min(th, tw))
            cv2.putText(tile, labels[i], (2, th - 3), _FONT, fs, (0, 0, 0), 2, cv2.LINE_AA)
            cv2.putText(tile, labels[i], (2, th - 3), _FONT, fs, (255, 255, 255), 1, cv2.LINE_AA)
        sheet[y : y + th, x : x + tw] = tile
    return sheet


def contact_sheet(
    frames: np.ndarray | Sequence[np.ndarray],
    *,
    columns: int = 8,
    scale: int = 2,
    labels: Sequence[str] | None = None,
    captions: Sequence[str] | None = None,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB: frames tiled left to right, `columns` per row, each scaled up `scale` times
    (nearest neighbour, so pixels stay visible), with a thin border between tiles and around the sheet.

    `frames` is one clip, (T, H, W, 3) uint8, or a sequence of clips of the same frame size: each clip
    then takes its own block of rows, under a caption from `captions` (one per clip, optional).
    `labels` (one per frame of a single clip, e.g. frame numbers) are drawn in each tile's corner.
    """
    if columns < 1 or scale < 1:
        raise ValueError(f"columns and scale must be >= 1, got {columns} and {scale}")
    single = isinstance(frames, np.ndarray) and frames.ndim in (3, 4)
    clips = [_check_clip(frames)] if single else [_check_clip(c) for c in frames]
    if not clips:
        raise ValueError("no clips given")
    if len({c.shape[1:] for c in clips}) != 1:
        raise ValueError(f"clips must share a frame size, got {sorted({c.shape[1:3] for c in clips})}")
    if labels is not None:
        if not single or len(labels) != clips[0].shape[0]:
            raise ValueError("labels need one clip and one label per frame")
    if captions is not None and len(captions) != len(clips):
        raise ValueError(f"captions must be one per clip: {len(captions)} for {len(clips)} clips")
    cols = max(1, min(columns, max(c.shape[0] for c in clips)))
    blocks = []
    for k, clip in enumerate(clips):
        block = _grid(clip, cols, scale, labels)
        if block.shape[1] < (width := cols * (clip.shape[2] * scale + _BORDER) + _BORDER):
            pad = np.empty((block.shape[0], width - block.shape[1], 3), np.uint8)
            pad[:] = _BORDER_RGB
            block = np.concatenate([block, pad], axis=1)
        if captions is not None:
            block = np.concatenate([_caption_band(captions[k], block.shape[1]), block[_BORDER:]], axis=0)
            if k == 0:
                top = np.empty((_BORDER, block.shape[1], 3), np.uint8)
                top[:] = _BORDER_RGB
                block = np.concatenate([top, block], axis=0)
        elif k > 0:
            block = block[_BORDER:]  # rows share the border line between clips
        blocks.append(block)
    return np.ascontiguousarray(np.concatenate(blocks, axis=0))


def write_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 RGB image (or (H, W) grey) as a PNG; returns the path. Makes parent dirs."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError("image must be uint8, (H, W, 3) RGB or (H, W) grey")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = image if image.ndim == 2 else np.ascontiguousarray(image[..., ::-1])
    if not cv2.imwrite(str(path), bgr):
        raise OSError(f"could not write PNG to {path}")
    return path
