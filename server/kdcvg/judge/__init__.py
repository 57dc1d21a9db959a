"""Judges that need no training: a clip's motion label and its product's colour, by numbers."""

from kdcvg.judge.colour import colour_matches, colour_votes, dominant_foreground_colour
from kdcvg.judge.motion import (
    LABELS,
    STATIC,
    STATIC_ENERGY,
    MotionVerdict,
    is_static,
    judge_motion,
    motion_features,
    product_masks,
)

__all__ = [
    "LABELS",
    "STATIC",
    "STATIC_ENERGY",
    "MotionVerdict",
    "colour_matches",
    "colour_votes",
    "dominant_foreground_colour",
    "is_static",
    "judge_motion",
    "motion_features",
    "product_masks",
]
