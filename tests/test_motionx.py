"""MotionXScore: optical-flow energy, the paper's activation pipeline, and its behaviour on constructed clips."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from kdcvg.data import make_creative
from kdcvg.media import decode_video, encode_mp4
from kdcvg.scoring.base import MetricUnavailableError
from kdcvg.scoring.motionx import (
    AMPLITUDE_SATURATION,
    MIN_ACTIVE_ENERGY,
    MIN_FRAMES,
    clip_energies,
    ema,
    min_run_frames,
    motion_energy,
    motionx_from_energies,
    motionx_score,
)

FPS = 8.0


@pytest.fixture(scope="module")
def slide() -> np.ndarray:
    return make_creative(0, motions=["slide_left"], overlay_prob=0.0).frames


def _square_clip(shifts: list[int], size: int = 64) -> np.ndarray:
    """A dark square on a light background, moved right by ``shifts[t]`` pixels (scaled with ``size``)."""
    frames = []
    for shift in shifts:
        frame = np.full((size, size, 3), 230, np.uint8)
        x = (8 + shift) * size // 64
        cv2.rectangle(frame, (x, size // 3), (x + size // 4, size // 3 + size // 4), (30, 60, 200), -1)
        frames.append(frame)
    return np.stack(frames)


# --- motion energy ------------------------------------------------------------------------------------


def test_identical_frames_have_no_motion(slide):
    assert motion_energy(slide[0], slide[0].copy()) < 1e-5


def test_energy_does_not_depend_on_resolution():
    # The same 2-pixels-per-64 step of a square, drawn at 64 and at 192 pixels.
    small = _square_clip([0, 2], size=64)
    large = _square_clip([0, 2], size=192)
    e_small, e_large = motion_energy(small[0], small[1]), motion_energy(large[0], large[1])
    assert e_small > MIN_ACTIVE_ENERGY
    assert e_large == pytest.approx(e_small, rel=0.2)


def test_energy_grows_with_displacement():
    clip = _square_clip([0, 1, 3, 7])
    energies = [motion_energy(clip[0], clip[i]) for i in (1, 2, 3)]
    assert energies[0] < energies[1] < energies[2]


def test_procedural_motions_get_sensible_energies():
    def mean_energy(motion: str) -> float:
        return float(np.mean(clip_energies(make_creative(1, motions=[motion], overlay_prob=0.0).frames)))

    zoom, slide, shake = mean_energy("zoom_in"), mean_energy("slide_right"), mean_energy("shake")
    # Every procedural motion clears the activity floor, and a product shaking by ~10% of the frame per
    # step moves more than one sliding by 3.5%, which moves more than a centred zoom.
    assert MIN_ACTIVE_ENERGY < zoom < slide < shake
    assert slide == pytest.approx(0.006, rel=0.3)  # the calibration point recorded in motionx.py
    assert shake >= AMPLITUDE_SATURATION


def test_motion_energy_rejects_bad_frames(slide):
    with pytest.raises(ValueError, match="shape"):
        motion_energy(slide[0], slide[1, :32])
    with pytest.raises(ValueError, match="uint8 RGB"):
        motion_energy(slide[0].astype(np.float32), slide[1])
    with pytest.raises(ValueError, match="uint8 RGB"):
        motion_energy(slide[0, :, :, 0], slide[1, :, :, 0])


# --- the pipeline on energies ---------------------------------------------------------------------------


def test_ema_follows_the_paper_recursion():
    np.testing.assert_allclose(ema(np.array([4.0, 0.0, 0.0, 2.0])), [4.0, 2.0, 1.0, 1.5])


@pytest.mark.parametrize(("fps", "steps", "expected"), [(8, 15, 3), (10, 30, 3), (30, 80, 9), (30, 4, 4), (1, 5, 1)])
def test_min_run_is_ceil_of_0_3_seconds_capped_by_clip(fps, steps, expected):
    assert min_run_frames(fps, steps) == expected


def test_steady_motion_is_fully_active_and_smooth():
    result = motionx_from_energies([0.006] * 15, FPS, frames=16)
    assert result.components["activation"] == 1.0
    assert result.components["smoothness"] == pytest.approx(1.0)
    assert result.components["amplitude"] == pytest.approx(0.006 / AMPLITUDE_SATURATION)


def test_stop_and_go_motion_is_not_smooth():
    result = motionx_from_energies([0.01, 0.0] * 8, FPS, frames=17)
    assert result.components["smoothness"] < 0.1


def test_isolated_spike_is_not_a_sustained_run():
    # At 30 fps a run must last 9 frames; one moving frame (spread over ~4 by the EMA) does not count,
    # the same motion held for 12 frames does.
    spike = [0.0] * 20 + [0.02] + [0.0] * 20
    held = [0.0] * 20 + [0.02] * 12 + [0.0] * 20
    assert motionx_from_energies(spike, 30.0, frames=42).components["activation"] == 0.0
    assert motionx_from_energies(held, 30.0, frames=53).components["activation"] >= 12 / 52


def test_result_is_the_mean_of_three_unit_components():
    result = motionx_from_energies([0.001, 0.004, 0.03, 0.02, 0.0, 0.01, 0.012], FPS, frames=8)
    assert result.name == "motionx"
    assert result.frames == 8
    assert set(result.components) == {"amplitude", "smoothness", "activation"}
    assert all(0.0 <= v <= 1.0 for v in result.components.values())
    assert result.value == pytest.approx(sum(result.components.values()) / 3)


@pytest.mark.parametrize(
    ("energies", "fps", "frames", "match"),
    [
        ([], FPS, 2, "non-empty"),
        ([0.1, -0.1], FPS, 3, "non-negative"),
        ([0.1, math.nan], FPS, 3, "finite"),
        ([0.1], 0.0, 2, "fps"),
        ([0.1], math.inf, 2, "fps"),
        ([0.1], FPS, 1, "frames"),
    ],
)
def test_bad_energies_are_rejected(energies, fps, frames, match):
    with pytest.raises(ValueError, match=match):
        motionx_from_energies(energies, fps, frames=frames)


# --- whole clips ----------------------------------------------------------------------------------------


def test_static_clip_scores_low(slide):
    result = motionx_score(np.repeat(slide[:1], 16, axis=0), FPS)
    assert result.components["amplitude"] < 0.01
    assert result.components["activation"] == 0.0
    assert result.components["smoothness"] == 0.0
    assert result.value < 0.01


def test_static_clip_through_h264_still_scores_low(slide):
    # Codec noise is not motion.
    decoded = decode_video(encode_mp4(np.repeat(slide[:1], 16, axis=0), fps=FPS, crf=28)).frames
    result = motionx_score(decoded, FPS)
    assert result.components["activation"] == 0.0
    assert result.value < 0.05


def test_motion_in_first_frames_only_scores_lower_activation(slide):
    early = np.concatenate([slide[:5], np.repeat(slide[4:5], 11, axis=0)])  # moves 4 steps, then holds
    throughout = motionx_score(slide, FPS)
    first_only = motionx_score(early, FPS)
    assert throughout.components["activation"] == 1.0
    assert first_only.components["activation"] <= 0.5
    assert first_only.value < throughout.value


def test_moving_clips_beat_static_ones():
    static = motionx_score(_square_clip([0] * 12), FPS)
    moving = motionx_score(_square_clip(list(range(0, 36, 3))), FPS)
    assert static.value < 0.05 < 0.6 < moving.value
    assert moving.frames == 12


def test_too_few_frames_is_unavailable(slide):
    assert MIN_FRAMES == 2
    with pytest.raises(MetricUnavailableError, match="needs at least 2 frames") as info:
        motionx_score(slide[:1], FPS)
    assert info.value.name == "motionx"


def test_malformed_clips_are_rejected(slide):
    with pytest.raises(ValueError, match="shape"):
        motionx_score(slide[..., 0], FPS)
    with pytest.raises(ValueError, match="uint8"):
        motionx_score(slide.astype(np.float32), FPS)
    with pytest.raises(ValueError, match="fps"):
        motionx_score(slide, -1.0)
