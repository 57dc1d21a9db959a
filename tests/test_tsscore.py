"""TSScore: text comparison, segment linking and Eq. 4-7 on readings, and OCR on constructed clips."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from kdcvg.data import make_creative
from kdcvg.media import product_boxes
from kdcvg.scoring.base import MetricUnavailableError
from kdcvg.scoring.tsscore import (
    MIN_FRAMES,
    TARGET_FRAMES,
    TextDetection,
    TextReader,
    cer,
    exclude_product,
    in_product,
    iou,
    sample_indices,
    sharpness,
    similarity,
    ts_from_detections,
    ts_score,
)

SIZE = 64
N = 12
INK = (20, 20, 24)


@pytest.fixture(scope="module")
def reader() -> TextReader:
    return TextReader()


def _background(i: int) -> np.ndarray:
    """A cream frame with a red "product" block sliding right 2 pixels a frame."""
    frame = np.full((SIZE, SIZE, 3), (235, 230, 215), np.uint8)
    x = 10 + 2 * i
    cv2.rectangle(frame, (x, 18), (x + 16, 40), (200, 40, 40), -1)
    return frame


def _text_layer(text: str) -> np.ndarray:
    """Coverage in [0, 1] of ``text`` in the bottom band of a frame."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    cv2.putText(mask, text, (10, 58), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 255, 1, cv2.LINE_AA)
    return mask.astype(np.float32) / 255.0


def _composite(frame: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    ink = np.array(INK, np.float32)
    out = frame.astype(np.float32) * (1.0 - alpha[..., None]) + ink * alpha[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _clip(words: list[str | None]) -> np.ndarray:
    return np.stack(
        [_background(i) if w is None else _composite(_background(i), _text_layer(w)) for i, w in enumerate(words)]
    )


def _deformed_clip(seed: int = 0) -> np.ndarray:
    """The steady caption, but every frame rotated, sheared, rescaled, shifted and blurred at random."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(N):
        m = cv2.getRotationMatrix2D((32.0, 55.0), rng.uniform(-25, 25), rng.uniform(0.75, 1.2))
        m[0, 1] += rng.uniform(-0.4, 0.4)
        m[:, 2] += rng.uniform(-6, 6, size=2)
        alpha = cv2.warpAffine(_text_layer("SALE"), m, (SIZE, SIZE))
        alpha = cv2.GaussianBlur(alpha, (0, 0), rng.uniform(0.4, 1.4))
        frames.append(_composite(_background(i), alpha))
    return np.stack(frames)


def _det(text: str, conf: float = 0.9, box: tuple[int, int, int, int] = (10, 48, 50, 60)) -> TextDetection:
    return TextDetection(*box, text=text, confidence=conf)


# --- text comparison ----------------------------------------------------------------------------------


def test_cer_ignores_case_spaces_and_ocr_confusions():
    assert cer("50%OFFT0DAY", "50% OFF TODAY") == 0.0
    assert cer("sale", "SALE") == 0.0
    assert cer("SO%OFF", "50% OFF") == 0.0  # 5/S and 0/O
    assert similarity("50%OFFT0DAY", "50% OFF TODAY") == 1.0


def test_cer_counts_real_changes():
    assert cer("SALE", "SOLD") == pytest.approx(0.5)
    assert cer("SALE", "") == 1.0
    assert cer("", "") == 0.0
    assert cer("NEW", "NEWS") == pytest.approx(0.25)  # over the longer reading: symmetric, at most 1
    assert cer("NEWS", "NEW") == cer("NEW", "NEWS")


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_sample_indices_are_uniform():
    idx = sample_indices(100)
    assert len(idx) == TARGET_FRAMES
    assert idx[0] == 0 and idx[-1] == 99
    assert all(b > a for a, b in zip(idx, idx[1:], strict=False))
    assert max(np.diff(idx)) - min(np.diff(idx)) <= 1
    assert sample_indices(10) == list(range(10))
    assert sample_indices(1) == [0]
    assert MIN_FRAMES == 1
    with pytest.raises(ValueError, match="n_frames"):
        sample_indices(0)
    with pytest.raises(ValueError, match="k"):
        sample_indices(5, k=0)


def test_blurred_text_is_less_sharp():
    crisp = _clip(["SALE"])[0]
    blurred = cv2.GaussianBlur(crisp, (0, 0), 1.5)
    box = (8, 46, 56, 62)
    assert sharpness(crisp, box) == 1.0
    assert sharpness(blurred, box) < 0.5
    assert sharpness(np.full((SIZE, SIZE, 3), 128, np.uint8), box) == 0.0  # no contrast, no text


# --- Eq. 4-7 on readings -------------------------------------------------------------------------------


def test_steady_readings_link_into_one_full_segment():
    frames = _clip(["50% OFF TODAY"] * 4)
    readings = [[_det("50% OFF TODAY")], [_det("50%OFFT0DAY")], [_det("50% off today")], [_det("50%OFFTODAY")]]
    result = ts_from_detections(readings, frames)
    assert result.name == "tsscore"
    assert result.frames == 4
    assert result.components["stability"] == 1.0
    assert result.components["coverage"] == 1.0
    assert result.value == pytest.approx((2.0 + result.components["clarity"]) / 3)


def test_changing_text_lowers_stability():
    frames = _clip(["SALE"] * 4)
    readings = [[_det("SALE")], [_det("SALT")], [_det("HALT")], [_det("HALO")]]  # one letter per step
    result = ts_from_detections(readings, frames)
    assert result.components["stability"] == pytest.approx(0.75)
    assert result.components["coverage"] == 1.0  # still one segment: each step reads 75% alike


def test_text_that_vanishes_keeps_one_segment_with_partial_coverage():
    frames = _clip(["SALE"] * 4)
    result = ts_from_detections([[_det("SALE")], [], [_det("SALE")], []], frames)
    assert result.components["coverage"] == 0.5
    assert result.components["stability"] == 1.0


def test_far_or_different_text_starts_new_segments():
    frames = _clip(["SALE"] * 2)
    moved = ts_from_detections([[_det("SALE")], [_det("SALE", box=(10, 2, 50, 14))]], frames)
    renamed = ts_from_detections([[_det("SALE")], [_det("FREE")]], frames)
    for result in (moved, renamed):
        assert result.components["coverage"] == 0.5  # two segments, each seen in 1 of 2 frames


def test_low_confidence_readings_are_ignored():
    frames = _clip(["SALE"] * 2)
    result = ts_from_detections([[_det("SALE"), _det("XQ", conf=0.3)], [_det("SALE")]], frames)
    assert result.components["coverage"] == 1.0
    with pytest.raises(MetricUnavailableError, match="no text found in the video") as info:
        ts_from_detections([[_det("SALE", conf=0.49)], []], frames)
    assert info.value.name == "tsscore"


def test_readings_must_match_frames():
    with pytest.raises(ValueError, match="2 frames"):
        ts_from_detections([[_det("SALE")]], _clip(["SALE"] * 2))
    with pytest.raises(ValueError, match="uint8"):
        ts_from_detections([[_det("SALE")]], _clip(["SALE"]).astype(np.float32))


def test_readings_on_the_product_are_excluded():
    frames = _clip(["SALE"] * 3)  # the red block spans x 10+2i..26+2i, y 18..40
    on_product = [_det("LOGO", box=(12 + 2 * i, 22, 24 + 2 * i, 30)) for i in range(3)]
    caption = _det("SALE")
    kept = exclude_product([[label, caption] for label in on_product], frames)
    assert kept == [[caption]] * 3


def test_a_caption_taken_for_the_product_is_not_excluded():
    # With no product in the frame the segmenter's largest blob is the caption itself.
    frames = np.stack([_composite(np.full((SIZE, SIZE, 3), 235, np.uint8), _text_layer("SALE"))] * 3)
    caption = _det("SALE", box=(9, 47, 42, 61))  # where OCR finds it: mostly inside the blob's box
    assert in_product(caption.box, tuple(product_boxes(frames)[0]))
    assert exclude_product([[caption]] * 3, frames) == [[caption]] * 3


def test_exclude_product_checks_its_inputs():
    with pytest.raises(ValueError, match="2 frames"):
        exclude_product([[_det("SALE")]], _clip(["SALE"] * 2))


# --- OCR on constructed and procedural clips -------------------------------------------------------------


def test_steady_text_scores_high(reader):
    result = ts_score(_clip(["SALE"] * N), reader)
    assert result.components["stability"] == 1.0
    assert result.components["coverage"] == 1.0
    assert result.value > 0.9


def test_flickering_text_scores_lower_than_steady(reader):
    steady = ts_score(_clip(["SALE"] * N), reader)
    blinking = ts_score(_clip(["SALE" if i % 2 == 0 else None for i in range(N)]), reader)
    changing = ts_score(_clip([["SALE", "SALT", "HALT", "HALO"][i % 4] for i in range(N)]), reader)
    assert blinking.components["coverage"] == pytest.approx(0.5)
    assert changing.components["stability"] < 0.9
    assert blinking.value < steady.value - 0.1
    assert changing.value < steady.value - 0.05


def test_deformed_text_scores_lower_than_steady(reader):
    steady = ts_score(_clip(["SALE"] * N), reader)
    deformed = ts_score(_deformed_clip(), reader)
    assert deformed.components["clarity"] < steady.components["clarity"]
    assert deformed.value < steady.value - 0.1


def test_procedural_overlay_is_read_and_scores_high(reader):
    creative = make_creative(3, motions=["slide_left"], overlay_prob=1.0)
    readings = reader.read(creative.frames[0])
    assert any(cer(d.text, creative.spec.overlay) <= 0.2 for d in readings)
    result = ts_score(creative.frames, reader)
    assert result.frames == len(creative.frames)
    assert result.value > 0.9


def test_text_inside_the_excluded_box_is_dropped(reader):
    frame = _clip(["SALE"])[0]
    (detection,) = reader.read(frame)
    assert cer(detection.text, "SALE") == 0.0
    assert reader.read(frame, exclude=(0, 40, SIZE, SIZE)) == []
    assert reader.read(frame, exclude=(0, 0, SIZE, 30)) == [detection]


def test_text_free_clip_is_unavailable(reader):
    with pytest.raises(MetricUnavailableError, match="no text found in the video"):
        ts_score(_clip([None] * 4), reader)


def test_reader_is_safe_across_threads(reader):
    frames = list(_clip(["SALE", "NEW", "HOT", "FREE"]))
    sequential = [reader.read(f) for f in frames]
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(reader.read, frames))
    assert threaded == sequential
    assert [cer(r[0].text, w) for r, w in zip(sequential, ["SALE", "NEW", "HOT", "FREE"], strict=True)] == [0.0] * 4


def test_bad_inputs_are_rejected(reader):
    with pytest.raises(ValueError, match="shape"):
        ts_score(np.zeros((4, SIZE, SIZE), np.uint8), reader)
    with pytest.raises(ValueError, match="no frames"):
        ts_score(np.zeros((0, SIZE, SIZE, 3), np.uint8), reader)
    with pytest.raises(ValueError, match="uint8 RGB frame"):
        reader.read(np.zeros((SIZE, SIZE), np.uint8))
    with pytest.raises(ValueError, match="min_side"):
        TextReader(min_side=0)
