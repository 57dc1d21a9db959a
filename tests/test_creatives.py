"""Procedural creatives: determinism, measurable motion per label, varied text that names the motion."""

from __future__ import annotations

import dataclasses
import re
import time

import numpy as np
import pytest

from kdcvg.data import (
    CATEGORIES,
    MOTION_VERBS,
    MOTIONS,
    PRODUCTS,
    SHAPES,
    Background,
    CreativeSpec,
    describe,
    iter_creatives,
    make_creative,
    render,
    sample_spec,
)

INNOADS = {
    "food_beverages",
    "fashion_luxury",
    "home_appliances",
    "lifestyle_leisure",
    "electronics_mobility",
    "beauty_health",
}


def plain(spec: CreativeSpec, **changes) -> CreativeSpec:
    """The spec on its plain first background colour, without text, so the product is easy to segment."""
    bg = spec.background
    return dataclasses.replace(spec, background=Background("plain", bg.color, bg.rgb, bg.rgb), overlay=None, **changes)


def masks_of(spec: CreativeSpec, frames: np.ndarray) -> np.ndarray:
    return np.abs(frames.astype(int) - np.array(spec.background.rgb)).max(axis=-1) > 40


def tracks(spec: CreativeSpec) -> dict[str, np.ndarray]:
    """Per-frame centroid, area, principal-axis angle and box of the product."""
    frames = render(spec)
    cx, cy, area, angle, bottom = [], [], [], [], []
    for mask in masks_of(spec, frames):
        ys, xs = np.nonzero(mask)
        cx.append(xs.mean())
        cy.append(ys.mean())
        area.append(len(xs))
        cov = np.cov(np.stack([xs - xs.mean(), ys - ys.mean()]))
        evals, evecs = np.linalg.eigh(cov)
        major = evecs[:, -1]
        angle.append(np.degrees(np.arctan2(major[1], major[0])) % 180.0)
        bottom.append(ys.max())
    return {k: np.array(v, float) for k, v in dict(cx=cx, cy=cy, area=area, angle=angle, bottom=bottom).items()}


def spec_for(motion: str, shape: str = "bottle", seed: int = 3, **kw) -> CreativeSpec:
    spec = sample_spec(seed, motions=[motion], categories=["food_beverages"], overlay_prob=0.0, **kw)
    return plain(spec, shape=shape)


def verbs_in(text: str, motion: str) -> set[str]:
    """The motion's verb lemmas that occur in `text` in any inflection (spins, rotating, hopped)."""
    words = re.findall(r"[a-z]+", text.lower())
    return {v for v in MOTION_VERBS[motion] if any(w.startswith(v.rstrip("e")) for w in words)}


def uses_verb(text: str, motion: str) -> bool:
    return bool(verbs_in(text, motion))


def sign_changes(x: np.ndarray) -> int:
    d = np.sign(np.diff(x))
    d = d[d != 0]
    return int((d[1:] != d[:-1]).sum())


# --- vocabulary and determinism ---------------------------------------------------------------------


def test_vocabulary():
    assert set(CATEGORIES) == INNOADS
    assert {"bottle", "box", "phone", "shoe", "watch", "cup"} <= set(SHAPES)
    assert set(MOTIONS) >= {
        "rotate",
        "zoom_in",
        "zoom_out",
        "slide_left",
        "slide_right",
        "bounce",
        "float",
        "shake",
        "orbit",
        "pulse",
    }
    for category, shapes in CATEGORIES.items():
        assert shapes and set(shapes) <= set(SHAPES)
        for shape in shapes:
            assert all(noun and short for noun, short in PRODUCTS[category][shape])
    assert set(MOTION_VERBS) == set(MOTIONS)
    assert all(len(verbs) >= 3 for verbs in MOTION_VERBS.values())


def test_same_seed_same_creative():
    a, b = make_creative(11, size=96), make_creative(11, size=96)
    assert a.spec == b.spec
    np.testing.assert_array_equal(a.frames, b.frames)
    assert (a.caption, a.selling_points) == (b.caption, b.selling_points)
    c = make_creative(12, size=96)
    assert c.spec != a.spec and not np.array_equal(c.frames, a.frames)


def test_frames_shape_and_sizes():
    c = make_creative(5)
    assert c.frames.shape == (16, 64, 64, 3) and c.frames.dtype == np.uint8
    assert (c.category, c.motion, c.product) == (c.spec.category, c.spec.motion, c.spec.product)
    assert c.spec.fps == 8
    assert render(sample_spec(5, frames=8, size=128)).shape == (8, 128, 128, 3)
    assert render(sample_spec(5, size=(96, 160))).shape == (16, 96, 160, 3)
    with pytest.raises(ValueError, match="frames"):
        sample_spec(5, frames=4)
    with pytest.raises(ValueError, match="motion"):
        sample_spec(5, motions=["moonwalk"])
    with pytest.raises(ValueError, match="category"):
        sample_spec(5, categories=["toys"])


def test_render_is_fast():
    spec = sample_spec(2, overlay_prob=1.0)
    render(spec)  # sprite cache warm-up
    best = min(_timed(render, spec) for _ in range(5))
    assert best < 0.05


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def test_product_contrasts_with_background():
    for seed in range(100, 140):
        spec = plain(sample_spec(seed))
        mask = masks_of(spec, render(spec))
        assert mask.reshape(16, -1).sum(axis=1).min() > 40, spec


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_moves_in_every_motion_inside_the_frame(shape):
    for motion in MOTIONS:
        spec = spec_for(motion, shape)
        mask = masks_of(spec, render(spec))
        area = mask.reshape(len(mask), -1).sum(axis=1)
        assert area.min() > 20, (shape, motion)
        edge = mask[:, 0].sum() + mask[:, -1].sum() + mask[:, :, 0].sum() + mask[:, :, -1].sum()
        assert edge <= 0.02 * area.sum(), (shape, motion)
        assert len({m.tobytes() for m in mask}) > 1, (shape, motion)


# --- each motion is what its name says -------------------------------------------------------------


def test_rotate_turns_in_place():
    t = tracks(spec_for("rotate"))
    assert np.ptp(t["cx"]) < 2 and np.ptp(t["cy"]) < 2
    assert np.ptp(t["area"]) < 0.2 * t["area"].mean()
    step = np.abs((np.diff(t["angle"]) + 90) % 180 - 90)  # axis angle change mod 180
    assert step.min() > 10 and step.sum() > 300


@pytest.mark.parametrize(("motion", "sign"), [("slide_left", -1), ("slide_right", 1)])
def test_slide_translates_across_the_frame(motion, sign):
    t = tracks(spec_for(motion))
    assert (sign * np.diff(t["cx"]) > 0).all()
    assert sign * (t["cx"][-1] - t["cx"][0]) > 0.4 * 64
    assert np.ptp(t["cy"]) < 2 and np.ptp(t["area"]) < 0.15 * t["area"].mean()


@pytest.mark.parametrize(("motion", "sign"), [("zoom_in", 1), ("zoom_out", -1)])
def test_zoom_changes_scale_monotonically(motion, sign):
    t = tracks(spec_for(motion))
    assert (sign * np.diff(t["area"]) > 0).all()
    ratio = t["area"][-1] / t["area"][0]
    assert (ratio if sign > 0 else 1 / ratio) > 4
    assert np.ptp(t["cx"]) < 3


def test_pulse_oscillates_scale_in_place():
    t = tracks(spec_for("pulse"))
    assert t["area"].max() / t["area"].min() > 1.8
    assert sign_changes(t["area"]) >= 3
    assert np.ptp(t["cx"]) < 2 and np.ptp(t["cy"]) < 2


def test_shake_is_fast_small_horizontal_jitter():
    t = tracks(spec_for("shake"))
    dx = np.diff(t["cx"])
    assert (np.abs(dx) >= 4).all() and (dx[1:] * dx[:-1] < 0).all()
    assert np.abs(t["cx"] - 32).max() < 0.1 * 64
    assert np.ptp(t["cy"]) < 1 and np.ptp(t["area"]) < 0.1 * t["area"].mean()


def test_float_is_a_slow_vertical_sine():
    t = tracks(spec_for("float"))
    assert np.ptp(t["cy"]) > 0.15 * 64
    assert np.abs(np.diff(t["cy"])).max() < 0.35 * np.ptp(t["cy"])
    assert sign_changes(t["cy"]) <= 2
    assert np.ptp(t["cx"]) < 1


def test_bounce_hits_the_floor_between_hops():
    t = tracks(spec_for("bounce"))
    floor = t["bottom"].max()
    contacts = np.nonzero(t["bottom"] >= floor - 0.5)[0]
    assert len(contacts) >= 2 and np.diff(contacts).min() > 2
    assert floor - t["bottom"].min() > 0.2 * 64
    assert np.ptp(t["cx"]) < 1


def test_orbit_traces_a_loop():
    t = tracks(spec_for("orbit", shape="box"))
    x, y = t["cx"] - t["cx"].mean(), t["cy"] - t["cy"].mean()
    radius = np.hypot(x, y)
    assert radius.min() > 0.15 * 64 and radius.max() < 1.25 * radius.min()
    turn = np.unwrap(np.arctan2(y, x))
    assert abs(turn[-1] - turn[0]) > 1.7 * np.pi


# --- text --------------------------------------------------------------------------------------------


def test_text_names_the_motion_and_varies_with_the_seed():
    for motion in MOTIONS:
        # Text needs no frames: describe the specs directly to keep the test fast.
        specs = [sample_spec(500 + i, motions=[motion]) for i in range(30)]
        captions, verbs_used = set(), set()
        for spec in specs:
            caption, points = describe(spec)
            assert caption[0].isupper() and caption.endswith(".")
            assert spec.product in caption and spec.color in caption
            assert uses_verb(caption, motion), caption
            assert 1 <= len(points) <= 3
            assert any(uses_verb(p, motion) for p in points), points
            captions.add(caption)
            verbs_used |= verbs_in(caption, motion)
        assert len(captions) >= 25
        assert len(verbs_used) >= 3, (motion, verbs_used)


def test_selling_points_include_offer_and_product_fragments():
    points = [p for i in range(60) for p in describe(sample_spec(i, overlay_prob=1.0))[1]]
    assert len(set(points)) > 40
    assert any("%" in p for p in points)
    # Some fragments carry no motion verb at all (product or offer only).
    assert any(not any(uses_verb(p, m) for m in MOTIONS) for p in points)


def test_describe_is_deterministic_and_mentions_overlay():
    spec = sample_spec(9, overlay_prob=1.0)
    assert describe(spec) == describe(spec)
    assert f'"{spec.overlay}"' in describe(spec)[0]


def test_all_categories_and_motions_appear():
    creatives = list(iter_creatives(12))
    assert all(c.frames.shape == (16, 64, 64, 3) for c in creatives)
    assert [c.spec.seed for c in creatives] == list(range(12))
    specs = [sample_spec(i) for i in range(120)]
    assert {s.category for s in specs} == INNOADS
    assert {s.motion for s in specs} == set(MOTIONS)


def test_overlay_is_steady_and_mostly_off_the_product_path():
    for seed in range(20):
        spec = sample_spec(seed, overlay_prob=1.0)
        with_text, without = render(spec), render(dataclasses.replace(spec, overlay=None))
        changed = np.abs(with_text.astype(int) - without).max(axis=-1) > 30
        assert changed.any()
        rows = np.nonzero(changed.any(axis=(0, 2)))[0]
        assert rows.max() < 0.25 * spec.height or rows.min() > 0.75 * spec.height, spec
        path = masks_of(spec, without).any(axis=0) if spec.background.kind == "plain" else None
        if path is not None:
            text_area = changed.any(axis=0)
            assert (text_area & path).sum() <= 0.3 * text_area.sum(), spec


def test_render_with_alpha_gives_the_same_frames_and_the_product_coverage():
    from kdcvg.data.creatives import render, render_with_alpha, sample_spec

    spec = sample_spec(77, motions=["slide_left"])
    frames, alpha = render_with_alpha(spec)
    assert np.array_equal(frames, render(spec))
    assert alpha.shape == frames.shape[:3] and alpha.dtype == np.float32
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0 + 1e-5
    covered = alpha > 0.5
    assert covered.any(axis=(1, 2)).all()  # the product is in every frame
    # It slides left: the coverage's centre moves left.
    xs = [np.nonzero(c)[1].mean() for c in covered]
    assert xs[-1] < xs[0]
