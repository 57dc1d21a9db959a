"""What every scoring metric returns and how it says it cannot score a video."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class MetricResult:
    """One metric's value on a clip: ``value`` in [0, 1], its named parts, and the frames it saw."""

    name: str
    value: float
    components: dict[str, float] = field(default_factory=dict)
    frames: int = 0


class MetricUnavailableError(Exception):
    """The metric cannot score this input; ``reason`` is a sentence a caller can act on."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def check_clip(frames: np.ndarray) -> np.ndarray:
    """Validates a clip as uint8 RGB ``(T, H, W, 3)`` and returns it; raises ``ValueError`` otherwise."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {getattr(frames, 'shape', type(frames))}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")
    if frames.shape[0] == 0:
        raise ValueError("the clip has no frames")
    return frames
