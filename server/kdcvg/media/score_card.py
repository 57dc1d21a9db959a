"""A score card: one bar per metric, its components as thinner bars beneath, for a PNG beside the frames."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cv2
import numpy as np

_BG = (30, 30, 34)
_TEXT = (235, 235, 235)
_DIM = (150, 150, 160)
_TRACK = (60, 60, 66)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _colour(value: float) -> tuple[int, int, int]:
    """Red at 0 through amber to green at 1."""
    v = float(np.clip(value, 0.0, 1.0))
    return (int(220 * (1 - v) + 60 * v), int(80 * (1 - v) + 190 * v), int(70 * (1 - v) + 90 * v))


def score_card(
    metrics: Sequence[tuple[str, float, Mapping[str, float]]],
    unavailable: Sequence[tuple[str, str]] = (),
    *,
    width: int = 520,
) -> np.ndarray:
    """An RGB image of ``(name, value, components)`` bars in [0, 1], then the metrics not computed and why.

    Components outside [0, 1] (raw counts, 1-5 ratings) are printed, not drawn."""
    rows: list[tuple[str, str, float | None, bool]] = []
    for name, value, components in metrics:
        rows.append((name, f"{value:.3f}", value, True))
        for part, v in sorted(components.items()):
            drawn = 0.0 <= v <= 1.0
            rows.append((f"  {part}", f"{v:.3f}" if drawn else f"{v:.3g}", v if drawn else None, False))
    for name, reason in unavailable:
        rows.append((name, "n/a", None, True))
        rows.append((f"  {reason}", "", None, False))
    line = 18
    img = np.empty((len(rows) * line + 12, width, 3), np.uint8)
    img[:] = _BG
    label_w, bar_x, bar_w = 150, 160, width - 160 - 60
    for i, (label, text, value, main) in enumerate(rows):
        y = 8 + i * line
        scale = 0.45 if main else 0.38
        colour = _TEXT if main else _DIM
        if value is None and text == "":  # a reason: the whole width
            cv2.putText(img, label[: width // 6], (4, y + 12), _FONT, 0.36, _DIM, 1, cv2.LINE_AA)
            continue
        cv2.putText(img, label[: label_w // 7], (4, y + 12), _FONT, scale, colour, 1, cv2.LINE_AA)
        h = 12 if main else 6
        top = y + (line - h) // 2
        cv2.rectangle(img, (bar_x, top), (bar_x + bar_w, top + h), _TRACK, -1)
        if value is not None:
            filled = bar_x + int(bar_w * float(np.clip(value, 0, 1)))
            cv2.rectangle(img, (bar_x, top), (filled, top + h), _colour(value), -1)
        cv2.putText(img, text, (bar_x + bar_w + 6, y + 12), _FONT, scale, colour, 1, cv2.LINE_AA)
    return img
