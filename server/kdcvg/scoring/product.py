"""ProductScore offline: how well the product in a reference image is preserved across a clip's frames.

InnoAds-Bench (section 4.2, appendix C.3) segments the product in the reference image with Grounded-SAM2,
detects it in every frame and averages GME embedding similarities between the crops (NexusScore with a
product crop). Neither model can be loaded here, so this is a training-free substitute built on the same
skeleton:

1. **Reference segmentation** (`segment_reference`): a product photo on a plain (or gently graded)
   background. The background is a plane per channel fitted robustly to the image's border ring; pixels
   further than a noise-adaptive threshold are foreground; the largest blob (after a small dilation that
   joins thin parts) is the product.
2. **Frame detection**: the clip's moving foreground blob (`kdcvg.judge.motion.product_masks`: a
   background model of the clip, steady text overlays left out); a single frame falls back to (1).
3. **Canonical view**: the product's mask and colours are moved to a fixed grid with the centroid at the
   centre and the area normalised (``sqrt(area)`` = `CANON_ROOT_AREA` pixels), so position and size no
   longer matter. The reference is also pre-rotated `ROTATIONS` times; the frame is compared with every
   rotation and the best one counts (a spinning product stays itself). A small, soft frame sees the
   product differently from a sharp photo (thin parts swell with blended edges, colours mix), so the
   reference is also re-segmented at the working sizes `WORK_ROOTS`, sharp and blurred (`WORK_BLURS`):
   each frame meets the reference at its own product's size, and the better of sharp and soft counts.
4. **Per-frame similarity** (`frame_similarity`), three parts in [0, 1]:

   colour   Earth mover's distance between Lab colour signatures of the product's interior (its edges
            blend into the background), mapped by ``exp(-emd / COLOUR_SCALE)``. Rotation-free.
   shape    soft-mask IoU of the silhouettes (holes filled) at the best rotation, ramped from
            `IOU_FLOOR` to 1. Squashing or swapping the product lowers it.
   texture  SSIM's structure term on the L channel over the two interiors at that rotation: the
            product's internal light/dark layout (caps, labels, stripes), blind to its hue.

   and their weighted mean (`WEIGHTS`) is the frame's similarity; a frame with no product scores 0.
5. **Aggregation** (`product_score`): the mean similarity over all frames (absent frames count 0, so it
   already includes `presence`), times a consistency factor ``1 - CONSISTENCY_WEIGHT * (1 - consistency)``
   where consistency is ``1 - std / CONSISTENCY_SPREAD`` of the similarity over the frames showing the
   product: an identity that flickers from frame to frame is worse than a steady one of the same mean.

Known limits: it needs a plain reference background; it judges appearance at the clip's resolution (at
64 px a product is ~20-40 px across, so fine print cannot count); a second object that moves more than the
product is taken for it, and a frame where the product touches a text overlay gets the two as one region
(`product_masks` joins them), which costs that frame its shape score; mirror images count as different
(no flip search); parts of the product the colour of the video's background (a light label on a light
backdrop) are invisible in the frame but not in a reference shot on another background, so such a pair
scores low (bench/product_score.py --ref-background other: 95-98 % of rankings hold, against 100 % on
the clip's own background); it compares appearance, not identity: two products of one shape and colour
look alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from kdcvg.judge.motion import product_masks
from kdcvg.media.border import border_ring, plane_image
from kdcvg.scoring.base import MetricResult, MetricUnavailableError, check_clip

NAME = "product"
MIN_FRAMES = 1  # one frame shows the product; more frames only add the consistency term

# Canonical view: a CANON_SIZE x CANON_SIZE grid with the product's sqrt(area) scaled to CANON_ROOT_AREA px.
# 18 px is about the size a product has in a 64 px frame (sqrt(area) 12-30 px over zooms), so neither side
# is blown up much; the farthest mask pixel of the most spread sprite (the lamp) is ~1.4 sqrt(area) from
# its centroid, so 64 px leaves room for any rotation.
CANON_SIZE = 64
CANON_ROOT_AREA = 18.0
ROTATIONS = 36  # reference rotations searched, every 10 degrees: at most 5 degrees off the best one
# The reference is also segmented afresh at these working sizes (its product's sqrt(area), px), and each
# frame is compared with the one nearest its product's size: at 64 px a product's sqrt(area) is 12-30 px
# and thin parts swell with anti-aliasing, in the frame and in a reference seen at that size alike.
WORK_ROOTS: tuple[float, ...] = (10.0, 14.0, 20.0, 28.0, 40.0)
WORK_STEP = 1.2  # a working size within this factor of the reference's own size adds nothing: skipped
# ... and at each size also as soft as generated frames are (Gaussian sigma, px at that size): the best
# match counts, so a blurry frame is not taken for a different product (sharpness is another metric's job).
WORK_BLURS: tuple[float, ...] = (0.0, 1.0)

# Segmentation.
FG_THRESHOLD = 30.0  # max-channel distance from the background that counts as foreground (levels), as in judge
NOISE_FACTOR = 4.0  # ... raised to this many robust sigmas of the border's residual on noisy (JPEG) photos
MAX_BORDER_NOISE = 25.0  # a border residual sigma above this (levels) is a busy background, not a plain one
MIN_AREA_FRACTION = 0.004  # a product covers at least this share of its image (16 px at 64 x 64) ...
MIN_PIXELS = 12  # ... and at least this many pixels whatever the image size

# Colour: Lab signatures of the product's interior, compared by the earth mover's distance.
COLOUR_BIN = 8.0  # Lab bin side of the signature (Delta E units): codec noise moves a colour less
MAX_SIGNATURE = 24  # the heaviest bins kept (the EMD is cubic in their number)
COLOUR_BLUR = 1.0  # Gaussian sigma (canonical px) applied to both sides' colours before the signature
# Delta E (EMD) at which colour similarity falls to 1/e. Measured on procedural clips (p10-p90 over frames,
# bench/product_score.py seeds): the same product 1-4 clean and 3-13 through blur + noise + H.264 (colour
# 0.4-0.9); another palette colour 25-105 (colour <= 0.2); the same colour on another sprite 7-37.
COLOUR_SCALE = 15.0

# Shape and texture.
# Soft IoU at which the shape score reaches 0. Measured (p10-p90 over frames, best rotation): the same
# sprite 0.86-0.97 (0.78-0.95 through H.264), another sprite at most 0.5-0.85 (median ~0.6), the same sprite
# squashed to 0.6 of its width 0.66-0.77. Two unrelated compact blobs of equal area overlap ~0.5.
IOU_FLOOR = 0.5
INTERIOR_DEPTH = 1.0  # canonical px inside the edge before a pixel's colour counts at all ...
INTERIOR_RAMP = 2.0  # ... and over these further px its weight ramps to 1 (edges blend with the background)
TEXTURE_C = 4.0**2  # SSIM-style constant (L units squared): two flat products are alike, noise is not texture
TEXTURE_BLUR = 0.8  # Gaussian sigma (canonical px) on L before the texture term: resampling jitter is not layout

WEIGHTS: dict[str, float] = {"colour": 0.4, "shape": 0.35, "texture": 0.25}  # per-frame similarity mix

# Aggregation.
CONSISTENCY_SPREAD = 0.25  # the similarity's std over frames at which consistency reaches 0
CONSISTENCY_WEIGHT = 0.2  # the most the consistency factor takes off the mean similarity

_EPS = 1e-9


# --- images and masks ----------------------------------------------------------------------------------


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG (any format OpenCV reads) bytes -> (H, W, 3) uint8 RGB; raises ValueError for non-images.

    Grey images are expanded to RGB, 16-bit images scaled to 8 bits, and a transparent cut-out is laid on
    a plain background far from its colours, so `segment_reference` can separate it.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ValueError("the reference image is empty: expected PNG or JPEG bytes")
    buf = np.frombuffer(data, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ValueError(f"could not decode the reference image ({len(data)} bytes): expected PNG or JPEG bytes")
    if img.dtype == np.uint16:
        img = (img // 257).astype(np.uint8)
    if img.dtype != np.uint8:
        raise ValueError(f"unsupported reference image depth {img.dtype}: expected 8- or 16-bit PNG/JPEG")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return _flatten_alpha(cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA))
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _flatten_alpha(rgba: np.ndarray) -> np.ndarray:
    """An RGBA cut-out composited on white or near-black, whichever is further from its opaque pixels."""
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32)
    opaque = rgb[alpha[..., 0] > 0.5]
    luma = float(opaque.mean(axis=0) @ np.array([0.299, 0.587, 0.114])) if len(opaque) else 0.0
    backdrop = np.full(3, 20.0 if luma > 128 else 245.0, np.float32)
    return np.clip(rgb * alpha + backdrop * (1.0 - alpha) + 0.5, 0, 255).astype(np.uint8)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected a uint8 RGB image of shape (H, W, 3), got {got}")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"the image is too small to segment: {image.shape[1]}x{image.shape[0]}")
    return image


def _border_background(image: np.ndarray) -> tuple[np.ndarray, float]:
    """A plane per channel fitted robustly to the image's border ring, and the ring's residual sigma."""
    height, width, _ = image.shape
    ys, xs, design = border_ring(height, width)
    values = image[ys, xs].astype(np.float64)
    # The product may cover part of the border: start from the pixels near the border's median colour
    # (a gradient's middle), then refit on the plane's inliers.
    keep = np.abs(values - np.median(values, axis=0)).max(axis=1) < FG_THRESHOLD
    if keep.sum() < 0.25 * len(ys):
        keep = np.ones(len(ys), bool)
    coef = np.zeros((3, 3))
    for _ in range(3):
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        inliers = np.abs(design @ coef - values).max(axis=1) < FG_THRESHOLD / 2
        if inliers.sum() < 0.25 * len(ys):
            break
        keep = inliers
    resid = np.abs(design[keep] @ coef - values[keep]).max(axis=1)
    sigma = 1.4826 * float(np.median(resid)) if len(resid) else 0.0
    return plane_image(coef, height, width).astype(np.float32), sigma


def _largest_blob(fg: np.ndarray) -> np.ndarray:
    """The largest 8-connected foreground blob, after a 3x3 dilation joins thin parts (a lamp's arm)."""
    mask = fg.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.dilate(mask, np.ones((3, 3), np.uint8)), connectivity=8)
    if n <= 1:
        return np.zeros(fg.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == largest) & fg


def _min_pixels(shape: tuple[int, ...]) -> int:
    return max(MIN_PIXELS, round(MIN_AREA_FRACTION * shape[0] * shape[1]))


def _segment(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(mask, None) or (empty mask, why not): the single-image product segmentation."""
    bg, sigma = _border_background(image)
    if sigma > MAX_BORDER_NOISE:
        return np.zeros(image.shape[:2], bool), (
            f"the image's border is not a plain background (residual {sigma:.0f} levels); "
            "use a product photo on a plain or gently graded background"
        )
    threshold = max(FG_THRESHOLD, NOISE_FACTOR * sigma)
    fg = np.abs(image.astype(np.float32) - bg).max(axis=-1) > threshold
    mask = _largest_blob(fg)
    if mask.sum() < _min_pixels(image.shape):
        return mask, (
            "no product stands out from the image's background (blank image, or a product of the "
            "background's colour); use a photo where the product contrasts with a plain background"
        )
    return mask, None


def segment_reference(image: np.ndarray) -> np.ndarray:
    """(H, W) bool mask of the product in a reference photo on a plain background.

    Raises MetricUnavailableError("product", ...) when no product can be segmented: a blank image, a
    product that does not contrast with its background, a busy background, or a product touching all
    four edges (its silhouette is cut, or the "background" was the product).
    """
    image = _check_image(image)
    mask, why = _segment(image)
    if why is not None:
        raise MetricUnavailableError(NAME, why)
    if mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any():
        raise MetricUnavailableError(
            NAME,
            "the product fills the reference image (it touches every edge); "
            "use a photo with a margin of plain background around it",
        )
    return mask


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """The mask with its holes filled: the silhouette, whatever parts match the background's colour."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out.astype(bool) | mask


# --- canonical view ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _View:
    """A product on the canonical grid: L channel, silhouette (soft) and colour weight of each pixel."""

    lab: np.ndarray  # (N, N, 3) float32 CIE Lab
    luma: np.ndarray  # (N, N) float32 L, lightly blurred (texture)
    silhouette: np.ndarray  # (N, N) float32 in [0, 1], holes filled (shape)
    interior: np.ndarray  # (N, N) float32 in [0, 1], the foreground's interior (colour and texture)


def _canonical(image: np.ndarray, mask: np.ndarray) -> _View:
    """The product of `mask` in `image` moved to the canonical grid: centroid centred, sqrt(area) fixed."""
    filled = _fill_holes(mask)
    m = cv2.moments(filled.astype(np.uint8), binaryImage=True)
    k = CANON_ROOT_AREA / math.sqrt(m["m00"])
    cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
    ys, xs = np.nonzero(filled)
    pad = 2
    x0, y0 = max(0, xs.min() - pad), max(0, ys.min() - pad)
    x1, y1 = min(image.shape[1], xs.max() + 1 + pad), min(image.shape[0], ys.max() + 1 + pad)
    rgb = image[y0:y1, x0:x1].astype(np.float32) / 255.0
    masks = np.dstack([filled[y0:y1, x0:x1], mask[y0:y1, x0:x1]]).astype(np.float32)
    # Shrink with area averaging first (no aliasing from a large photo), then place with a sub-pixel shift.
    size = (max(1, round((x1 - x0) * k)), max(1, round((y1 - y0) * k)))
    kx, ky = size[0] / (x1 - x0), size[1] / (y1 - y0)
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
    small = np.dstack([cv2.resize(rgb, size, interpolation=interp), cv2.resize(masks, size, interpolation=interp)])
    centre = (CANON_SIZE - 1) / 2
    # Pixel centres: source x maps to (x + 0.5) * kx - 0.5 in the resized crop.
    shift = np.float32([[1, 0, centre - ((cx - x0 + 0.5) * kx - 0.5)], [0, 1, centre - ((cy - y0 + 0.5) * ky - 0.5)]])
    grid = cv2.warpAffine(small, shift, (CANON_SIZE, CANON_SIZE), flags=cv2.INTER_LINEAR, borderValue=0)
    rgb_grid = np.clip(grid[..., :3], 0, 1)
    if COLOUR_BLUR > 0:  # generated frames are soft: blur both sides alike so sharpness is not colour
        rgb_grid = cv2.GaussianBlur(rgb_grid, (0, 0), COLOUR_BLUR)
    lab = cv2.cvtColor(rgb_grid, cv2.COLOR_RGB2Lab)
    silhouette = np.clip(grid[..., 3], 0, 1)
    return _View(lab, _blur(lab[..., 0]), silhouette, _interior(silhouette, np.clip(grid[..., 4], 0, 1)))


def _blur(luma: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(luma, (0, 0), TEXTURE_BLUR)


def _interior(silhouette: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Weight of each pixel's colour: 0 at the silhouette's edge, 1 from a few px in, and only on foreground."""
    depth = cv2.distanceTransform((silhouette > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    ramp = np.clip((depth - INTERIOR_DEPTH) / INTERIOR_RAMP, 0.0, 1.0)
    weight = ramp * (foreground > 0.5)
    if weight.sum() < 4:  # a sliver: every foreground pixel counts
        weight = (foreground > 0.5).astype(np.float32)
    return weight.astype(np.float32)


def _rotate(img: np.ndarray, angle: float) -> np.ndarray:
    centre = ((CANON_SIZE - 1) / 2, (CANON_SIZE - 1) / 2)
    m = cv2.getRotationMatrix2D(centre, angle, 1.0)
    return cv2.warpAffine(img, m, (CANON_SIZE, CANON_SIZE), flags=cv2.INTER_LINEAR, borderValue=0)


def _signature(view: _View) -> np.ndarray:
    """(K, 4) float32 EMD signature: weight and mean Lab of the heaviest Lab bins of the interior."""
    w = view.interior.ravel()
    keep = w > 0
    lab = view.lab.reshape(-1, 3)[keep]
    w = w[keep]
    if len(w) == 0:
        return np.zeros((0, 4), np.float32)
    bins = np.floor(lab / COLOUR_BIN).astype(np.int64) + 64  # L, a and b within +-128: indices 48..80
    _, idx = np.unique((bins[:, 0] * 128 + bins[:, 1]) * 128 + bins[:, 2], return_inverse=True)
    mass = np.bincount(idx, weights=w)
    centres = np.stack([np.bincount(idx, weights=w * lab[:, c]) for c in range(3)], axis=1) / mass[:, None]
    top = np.argsort(-mass)[:MAX_SIGNATURE]
    sig = np.column_stack([mass[top] / mass[top].sum(), centres[top]])
    return sig.astype(np.float32)


def _colour_similarity(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) == 0 or len(b) == 0:
        return 0.0
    emd, _, _ = cv2.EMD(a, b, cv2.DIST_L2)
    return float(math.exp(-emd / COLOUR_SCALE))


# --- the reference -------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _ReferenceView:
    """The reference product seen at one working size, canonicalised, at each of the `ROTATIONS` rotations.

    ``silhouettes``, ``lumas`` and ``interiors`` are stacked as (R, N*N) rows; ``signature`` is the
    colour signature; ``root_area`` the product's sqrt(area) in px at this working size.
    """

    root_area: float
    signature: np.ndarray  # (K, 4) float32
    silhouettes: np.ndarray  # (R, N*N) float32
    silhouette_sums: np.ndarray  # (R,) float32: each rotation's silhouette area
    lumas: np.ndarray  # (R, N*N) float32
    interiors: np.ndarray  # (R, N*N) float32


def _reference_view(image: np.ndarray, mask: np.ndarray) -> _ReferenceView:
    view = _canonical(image, mask)
    angles = np.arange(ROTATIONS) * (360.0 / ROTATIONS)
    stack = np.dstack([view.silhouette, view.luma, view.interior])
    # (R, N, N, 3) -> (3, R, N*N): each feature's rotations as contiguous rows.
    rotated = np.stack([_rotate(stack, a) for a in angles]).reshape(ROTATIONS, -1, 3)
    silhouettes, lumas, interiors = np.moveaxis(rotated, -1, 0).copy()
    return _ReferenceView(
        root_area=math.sqrt(float(_fill_holes(mask).sum())),
        signature=_signature(view),
        silhouettes=silhouettes,
        silhouette_sums=silhouettes.sum(axis=1),
        lumas=lumas,
        interiors=interiors,
    )


def _resegment(
    image: np.ndarray, mask: np.ndarray, background: tuple[np.ndarray, float], root: float, blur: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """The image shrunk so the product's sqrt(area) is ~`root` px, blurred by `blur` px there, and its mask
    thresholded afresh against the (shrunk) `background` (`_border_background` of the image); None when
    too little of the product remains.

    A small or soft frame's mask swells thin parts by their blended edges (a 2 px headphone band reads
    3-5 px wide); segmenting the reference at the same size and softness swells them alike, where
    shrinking a sharp mask would not.
    """
    k = min(1.0, root / math.sqrt(float(_fill_holes(mask).sum())))
    size = (max(8, round(image.shape[1] * k)), max(8, round(image.shape[0] * k)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if k < 1 else image
    bg, sigma = background
    bg_small = cv2.resize(bg, size, interpolation=cv2.INTER_AREA) if k < 1 else bg
    footprint = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    if blur > 0:
        small = cv2.GaussianBlur(small, (0, 0), blur)
        grow = 2 * math.ceil(2 * blur) + 1
        footprint = cv2.dilate(footprint.astype(np.uint8), np.ones((grow, grow), np.uint8)).astype(bool)
    fg = np.abs(small.astype(np.float32) - bg_small).max(axis=-1) > max(FG_THRESHOLD, NOISE_FACTOR * sigma)
    small_mask = fg & footprint
    if small_mask.sum() < MIN_PIXELS:
        return None
    return small, small_mask


@dataclass(frozen=True, eq=False)
class ProductReference:
    """The reference product's features, computed once per reference (a stream scores many clips with it).

    ``sizes`` hold the product at the working sizes `WORK_ROOTS` below its own size and at its own, each
    as seen sharp and at the softnesses `WORK_BLURS`; a frame is compared with the views of the size
    nearest its product's (`_views_for`) and the best match counts.
    """

    mask: np.ndarray  # (H, W) bool: the segmented product in the reference image
    sizes: tuple[tuple[_ReferenceView, ...], ...]  # by increasing size; within one, by increasing blur
    area_fraction: float  # the product's share of the reference image

    @classmethod
    def from_image(cls, image: np.ndarray, mask: np.ndarray | None = None) -> ProductReference:
        """Segments (unless `mask` is given) and describes the product in an RGB uint8 reference image.

        Raises MetricUnavailableError when no product can be segmented, ValueError for a bad array.
        """
        image = _check_image(image)
        if mask is None:
            mask = segment_reference(image)
        elif mask.shape != image.shape[:2] or mask.sum() < MIN_PIXELS:
            raise ValueError(f"the mask must be an (H, W) array covering >= {MIN_PIXELS} pixels of the image")
        mask = mask.astype(bool)
        own = math.sqrt(float(_fill_holes(mask).sum()))
        roots = [r for r in WORK_ROOTS if r < own / WORK_STEP] + [own]
        background = _border_background(image)
        sizes = []
        for root in roots:
            views = [_reference_view(image, mask)] if root == own else []
            for blur in WORK_BLURS:
                if blur == 0 and root == own:
                    continue
                seen = _resegment(image, mask, background, root, blur)
                if seen is not None:
                    views.append(_reference_view(*seen))
            if views:
                sizes.append(tuple(views))
        return cls(mask=mask, sizes=tuple(sizes), area_fraction=float(mask.mean()))

    def _views_for(self, root_area: float) -> tuple[_ReferenceView, ...]:
        """The views of the size nearest (in ratio) to a frame product's sqrt(area) in px."""
        return min(self.sizes, key=lambda views: abs(math.log(views[0].root_area / root_area)))


# --- per frame -----------------------------------------------------------------------------------------


def _shape_scores(view: _View, ref: _ReferenceView) -> np.ndarray:
    """(R,) shape score per reference rotation: the soft IoU ramped from IOU_FLOOR to 1."""
    support = np.flatnonzero(view.silhouette)  # min() is 0 elsewhere: the union follows from the sums
    s = view.silhouette.ravel()[support]
    inter = np.minimum(s[None, :], ref.silhouettes[:, support]).sum(axis=1)
    union = s.sum() + ref.silhouette_sums - inter
    iou = inter / np.maximum(union, _EPS)
    return np.clip((iou - IOU_FLOOR) / (1.0 - IOU_FLOOR), 0.0, 1.0)


def _texture_scores(view: _View, ref: _ReferenceView) -> np.ndarray:
    """(R,) texture score per rotation: SSIM's structure term of L over the two interiors' overlap."""
    support = np.flatnonzero(view.interior)
    w = np.minimum(view.interior.ravel()[support][None, :], ref.interiors[:, support])
    mass = w.sum(axis=1)
    total = mass + _EPS
    a = view.luma.ravel()[support][None, :]
    b = ref.lumas[:, support]
    da = a - (w * a).sum(axis=1, keepdims=True) / total[:, None]
    db = b - (w * b).sum(axis=1, keepdims=True) / total[:, None]
    var_a = (w * da * da).sum(axis=1) / total
    var_b = (w * db * db).sum(axis=1) / total
    cov = (w * da * db).sum(axis=1) / total
    structure = (cov + TEXTURE_C / 2) / (np.sqrt(var_a * var_b) + TEXTURE_C / 2)
    return np.where(mass >= 4, np.clip(structure, 0.0, 1.0), 0.0)


def _absent() -> dict[str, float]:
    return {"present": 0.0, "colour": 0.0, "shape": 0.0, "texture": 0.0, "similarity": 0.0}


def frame_similarity(frame: np.ndarray, ref: ProductReference, mask: np.ndarray | None = None) -> dict[str, float]:
    """One frame's match to the reference: {"present", "colour", "shape", "texture", "similarity"} in [0, 1].

    `mask` is the product's region in the frame (a clip's `product_masks`); without it the frame is
    segmented on its own like a reference image. A frame with no product region scores 0 throughout.
    """
    frame = _check_image(frame)
    if mask is None:
        mask, why = _segment(frame)
        if why is not None:
            return _absent()
    mask = np.asarray(mask, bool)
    if mask.shape != frame.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the frame's {frame.shape[:2]}")
    if mask.sum() < _min_pixels(frame.shape):
        return _absent()
    view = _canonical(frame, mask)
    signature = _signature(view)
    matches = [_match(view, signature, v) for v in ref._views_for(math.sqrt(float(_fill_holes(mask).sum())))]
    parts = max(matches, key=_similarity)  # the reference as sharp or as soft as the frame
    return {"present": 1.0, **parts, "similarity": _similarity(parts)}


def _similarity(parts: dict[str, float]) -> float:
    return float(sum(WEIGHTS[k] * parts[k] for k in WEIGHTS) / sum(WEIGHTS.values()))


def _match(view: _View, signature: np.ndarray, ref: _ReferenceView) -> dict[str, float]:
    """Colour, shape and texture of a canonical frame view against one reference view, best rotation."""
    shape = _shape_scores(view, ref)
    texture = _texture_scores(view, ref)
    best = int(np.argmax(WEIGHTS["shape"] * shape + WEIGHTS["texture"] * texture))
    colour = _colour_similarity(signature, ref.signature)
    return {"colour": colour, "shape": float(shape[best]), "texture": float(texture[best])}


# --- the clip ------------------------------------------------------------------------------------------


def product_score(frames: np.ndarray, ref: ProductReference) -> MetricResult:
    """ProductScore of a (T, H, W, 3) uint8 RGB clip against a reference product, in [0, 1].

    value = mean over all frames of the per-frame similarity (0 where no product is found), times
    ``1 - CONSISTENCY_WEIGHT * (1 - consistency)``. Components: "colour", "shape", "texture" and
    "similarity" (means over the frames showing a product), "consistency" and "presence" (the share
    of frames where a product region was found).
    """
    frames = check_clip(frames)
    if frames.shape[0] < MIN_FRAMES:
        raise MetricUnavailableError(NAME, f"needs at least {MIN_FRAMES} frames, got {frames.shape[0]}")
    masks = product_masks(frames)
    per_frame = [frame_similarity(f, ref, m) for f, m in zip(frames, masks, strict=True)]
    present = np.array([p["present"] for p in per_frame]) > 0
    sims = np.array([p["similarity"] for p in per_frame])
    presence = float(present.mean())
    if not present.any():
        zeros = dict.fromkeys(("colour", "shape", "texture", "similarity", "consistency"), 0.0)
        return MetricResult(NAME, 0.0, {**zeros, "presence": 0.0}, frames=len(frames))
    shown = [p for p in per_frame if p["present"] > 0]
    parts = {k: float(np.mean([p[k] for p in shown])) for k in ("colour", "shape", "texture", "similarity")}
    consistency = float(np.clip(1.0 - sims[present].std() / CONSISTENCY_SPREAD, 0.0, 1.0))
    value = float(sims.mean()) * (1.0 - CONSISTENCY_WEIGHT * (1.0 - consistency))
    components = {**parts, "consistency": consistency, "presence": presence}
    return MetricResult(NAME, float(np.clip(value, 0.0, 1.0)), components, frames=len(frames))
