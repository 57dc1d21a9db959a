"""The product's colour, by numbers: the dominant foreground colour of a clip against the creative palette.

Foreground is the product (`product_masks`: the moving blob, not the background and not a steady text
overlay). A pixel's weight grows with its depth inside the mask (edges blend into the background, more
so in blurry generated frames). Colours are compared in CIE Lab (perceptual distance). Products are
shaded: darker and lighter parts of the body colour (caps, labels, stripes) can cover more area than
the body itself, so each palette colour stands with its two shades (mixed toward black / white), and a
pixel votes for the palette colour whose body or shade is nearest (a shade's vote counts less); pixels
far from everything abstain. The score averages the share over the product with the share on its
outline (the first band inside the edge), as the body colour wraps a product while inlays sit inside.

Known limits (see bench/judge_accuracy.py): at 64 px a phone is mostly its dark screen and can read as
"black"; blur pulls colours toward their neighbours in the palette (yellow -> gold, white and black ->
silver, orange -> brown, red -> pink).
"""

from __future__ import annotations

import cv2
import numpy as np

from kdcvg.data.creatives import COLORS
from kdcvg.judge.motion import product_masks

_NAMES: tuple[str, ...] = tuple(COLORS)
_MAX_DELTA_E = 45.0  # a pixel further than this (Lab units) from every palette colour abstains
_DEPTH = 3.0  # pixels (at 64 px) inside the product's edge from which a pixel's colour counts fully
_MAX_PIXELS = 20000  # votes are taken on at most this many foreground pixels (evenly subsampled)


def _lab(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB -> (N, 3) float32 CIE Lab (L in 0..100)."""
    img = (np.asarray(rgb, np.float32).reshape(-1, 1, 3)) / 255.0
    return cv2.cvtColor(img, cv2.COLOR_RGB2Lab).reshape(-1, 3)


def _check(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError("frames must be a uint8 array of shape (T, H, W, 3) (or one (H, W, 3) frame)")
    return frames


def foreground_pixels(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The product's pixels over the clip: (N, 3) uint8 RGB, (N,) weights and (N,) bool outline flags.

    A pixel's weight grows with its depth inside the product mask (0 on the edge, 1 from `_DEPTH`
    pixels in), because edges blend into the background, more so in blurry generated frames. The
    outline is the first pixel band inside the edge. Overlay text and the background are left out.
    """
    frames = _check(frames)
    masks = product_masks(frames)
    scale = min(frames.shape[1:3]) / 64.0  # depths are set for 64 px frames
    picked, weights, rings = [], [], []
    for frame, mask in zip(frames, masks, strict=True):
        if not mask.any():
            continue
        depth = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 3) / scale
        w = np.clip((depth - 1.0) / (_DEPTH - 1.0), 0.0, 1.0)
        if w.sum() < 4:  # a sliver: keep it, unweighted
            w = mask.astype(np.float32)
        use = w > 0
        picked.append(frame[use])
        weights.append(w[use])
        rings.append(depth[use] < 2.0)
    if not picked:
        return np.zeros((0, 3), np.uint8), np.zeros(0, np.float32), np.zeros(0, bool)
    pixels, weight, ring = np.concatenate(picked), np.concatenate(weights), np.concatenate(rings)
    if len(pixels) > _MAX_PIXELS:
        step = -(-len(pixels) // _MAX_PIXELS)
        pixels, weight, ring = pixels[::step], weight[::step], ring[::step]
    return pixels, weight, ring


def _references() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lab of each palette colour and its shades, with the candidate each stands for, its penalty and weight."""
    refs, owner, penalty, weight = [], [], [], []
    for i, name in enumerate(_NAMES):
        rgb = np.array(COLORS[name], np.float32)
        for shade, pen, w in (
            (rgb, 0.0, 1.0),
            (rgb * (1 - _DARK), _SHADE_PENALTY, _SHADE_WEIGHT),
            (rgb + _LIGHT * (255 - rgb), _SHADE_PENALTY, _SHADE_WEIGHT),
        ):
            refs.append(np.round(shade))
            owner.append(i)
            penalty.append(pen)
            weight.append(w)
    lab = _lab(np.array(refs, np.uint8))
    return lab, np.array(owner), np.array(penalty, np.float32), np.array(weight)


_DARK = 0.5  # a shadowed/darker part of a product: its colour mixed this far toward black
_LIGHT = 0.6  # a highlight/lighter part: mixed this far toward white
_SHADE_PENALTY = 2.0  # Lab units added to the distance to a shade, so a colour's own body wins exact ties
_SHADE_WEIGHT = 0.6  # a pixel explained by a colour's shade counts this much for that colour
_REF_LAB, _REF_OWNER, _REF_PENALTY, _REF_WEIGHT = _references()


def colour_votes(frames: np.ndarray) -> dict[str, float]:
    """Each palette colour's score in [0, 1]: its (shading-aware) share of the product's pixels, averaged
    with its share of the product's outline.

    A pixel votes for the palette colour whose body, darker shade or lighter shade is nearest (Lab, a
    shade a little further by `_SHADE_PENALTY`); a shade's vote counts `_SHADE_WEIGHT`. So a red product
    with dark-red parts is red, not brown; pixels far from everything abstain. The outline counts half
    because a product's body colour wraps it, while inlays (a phone's screen, a label) sit inside.
    """
    return _votes(*foreground_pixels(frames))[0]


def _votes(
    pixels: np.ndarray, depth_weight: np.ndarray, ring: np.ndarray
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    if len(pixels) == 0:
        return dict.fromkeys(_NAMES, 0.0), np.zeros(0, int), np.zeros(0, bool)
    lab = _lab(pixels)
    dist = np.linalg.norm(lab[:, None, :] - _REF_LAB[None, :, :], axis=-1)
    ref = (dist + _REF_PENALTY[None, :]).argmin(axis=1)
    ok = dist[np.arange(len(lab)), ref] <= _MAX_DELTA_E
    owner = _REF_OWNER[ref]
    weight = np.where(ok, _REF_WEIGHT[ref], 0.0) * depth_weight
    score = np.bincount(owner, weights=weight, minlength=len(_NAMES)) / depth_weight.sum()
    if ring.any():
        on_ring = np.bincount(owner[ring], weights=weight[ring], minlength=len(_NAMES)) / depth_weight[ring].sum()
        score = 0.5 * score + 0.5 * on_ring
    body = ok & (_REF_PENALTY[ref] == 0)
    return {n: float(c) for n, c in zip(_NAMES, score, strict=True)}, owner, body


def dominant_foreground_colour(frames: np.ndarray) -> tuple[str, tuple[int, int, int]]:
    """(palette name, measured RGB) of the product's dominant colour; ("none", (0, 0, 0)) with no product.

    The RGB is the median of the product pixels nearest the winner's body colour (what the clip shows);
    the palette's own value is `kdcvg.data.creatives.COLORS[name]`.
    """
    pixels, weight, ring = foreground_pixels(frames)
    if len(pixels) == 0:
        return "none", (0, 0, 0)
    votes, owner, body = _votes(pixels, weight, ring)
    name = max(votes, key=votes.__getitem__)
    win = _NAMES.index(name)
    mine = pixels[body & (owner == win)]
    if len(mine) == 0:
        mine = pixels[owner == win] if (owner == win).any() else pixels
    rgb = np.median(mine, axis=0)
    return name, (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def colour_matches(frames: np.ndarray, colour_name: str) -> bool:
    """True when the clip's dominant product colour is the palette colour `colour_name`."""
    if colour_name not in COLORS:
        raise ValueError(f"unknown colour {colour_name!r}; valid: {', '.join(_NAMES)}")
    return dominant_foreground_colour(frames)[0] == colour_name
