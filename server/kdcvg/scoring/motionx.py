"""MotionXScore (InnoAds-Bench, Eq. 1-3): how much, how smoothly and how persistently a clip moves.

The paper scores three parts of a clip's per-frame motion energy and averages them:

* amplitude: how far things move per frame;
* smoothness: how evenly the motion runs (no sudden stops and starts);
* activation ratio: the share of frame steps that belong to a sustained run of motion, found with an
  adaptive (robust, per-clip) threshold so a few big spikes do not make a mostly still clip look lively.

Appendix C.3 fixes the hyper-parameters used here: EMA smoothing 0.5, normalisation by the 95th
percentile, threshold = left-tail quantile 0.3 + 0.5 x 1.4826 x MAD, minimum active run 0.3 s. The
paper does not define amplitude and smoothness beyond naming them, nor the threshold's behaviour on
degenerate clips; the choices made for those are the named constants below, each with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from kdcvg.scoring.base import MetricResult, MetricUnavailableError, check_clip

NAME = "motionx"
MIN_FRAMES = 2  # motion is measured between consecutive frames: one pair at least

# --- the paper's hyper-parameters (Appendix C.3, Table 4) ---------------------------------------------
EMA_ALPHA = 0.5  # weight of the current frame in the exponential moving average of the energies
NORM_PERCENTILE = 95.0  # the smoothed energies are divided by their 95th percentile
LEFT_QUANTILE = 0.3  # the threshold starts from this quantile of the normalised energies...
MAD_FACTOR = 0.5  # ...plus this many robust standard deviations (1.4826 x MAD)
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
MIN_RUN_SECONDS = 0.3  # an active run shorter than this does not count (isolated spikes)

# --- optical flow ---------------------------------------------------------------------------------------
# Flow is computed with the frames resized so their shorter side is FLOW_SIDE pixels, and the mean
# flow magnitude is divided by FLOW_SIDE. Farneback's window and pyramid work in pixels, so on native
# frames the energy was not resolution-free: the same procedural clips measured 3x higher at 64 px than
# at 256 px (flow bleeds into the flat background through the fixed window). At a fixed analysis size
# the energies of 64, 128 and 256 px renders of a clip agree within ~10% (slide 0.0061 / 0.0060 /
# 0.0060), and a pair costs ~5 ms whatever the input size (native 256 px with a 15 px window: 22-33 ms).
FLOW_SIDE = 128
FLOW_WINDOW = 9  # averaging window (pixels at FLOW_SIDE); 15 gave the same ordering, ~15% higher energies
FLOW_LEVELS = 3
FLOW_PYR_SCALE = 0.5
FLOW_ITERATIONS = 3
FLOW_POLY_N = 5
FLOW_POLY_SIGMA = 1.2

# --- normalisation constants chosen here (not in the paper) ---------------------------------------------
# Mean energies of procedural clips (kdcvg.data.creatives, 16 frames, 8 fps, fraction of the shorter
# side per frame): zoom in/out 0.0026-0.0029, pulse 0.0040-0.0046, float 0.0047-0.0051, slide 0.0060,
# orbit 0.012, bounce 0.014, rotate 0.020, shake 0.021-0.023; an exactly static clip 2e-7, a static clip
# with i.i.d. Gaussian noise of sigma 3 levels 0.0008.
AMPLITUDE_SATURATION = 0.015  # amplitude = mean energy / this, capped at 1: a bounce about saturates,
# a slide scores 0.4, a slow zoom 0.18, a static clip 0
MIN_ACTIVE_ENERGY = 0.0015  # an (EMA-smoothed) energy below this is never "active", and a clip whose
# mean energy is below it has no motion to be smooth: about 2x the noise-only level above and below every
# procedural motion's mean. Without it a clip that moves in its first frames only has a zero median and
# MAD, the adaptive threshold falls to 0 and every still frame counts as active.
ACTIVE_RELATIVE_CAP = 0.5  # the adaptive threshold never exceeds half the clip's 95th-percentile energy.
# Without it a clip that moves steadily throughout (a slide, a rotation) has almost no spread, the
# threshold lands in the middle of its noise, and the minimum-run rule leaves 0-40% of it "active".
JERK_CEILING = 2.0  # smoothness = 1 - (mean |E[t+1] - E[t]| / mean E) / this: 2 is the largest value the
# ratio can take (motion alternating with stillness), so a steady slide scores ~0.99, a bouncing hop 0.73


def _gray_at_flow_side(frame: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    height, width = gray.shape
    scale = FLOW_SIDE / min(height, width)
    if scale == 1.0:
        return gray
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(gray, size, interpolation=interpolation)


def _check_frame(frame: np.ndarray, label: str) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"{label} must be a uint8 RGB frame of shape (H, W, 3), got {getattr(frame, 'shape', frame)}")


def motion_energy(prev: np.ndarray, cur: np.ndarray) -> float:
    """Motion between two uint8 RGB frames ``(H, W, 3)``: mean dense-flow magnitude, resolution-free.

    The frames are turned to grayscale and resized so their shorter side is ``FLOW_SIDE`` pixels; the
    Farneback flow's per-pixel magnitude is averaged over the frame and divided by ``FLOW_SIDE``. The
    result is the mean displacement per frame as a fraction of the frame's shorter side (0.01 = 1% of
    the side), so the same motion gives the same energy at any resolution.
    """
    _check_frame(prev, "prev")
    _check_frame(cur, "cur")
    if prev.shape != cur.shape:
        raise ValueError(f"frames differ in shape: {prev.shape} vs {cur.shape}")
    flow = cv2.calcOpticalFlowFarneback(
        _gray_at_flow_side(prev),
        _gray_at_flow_side(cur),
        None,
        FLOW_PYR_SCALE,
        FLOW_LEVELS,
        FLOW_WINDOW,
        FLOW_ITERATIONS,
        FLOW_POLY_N,
        FLOW_POLY_SIGMA,
        0,
    )
    return float(np.linalg.norm(flow, axis=-1).mean()) / FLOW_SIDE


def ema(values: np.ndarray, alpha: float = EMA_ALPHA) -> np.ndarray:
    """Exponential moving average ``s[t] = alpha * x[t] + (1 - alpha) * s[t-1]``, with ``s[0] = x[0]``."""
    out = np.empty(len(values), dtype=np.float64)
    for t, value in enumerate(values):
        out[t] = value if t == 0 else alpha * value + (1.0 - alpha) * out[t - 1]
    return out


def min_run_frames(fps: float, steps: int) -> int:
    """Frames an active run needs: ``ceil(MIN_RUN_SECONDS * fps)``, at most ``steps`` (a clip shorter than
    the minimum run counts as one run when all of it moves)."""
    needed = math.ceil(round(MIN_RUN_SECONDS * fps, 9))  # round: 0.3 * 10 is 3.0000000000000004
    return max(1, min(needed, steps))


def adaptive_threshold(normalised: np.ndarray) -> float:
    """Eq. 1 with Appendix C.3's left-tail quantile: ``Q_0.3 + 0.5 * 1.4826 * MAD``, capped (see constants)."""
    mad = float(np.median(np.abs(normalised - np.median(normalised))))
    tau = float(np.quantile(normalised, LEFT_QUANTILE)) + MAD_FACTOR * MAD_TO_SIGMA * mad
    return min(tau, ACTIVE_RELATIVE_CAP)


def _keep_long_runs(active: np.ndarray, min_run: int) -> np.ndarray:
    kept = np.zeros_like(active)
    start = None
    for t, flag in enumerate([*active.tolist(), False]):  # a trailing False closes the last run
        if flag and start is None:
            start = t
        elif not flag and start is not None:
            if t - start >= min_run:
                kept[start:t] = True
            start = None
    return kept


def activation_ratio(energies: np.ndarray, fps: float) -> float:
    """Eq. 2: the share of steps whose smoothed energy clears the adaptive threshold within a long-enough run."""
    smoothed = ema(energies)
    peak = float(np.percentile(smoothed, NORM_PERCENTILE))
    if peak < MIN_ACTIVE_ENERGY:
        return 0.0
    normalised = smoothed / peak
    active = (normalised >= adaptive_threshold(normalised)) & (smoothed >= MIN_ACTIVE_ENERGY)
    return float(_keep_long_runs(active, min_run_frames(fps, len(energies))).mean())


def amplitude(energies: np.ndarray) -> float:
    """Normalised amplitude in [0, 1]: mean energy over ``AMPLITUDE_SATURATION``, capped at 1."""
    return min(1.0, float(energies.mean()) / AMPLITUDE_SATURATION)


def smoothness(energies: np.ndarray) -> float:
    """Normalised smoothness in [0, 1]: 1 minus the mean step-to-step change of the energy relative to its
    mean (scaled by ``JERK_CEILING``); 0 for a clip with no motion (nothing moves smoothly) or one step."""
    mean = float(energies.mean())
    if mean < MIN_ACTIVE_ENERGY:
        return 0.0
    if len(energies) < 2:
        return 1.0
    jerk = float(np.abs(np.diff(energies)).mean()) / mean
    return max(0.0, 1.0 - jerk / JERK_CEILING)


def _check_fps(fps: float) -> None:
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive and finite, got {fps}")


def motionx_from_energies(energies: Sequence[float], fps: float, *, frames: int) -> MetricResult:
    """MotionXScore (Eq. 3) from per-step motion energies (``energies[t]`` = motion from frame t to t+1).

    ``fps`` sets the minimum active run (``MIN_RUN_SECONDS``); ``frames`` is the clip's frame count, kept
    in the result. Returns ``value = (amplitude + smoothness + activation) / 3`` with those three as
    components, each in [0, 1]. Raises ``ValueError`` for empty, negative or non-finite energies or a
    non-positive fps.
    """
    values = np.asarray(energies, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"energies must be a non-empty 1-D sequence, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise ValueError("energies must be finite and non-negative")
    _check_fps(fps)
    if frames < MIN_FRAMES:
        raise ValueError(f"frames must be >= {MIN_FRAMES}, got {frames}")
    parts = {
        "amplitude": amplitude(values),
        "smoothness": smoothness(values),
        "activation": activation_ratio(values, fps),
    }
    return MetricResult(name=NAME, value=sum(parts.values()) / 3.0, components=parts, frames=frames)


def clip_energies(frames: np.ndarray) -> list[float]:
    """Motion energy of every consecutive pair of a validated clip ``(T, H, W, 3)``: T - 1 values."""
    return [motion_energy(frames[t], frames[t + 1]) for t in range(len(frames) - 1)]


def motionx_score(frames: np.ndarray, fps: float) -> MetricResult:
    """MotionXScore of a uint8 RGB clip ``(T, H, W, 3)`` played at ``fps``.

    Raises ``ValueError`` for a malformed clip and ``MetricUnavailableError`` for one of fewer than
    ``MIN_FRAMES`` frames.
    """
    check_clip(frames)
    _check_fps(fps)
    if len(frames) < MIN_FRAMES:
        raise MetricUnavailableError(NAME, f"motion needs at least {MIN_FRAMES} frames to compare, got {len(frames)}")
    return motionx_from_energies(clip_energies(frames), fps, frames=len(frames))
