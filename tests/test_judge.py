"""The training-free judges: motion label (optical flow) and product colour on ground-truth procedural clips;
contact sheets."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from kdcvg.data import make_creative
from kdcvg.data.creatives import CATEGORIES, COLORS, MOTIONS
from kdcvg.judge import (
    LABELS,
    STATIC,
    MotionVerdict,
    colour_matches,
    dominant_foreground_colour,
    is_static,
    judge_motion,
    product_masks,
)
from kdcvg.media.contact_sheet import contact_sheet, write_png

SEEDS_PER_MOTION = 20


def confusion(truth: list[str], judged: list[str]) -> str:
    """A confusion matrix (rows: true motion, columns: judged label) as text, for failure messages."""
    head = " " * 12 + " ".join(f"{label[:6]:>6}" for label in LABELS)
    rows = [head]
    for m in MOTIONS:
        counts = [sum(1 for t, j in zip(truth, judged, strict=True) if t == m and j == label) for label in LABELS]
        rows.append(f"{m:>11} " + " ".join(f"{c:6d}" for c in counts))
    return "\n".join(rows)


def accuracy(truth: list[str], judged: list[str]) -> float:
    return sum(t == j for t, j in zip(truth, judged, strict=True)) / len(truth)


@pytest.fixture(scope="module")
def ground_truth():
    """20 seeds per motion (200 distinct products: all categories and colours), 16 frames at 64x64."""
    clips = [
        make_creative(i * SEEDS_PER_MOTION + seed, motions=[m])
        for i, m in enumerate(MOTIONS)
        for seed in range(SEEDS_PER_MOTION)
    ]
    return clips, [judge_motion(c.frames) for c in clips]


def test_motion_judge_labels_ground_truth(ground_truth):
    clips, verdicts = ground_truth
    assert len(clips) >= 200
    assert {c.category for c in clips} == set(CATEGORIES)
    truth, judged = [c.motion for c in clips], [v.label for v in verdicts]
    acc = accuracy(truth, judged)
    assert acc >= 0.95, f"motion accuracy {acc:.1%}\n{confusion(truth, judged)}"
    for m in MOTIONS:  # no motion may be the judge's blind spot
        per = accuracy([t for t in truth if t == m], [j for t, j in zip(truth, judged, strict=True) if t == m])
        assert per >= 0.8, f"{m}: {per:.0%}\n{confusion(truth, judged)}"


@pytest.mark.parametrize(("frames", "size"), [(32, 64), (16, 128)])
def test_motion_judge_other_lengths_and_sizes(frames, size):
    clips = [make_creative(1000 + seed, motions=[m], frames=frames, size=size) for m in MOTIONS for seed in range(3)]
    truth, judged = [c.motion for c in clips], [judge_motion(c.frames).label for c in clips]
    acc = accuracy(truth, judged)
    assert acc >= 0.9, f"{frames} frames at {size}px: {acc:.1%}\n{confusion(truth, judged)}"


def _degrade(frames: np.ndarray, seed: int) -> np.ndarray:
    """Blurrier and noisier, as a generated clip is: Gaussian blur, per-pixel and per-frame noise."""
    rng = np.random.default_rng(seed)
    out = []
    for f in frames.astype(np.float32):
        f = cv2.GaussianBlur(f, (0, 0), 1.0) + rng.normal(0, 5, f.shape) + rng.normal(0, 3)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return np.stack(out)


def test_motion_judge_survives_blur_and_noise():
    clips = [make_creative(2000 + seed, motions=[m]) for m in MOTIONS for seed in range(3)]
    truth = [c.motion for c in clips]
    judged = [judge_motion(_degrade(c.frames, i)).label for i, c in enumerate(clips)]
    acc = accuracy(truth, judged)
    assert acc >= 0.9, f"blurred and noisy: {acc:.1%}\n{confusion(truth, judged)}"


def test_verdict_is_interpretable(ground_truth):
    clips, verdicts = ground_truth
    v = verdicts[0]
    assert isinstance(v, MotionVerdict)
    assert set(v.scores) == set(LABELS)
    assert v.scores[v.label] == max(v.scores.values())
    for key in ("energy", "trans_share", "scale_share", "rot_share", "rot_turn_deg", "scale_net_log", "loop"):
        assert key in v.features
    # The decomposition points the right way on clean examples.
    by_motion = {c.motion: vv for c, vv in zip(clips, verdicts, strict=True)}
    assert by_motion["rotate"].features["rot_share"] > 0.5
    assert by_motion["zoom_in"].features["scale_net_log"] > 0.2
    assert by_motion["zoom_out"].features["scale_net_log"] < -0.2
    assert by_motion["slide_left"].features["x_net"] < 0 < by_motion["slide_right"].features["x_net"]
    assert by_motion["orbit"].features["loop"] > 0.5


@pytest.mark.parametrize("noise", [0.0, 4.0])
def test_static_clip_is_static(noise):
    rng = np.random.default_rng(3)
    for seed in range(4):
        still = np.repeat(make_creative(seed, motions=["float"]).frames[:1], 16, axis=0).astype(np.float32)
        clip = np.clip(still + rng.normal(0, noise, still.shape), 0, 255).astype(np.uint8)
        verdict = judge_motion(clip)
        assert verdict.label == STATIC, verdict.features
        assert is_static(clip)
    blank = np.full((16, 64, 64, 3), 200, np.uint8)
    assert judge_motion(blank).label == STATIC


def test_product_mask_ignores_steady_text():
    # "FREE SHIPPING" at 64 px is a bigger blob than a small bottle; the mask must follow the bottle.
    for seed in range(300):
        c = make_creative(seed, motions=["slide_left"])
        if c.spec.overlay == "FREE SHIPPING":
            break
    masks = product_masks(c.frames)
    xs = [np.nonzero(m)[1].mean() for m in masks]
    assert xs[0] - xs[-1] > 0.4 * 64  # the centroid slides left with the product


def test_judge_rejects_bad_input():
    with pytest.raises(ValueError):
        judge_motion(np.zeros((16, 64, 64), np.uint8))
    with pytest.raises(ValueError):
        judge_motion(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError):
        colour_matches(np.zeros((4, 64, 64, 3), np.uint8), "chartreuse")


def test_colour_judge_on_ground_truth(ground_truth):
    clips, _ = ground_truth
    judged = [dominant_foreground_colour(c.frames) for c in clips]
    wrong = [
        (c.spec.color, name, c.spec.shape) for c, (name, _) in zip(clips, judged, strict=True) if name != c.spec.color
    ]
    acc = 1 - len(wrong) / len(clips)
    assert acc >= 0.95, f"colour accuracy {acc:.1%}; (true, judged, shape): {wrong}"
    assert {c.spec.color for c in clips} == set(COLORS)
    name, rgb = judged[0]
    assert name in COLORS and len(rgb) == 3 and all(0 <= v <= 255 for v in rgb)
    c = clips[0]
    assert colour_matches(c.frames, c.spec.color) == (judged[0][0] == c.spec.color)


def test_contact_sheet_single_clip(tmp_path):
    frames = make_creative(5).frames  # 16 x 64 x 64
    sheet = contact_sheet(frames, columns=8, scale=2)
    assert sheet.dtype == np.uint8
    assert sheet.shape == (2 * 128 + 3, 8 * 128 + 9, 3)  # 2 rows x 8 columns of 128 px, 1 px borders
    assert (sheet[1 : 1 + 128, 1 : 1 + 128] == cv2.resize(frames[0], (128, 128), interpolation=cv2.INTER_NEAREST)).all()
    labelled = contact_sheet(frames, columns=4, scale=1, labels=[str(i) for i in range(16)])
    assert labelled.shape == (4 * 64 + 5, 4 * 64 + 5, 3)
    path = write_png(sheet, tmp_path / "sub" / "sheet.png")
    back = cv2.imread(str(path))[..., ::-1]  # written BGR, read back as RGB
    assert (back == sheet).all()


def test_contact_sheet_rows_of_clips():
    clips = [make_creative(s).frames for s in range(3)]
    plain = contact_sheet(clips, columns=16, scale=1)
    assert plain.shape == (3 * 65 + 1, 16 * 65 + 1, 3)
    captioned = contact_sheet(clips, columns=16, scale=1, captions=["a", "b", "c"])
    assert captioned.shape[1] == plain.shape[1] and captioned.shape[0] > plain.shape[0]
    with pytest.raises(ValueError):
        contact_sheet(clips, captions=["only one"])
    with pytest.raises(ValueError):
        contact_sheet([clips[0], make_creative(0, size=32).frames])
