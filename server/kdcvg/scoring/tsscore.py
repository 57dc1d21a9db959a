"""TSScore (InnoAds-Bench, Eq. 4-7): is the on-screen text steady, sharp and there for the whole clip?

Pipeline (paper section 4.2 and Appendix C.3, Table 5):

1. sample 32 frames uniformly (all frames of a shorter clip);
2. OCR each sampled frame, dropping text that lies mostly in the product's box (the paper removes the
   product region so packaging and logos are not graded);
3. keep detections with OCR confidence >= 0.5 and group them into text segments: a detection joins the
   segment whose newest detection it overlaps with IoU >= 0.3 and reads alike (similarity >= 0.5);
4. score each segment with stability (Eq. 4, 1 - mean CER between its consecutive detections), clarity
   (Eq. 5, 0.7 x OCR confidence + 0.3 x normalised variance of Laplacian, averaged) and coverage (Eq. 6,
   its detections over the sampled frames) and average ``(stab + clarity + coverage) / 3`` over the
   segments (Eq. 7, alpha = beta = gamma = 1/3).

A clip with no readable text has no segment to average over; the paper leaves that case undefined (its
benchmark prompts all carry text), so ``MetricUnavailableError`` is raised rather than inventing a 0 or
a 1: a caller can then leave the metric out for text-free clips instead of averaging in a made-up value.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from kdcvg.media.keyframes import product_boxes
from kdcvg.scoring.base import MetricResult, MetricUnavailableError, check_clip

if TYPE_CHECKING:
    from rapidocr_onnxruntime import RapidOCR

NAME = "tsscore"
MIN_FRAMES = 1

# --- the paper's hyper-parameters (Appendix C.3, Table 5) ---------------------------------------------
TARGET_FRAMES = 32  # frames sampled uniformly per clip
CONF_THRESHOLD = 0.5  # minimum OCR confidence of a detection that is graded (ref_conf_thresh)
SIM_THRESHOLD = 0.5  # minimum text similarity (1 - CER) to join a segment (keep_sim_thresh)
IOU_THRESHOLD = 0.3  # minimum box IoU to join a segment (iou_link_thresh)
CLARITY_LAMBDA = 0.7  # clarity = lambda x confidence + (1 - lambda) x sharpness
WEIGHTS = (1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0)  # stability, clarity, coverage

# --- choices made here ----------------------------------------------------------------------------------
# OCR is run on frames resized (INTER_LINEAR) so their shorter side is at least OCR_MIN_SIDE pixels.
# Measured on procedural creatives' overlays at 64 px (text ~7 px high): at native size the detector
# missed "FREE SHIPPING", "SALE" and "NEW" outright (7/12 read exactly); enlarged 2x (128 px) it read
# 23/24 exactly, against 19/24 at 1.5x and 3x and 15/24 at 4x. At 2x INTER_LINEAR beat INTER_CUBIC
# (17/24: its overshoot turns "P" into "R") and Lanczos (14/24). On 96 frames of 48 other clips a 128 /
# 160 / 192 px side found the text (CER <= 0.5) in 96 / 96 / 96 frames, exactly (CER 0) in 87 / 67 / 57,
# at 122 / 141 / 171 ms a frame. (One miss at 128: small white "NEW" on navy at the bottom edge, which
# 160 px reads.) Frames of 96 px and more read 12/12 at native size.
OCR_MIN_SIDE = 128
EXCLUDE_OVERLAP = 0.5  # a detection is dropped when this share of its box lies inside the product box
# product_boxes (a foreground segmenter: the largest blob) takes the caption for the product when the
# product is thin, and excluding that box removes the very text being graded ("BUY 1 GET 1" beside a bottle
# seen edge-on: coverage fell from 1.0 to 0.56). A box at least this many times wider than tall is taken
# for a caption and not excluded. Over 960 frames of 60 procedural clips without overlays 4 product boxes
# (0.4%) reached 2.5 (max 3.2, p99 1.9); with overlays, 98 frames had the caption as the "product", all >= 2.8.
CAPTION_ASPECT = 2.5
# NormVarLap: var(Laplacian) / var(intensity) of the text's grayscale crop, divided by SHARPNESS_SATURATION
# and capped at 1. Dividing by the crop's variance removes contrast: raw var(Laplacian) of crisp overlays
# ranged 1,000-25,000 with text colour. Crisp anti-aliased overlays measured (median) 7.5 at 64 px, 4.0 at
# 128 px and 1.1 at 256 px frames; a Gaussian blur of sigma 0.5 px left 3.8 / 2.6 / -, sigma 1 px 0.65 /
# 0.52 / 0.15, sigma 2 px - / 0.07 / 0.05. A saturation of 1 gives crisp text 1 at every size and still
# grades a blur of 1 px and more.
SHARPNESS_SATURATION = 1.0
MIN_CROP_VARIANCE = 1.0  # a crop flatter than this (grey levels^2) has no legible text: sharpness 0
# OCR confusions that are not changes in the text: compared after upper-casing and removing whitespace.
# Measured: "50% OFF TODAY" read as "50%OFFT0DAY", "50% OFF" as "SO%OFF"; 1/I/| is the usual third pair.
_CONFUSABLE = str.maketrans({"0": "O", "5": "S", "1": "I", "|": "I"})


@dataclass(frozen=True)
class TextDetection:
    """One OCR reading: its axis-aligned box in frame pixels (x1, y1 exclusive), text and confidence."""

    x0: int
    y0: int
    x1: int
    y1: int
    text: str
    confidence: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``."""
        return (self.x0, self.y0, self.x1, self.y1)


# --- text comparison ------------------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    """Upper-cases, drops whitespace and folds OCR-confusable glyphs (0/O, 5/S, 1/I/|)."""
    return "".join(text.upper().split()).translate(_CONFUSABLE)


def _edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        prev_diag, row[0] = row[0], i
        for j, cb in enumerate(b, start=1):
            prev_diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev_diag + (ca != cb))
    return row[-1]


def cer(a: str, b: str) -> float:
    """Character error rate between two readings of the same text, in [0, 1].

    Levenshtein distance of the normalised strings (``normalise_text``) over the longer one's length, so
    it is symmetric (consecutive frames have no reference). Two empty strings are identical (0).
    """
    na, nb = normalise_text(a), normalise_text(b)
    longest = max(len(na), len(nb))
    return _edit_distance(na, nb) / longest if longest else 0.0


def similarity(a: str, b: str) -> float:
    """``1 - cer(a, b)``."""
    return 1.0 - cer(a, b)


# --- geometry ------------------------------------------------------------------------------------------


def _area(box: tuple[int, int, int, int]) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def _intersection(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> int:
    return _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (0 when both are empty)."""
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union else 0.0


def _mostly_inside(box: tuple[int, int, int, int], region: tuple[int, int, int, int]) -> bool:
    area = _area(box)
    return area > 0 and _intersection(box, region) >= EXCLUDE_OVERLAP * area


def in_product(box: tuple[int, int, int, int], product: tuple[int, int, int, int]) -> bool:
    """Whether a text box belongs to the product region: at least ``EXCLUDE_OVERLAP`` of it lies inside."""
    return _mostly_inside(box, product)


# --- OCR ----------------------------------------------------------------------------------------------


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected a uint8 RGB frame of shape (H, W, 3), got {getattr(frame, 'shape', frame)}")


class TextReader:
    """RapidOCR (PP-OCRv4 detector + recogniser, ONNX Runtime) set up for small frames and speed.

    The engine is built on first use (loading takes ~1 s) and then shared; building and reading are
    guarded by a lock, so one reader may be used from several threads (RapidOCR keeps per-call state
    on itself, so readings are serialised). The detector runs at the frame's own size
    (``det_limit_type="max"``: it only shrinks frames over 960 px, where the default "min" enlarges
    every frame to 736 px, ~4x slower) and the text-direction classifier is off: overlay text is upright.
    Frames whose shorter side is under ``min_side`` are first enlarged to it (see ``OCR_MIN_SIDE``).
    """

    def __init__(self, *, min_side: int = OCR_MIN_SIDE) -> None:
        if min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {min_side}")
        self.min_side = min_side
        self._engine: RapidOCR | None = None
        self._lock = threading.Lock()

    def _get_engine(self) -> RapidOCR:
        # Called with the lock held.
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR

            # text_score 0: the reader reports every reading with its confidence; TSScore applies its own
            # threshold (CONF_THRESHOLD) so the cut stays visible in this module.
            self._engine = RapidOCR(det_limit_type="max", use_cls=False, text_score=0.0)
        return self._engine

    def _upscale(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        scale = self.min_side / min(frame.shape[:2])
        if scale <= 1.0:
            return frame, 1.0
        return cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR), scale

    def read(self, frame: np.ndarray, exclude: tuple[int, int, int, int] | None = None) -> list[TextDetection]:
        """Text in a uint8 RGB frame ``(H, W, 3)``, top to bottom, with boxes in the frame's pixels.

        Readings with empty text are dropped, and so are those whose box lies mostly (``EXCLUDE_OVERLAP``)
        inside ``exclude`` (``(x0, y0, x1, y1)``, the product's box). Low-confidence
        readings are kept.
        """
        _check_frame(frame)
        image, scale = self._upscale(frame)
        with self._lock:
            result, _ = self._get_engine()(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        height, width = frame.shape[:2]
        out = []
        for quad, text, confidence in result or []:
            detection = _to_detection(np.asarray(quad, dtype=np.float64) / scale, text, confidence, width, height)
            if not detection.text.strip() or _area(detection.box) == 0:
                continue
            if exclude is not None and in_product(detection.box, exclude):
                continue
            out.append(detection)
        return out


def _to_detection(quad: np.ndarray, text: str, confidence: float, width: int, height: int) -> TextDetection:
    x0, y0 = np.floor(quad.min(axis=0)).astype(int)
    x1, y1 = np.ceil(quad.max(axis=0)).astype(int)
    return TextDetection(
        x0=int(np.clip(x0, 0, width)),
        y0=int(np.clip(y0, 0, height)),
        x1=int(np.clip(x1, 0, width)),
        y1=int(np.clip(y1, 0, height)),
        text=str(text),
        confidence=float(confidence),
    )


# --- scoring ------------------------------------------------------------------------------------------


def sample_indices(n_frames: int, k: int = TARGET_FRAMES) -> list[int]:
    """``k`` frame indices spread uniformly over ``n_frames`` (first and last included); all of them when
    the clip has ``k`` frames or fewer."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_frames <= k:
        return list(range(n_frames))
    return [int(i) for i in np.rint(np.linspace(0, n_frames - 1, k))]


def sharpness(frame: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """NormVarLap in [0, 1] of the text in ``box``: var(Laplacian) / var(intensity) of the grayscale crop,
    over ``SHARPNESS_SATURATION``, capped at 1; 0 for an empty or flat crop."""
    x0, y0, x1, y1 = box
    crop = frame[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)]
    if crop.shape[0] < 3 or crop.shape[1] < 3:
        return 0.0
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).astype(np.float32)
    variance = float(gray.var())
    if variance < MIN_CROP_VARIANCE:
        return 0.0
    ratio = float(cv2.Laplacian(gray, cv2.CV_32F).var()) / variance
    return min(1.0, ratio / SHARPNESS_SATURATION)


@dataclass
class _Segment:
    """A text followed across sampled frames: (sample index, detection, clarity) in frame order."""

    items: list[tuple[int, TextDetection, float]] = field(default_factory=list)

    @property
    def last(self) -> TextDetection:
        return self.items[-1][1]

    def stability(self) -> float:
        """Eq. 4; 1 for a text read once (there is no change to measure; coverage grades its absence)."""
        texts = [d.text for _, d, _ in self.items]
        if len(texts) < 2:
            return 1.0
        return 1.0 - float(np.mean([cer(a, b) for a, b in zip(texts, texts[1:], strict=False)]))

    def clarity(self) -> float:
        """Eq. 5, averaged over the segment's detections."""
        return float(np.mean([c for _, _, c in self.items]))


def _link(segments: list[_Segment], frame_index: int, detections: list[tuple[TextDetection, float]]) -> None:
    """Greedily attach this frame's detections to segments (best IoU + similarity first), one per segment;
    the rest start new segments. A segment's anchor is its newest detection, whatever frame it is in."""
    pairs = []
    for si, segment in enumerate(segments):
        for di, (detection, _) in enumerate(detections):
            overlap = iou(segment.last.box, detection.box)
            alike = similarity(segment.last.text, detection.text)
            if overlap >= IOU_THRESHOLD and alike >= SIM_THRESHOLD:
                pairs.append((overlap + alike, si, di))
    used_segments: set[int] = set()
    used_detections: set[int] = set()
    for _, si, di in sorted(pairs, reverse=True):
        if si in used_segments or di in used_detections:
            continue
        used_segments.add(si)
        used_detections.add(di)
        segments[si].items.append((frame_index, *detections[di]))
    for di, (detection, clarity) in enumerate(detections):
        if di not in used_detections:
            segments.append(_Segment([(frame_index, detection, clarity)]))


def _clarity(frame: np.ndarray, detection: TextDetection) -> float:
    return CLARITY_LAMBDA * detection.confidence + (1.0 - CLARITY_LAMBDA) * sharpness(frame, detection.box)


def ts_from_detections(detections: Sequence[Sequence[TextDetection]], frames: np.ndarray) -> MetricResult:
    """TSScore (Eq. 4-7) from OCR readings of sampled frames: ``detections[i]`` were read in ``frames[i]``.

    ``frames`` (uint8 ``(T, H, W, 3)``, the sampled frames) supply the sharpness of each text box.
    Components: ``stability``, ``clarity`` and ``coverage``, each the mean over segments, so ``value``
    is their weighted sum. Raises ``ValueError`` when the two do not match and
    ``MetricUnavailableError`` when no reading reaches ``CONF_THRESHOLD``.
    """
    check_clip(frames)
    if len(detections) != len(frames):
        raise ValueError(f"got detections for {len(detections)} frames but {len(frames)} frames")
    segments: list[_Segment] = []
    for t, (frame, readings) in enumerate(zip(frames, detections, strict=True)):
        kept = [(d, _clarity(frame, d)) for d in readings if d.confidence >= CONF_THRESHOLD and normalise_text(d.text)]
        _link(segments, t, kept)
    if not segments:
        raise MetricUnavailableError(
            NAME,
            "no text found in the video (TSScore grades on-screen text; no OCR reading reached confidence "
            f"{CONF_THRESHOLD} in {len(frames)} sampled frames, so leave this metric out for text-free clips)",
        )
    stab = [s.stability() for s in segments]
    clar = [s.clarity() for s in segments]
    cover = [len(s.items) / len(frames) for s in segments]
    a, b, g = WEIGHTS
    value = float(np.mean([a * s + b * c + g * v for s, c, v in zip(stab, clar, cover, strict=True)]))
    components = {
        "stability": float(np.mean(stab)),
        "clarity": float(np.mean(clar)),
        "coverage": float(np.mean(cover)),
    }
    return MetricResult(name=NAME, value=value, components=components, frames=len(frames))


def exclude_product(detections: Sequence[Sequence[TextDetection]], frames: np.ndarray) -> list[list[TextDetection]]:
    """Drops readings that lie mostly in the product's box of their frame (the paper grades only the text
    around the product): ``detections[i]`` were read in ``frames[i]`` (uint8 ``(T, H, W, 3)``).

    The boxes come from ``kdcvg.media.keyframes.product_boxes`` over ``frames``. A frame where no product is
    found, or where the "product" is caption-shaped (``CAPTION_ASPECT``), keeps all its readings.
    """
    check_clip(frames)
    if len(detections) != len(frames):
        raise ValueError(f"got detections for {len(detections)} frames but {len(frames)} frames")
    return _without_product_text(detections, frames)


def _without_product_text(
    detections: Sequence[Sequence[TextDetection]], frames: np.ndarray
) -> list[list[TextDetection]]:
    regions = _product_regions(frames)
    return [
        [d for d in readings if region is None or not in_product(d.box, region)]
        for readings, region in zip(detections, regions, strict=True)
    ]


def _product_regions(frames: np.ndarray) -> list[tuple[int, int, int, int] | None]:
    """The product box of each frame, or None where there is no usable one: no product found
    (``product_boxes`` then gives the whole frame) or a caption-shaped box (see ``CAPTION_ASPECT``)."""
    height, width = frames.shape[1:3]
    out: list[tuple[int, int, int, int] | None] = []
    for box in product_boxes(frames):
        x0, y0, x1, y1 = (int(v) for v in box)
        whole_frame = (x0, y0, x1, y1) == (0, 0, width, height)
        caption_like = x1 - x0 >= CAPTION_ASPECT * max(1, y1 - y0)
        out.append(None if whole_frame or caption_like else (x0, y0, x1, y1))
    return out


def ts_score(frames: np.ndarray, reader: TextReader | None = None, exclude_product: bool = True) -> MetricResult:
    """TSScore of a uint8 RGB clip ``(T, H, W, 3)``: OCR on ``TARGET_FRAMES`` uniformly sampled frames.

    With ``exclude_product`` readings in the product's box of their frame are left out (see
    ``exclude_product()``; the boxes are found over the sampled frames). ``reader`` defaults to a new
    ``TextReader``; pass one to reuse its loaded models. Raises ``ValueError`` for a malformed clip and
    ``MetricUnavailableError`` when no text is read.
    """
    check_clip(frames)
    reader = reader if reader is not None else TextReader()
    sampled = frames[sample_indices(len(frames))]
    detections: list[list[TextDetection]] = [reader.read(frame) for frame in sampled]
    if exclude_product:
        detections = _without_product_text(detections, sampled)
    return ts_from_detections(detections, sampled)
