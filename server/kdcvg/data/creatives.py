"""Procedural ad creatives: a product shape moving on a clean background, with caption and selling points."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# --- vocabulary -------------------------------------------------------------------------------------

# InnoAds-32K's six domains -> shape -> (product noun, short noun) choices.
PRODUCTS: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "food_beverages": {
        "bottle": (
            ("bottle of juice", "bottle"),
            ("bottle of soda", "bottle"),
            ("bottle of water", "bottle"),
        ),
        "cup": (("cup of coffee", "cup"), ("mug of hot cocoa", "mug"), ("cup of tea", "cup")),
        "jar": (("jar of honey", "jar"), ("jar of jam", "jar")),
        "box": (("box of chocolates", "box"), ("box of cereal", "box")),
    },
    "fashion_luxury": {
        "shoe": (("leather shoe", "shoe"), ("high-top sneaker", "sneaker")),
        "bag": (("leather handbag", "handbag"), ("designer bag", "bag")),
        "watch": (("luxury watch", "watch"), ("gold wristwatch", "watch")),
        "box": (("jewelry box", "box"), ("gift box", "box")),
    },
    "home_appliances": {
        "lamp": (("desk lamp", "lamp"), ("reading lamp", "lamp")),
        "box": (("microwave oven", "microwave"), ("air purifier", "purifier")),
        "bottle": (("bottle of dish soap", "bottle"), ("spray cleaner", "cleaner")),
        "cup": (("ceramic mug", "mug"), ("coffee mug", "mug")),
        "jar": (("storage jar", "jar"),),
    },
    "lifestyle_leisure": {
        "ball": (("football", "ball"), ("beach ball", "ball")),
        "bag": (("backpack", "backpack"), ("travel bag", "bag")),
        "bottle": (("water bottle", "bottle"), ("sports bottle", "bottle")),
        "shoe": (("running shoe", "shoe"), ("sneaker", "sneaker")),
        "cup": (("travel mug", "mug"),),
    },
    "electronics_mobility": {
        "phone": (("smartphone", "phone"), ("mobile phone", "phone")),
        "headphones": (("wireless headset", "headset"), ("pair of headphones", "headphones")),
        "watch": (("smartwatch", "watch"), ("fitness watch", "watch")),
        "box": (("bluetooth speaker", "speaker"), ("power bank", "power bank")),
    },
    "beauty_health": {
        "lipstick": (("lipstick", "lipstick"), ("tube of lipstick", "lipstick")),
        "bottle": (
            ("bottle of perfume", "bottle"),
            ("bottle of shampoo", "bottle"),
            ("bottle of lotion", "bottle"),
        ),
        "jar": (("jar of face cream", "jar"), ("jar of moisturizer", "jar")),
        "box": (("box of vitamins", "box"),),
    },
}
CATEGORIES: dict[str, tuple[str, ...]] = {cat: tuple(shapes) for cat, shapes in PRODUCTS.items()}

MOTIONS: tuple[str, ...] = (
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
)

# Product colours.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 35, 40),
    "orange": (240, 130, 20),
    "yellow": (245, 205, 30),
    "green": (40, 160, 70),
    "blue": (35, 90, 210),
    "purple": (125, 50, 170),
    "pink": (240, 120, 170),
    "white": (245, 245, 245),
    "black": (25, 25, 28),
    "brown": (120, 70, 35),
    "gold": (212, 170, 50),
    "silver": (175, 180, 188),
}

# Background colours, mostly soft tints plus a few dark ones for light products.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (246, 246, 246),
    "cream": (250, 238, 210),
    "light gray": (205, 207, 212),
    "soft blue": (170, 200, 235),
    "mint": (180, 230, 200),
    "peach": (250, 208, 178),
    "lavender": (215, 200, 240),
    "navy": (24, 34, 82),
    "charcoal": (45, 46, 52),
    "teal": (18, 105, 115),
    "dark green": (24, 68, 44),
    "burgundy": (95, 20, 40),
}

OVERLAYS: tuple[str, ...] = (
    "50% OFF",
    "NEW",
    "BUY 1 GET 1",
    "FREE SHIPPING",
    "SALE",
    "30% OFF",
    "LIMITED",
    "HOT DEAL",
)

# --- text templates ---------------------------------------------------------------------------------
# Each caption template names its verb lemma so MOTION_VERBS is derived, never kept in sync by hand.

_CAPTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "rotate": (
        ("rotate", "{Subj} rotates slowly in place"),
        ("spin", "{Subj} spins around its centre"),
        ("turn", "{Subj} turns all the way around on the spot"),
        ("twirl", "{Subj} twirls on the spot"),
    ),
    "zoom_in": (
        ("zoom", "The camera zooms in on {subj}"),
        ("push", "The camera pushes in toward {subj}"),
        ("grow", "{Subj} grows closer until it fills the frame"),
        ("zoom", "{Subj} zooms into a close-up"),
    ),
    "zoom_out": (
        ("zoom", "The camera zooms out from {subj}"),
        ("pull", "The camera pulls back from {subj}"),
        ("shrink", "{Subj} shrinks into the distance"),
        ("recede", "{Subj} recedes from the viewer"),
    ),
    "slide_left": (
        ("slide", "{Subj} slides from right to left"),
        ("glide", "{Subj} glides to the left"),
        ("sweep", "{Subj} sweeps left across the frame"),
        ("slide", "{Subj} slides across the screen to the left"),
    ),
    "slide_right": (
        ("slide", "{Subj} slides from left to right"),
        ("glide", "{Subj} glides to the right"),
        ("sweep", "{Subj} sweeps right across the frame"),
        ("slide", "{Subj} slides across the screen to the right"),
    ),
    "bounce": (
        ("bounce", "{Subj} bounces up and down on the floor"),
        ("hop", "{Subj} hops up and down in place"),
        ("jump", "{Subj} jumps off the ground twice"),
        ("bounce", "{Subj} bounces lightly on the ground"),
    ),
    "float": (
        ("float", "{Subj} floats gently up and down"),
        ("hover", "{Subj} hovers in mid-air"),
        ("drift", "{Subj} drifts slowly up and down"),
        ("float", "{Subj} floats weightlessly in the air"),
    ),
    "shake": (
        ("shake", "{Subj} shakes rapidly from side to side"),
        ("jiggle", "{Subj} jiggles left and right"),
        ("vibrate", "{Subj} vibrates quickly in place"),
        ("wobble", "{Subj} wobbles from side to side"),
    ),
    "orbit": (
        ("circle", "{Subj} circles around the centre of the frame"),
        ("orbit", "{Subj} orbits in a wide path"),
        ("loop", "{Subj} loops around the frame"),
        ("orbit", "{Subj} orbits the centre of the screen"),
    ),
    "pulse": (
        ("pulse", "{Subj} pulses in and out"),
        ("throb", "{Subj} throbs like a heartbeat"),
        ("beat", "{Subj} beats to a steady rhythm"),
        ("swell", "{Subj} swells and settles again and again"),
    ),
}

# Terse advertiser fragments that name the motion with a verb ({short} is the product's short noun).
_MOTION_POINTS: dict[str, tuple[tuple[str, str], ...]] = {
    "rotate": (
        ("spin", "spins to show every angle"),
        ("turn", "turns to reveal every side"),
        ("rotate", "rotates for a full view of the {short}"),
        ("twirl", "twirls to show off every detail"),
    ),
    "zoom_in": (
        ("zoom", "zooms in on the details"),
        ("push", "push in for a closer look"),
        ("grow", "grows closer so you see every detail"),
        ("zoom", "zoom in on the {short}"),
    ),
    "zoom_out": (
        ("zoom", "zooms out to show the whole {short}"),
        ("pull", "pulls back for the full picture"),
        ("shrink", "shrinks away to reveal the full look"),
        ("recede", "recedes for the big picture"),
    ),
    "slide_left": (
        ("slide", "slides left into the spotlight"),
        ("glide", "glides smoothly to the left"),
        ("sweep", "sweeps left across the screen"),
    ),
    "slide_right": (
        ("slide", "slides right into the spotlight"),
        ("glide", "glides smoothly to the right"),
        ("sweep", "sweeps right across the screen"),
    ),
    "bounce": (
        ("bounce", "bounces with energy"),
        ("hop", "hops with joy"),
        ("jump", "jumps right off the floor"),
    ),
    "float": (
        ("float", "floats light as air"),
        ("hover", "hovers like magic"),
        ("drift", "drifts gently in the air"),
    ),
    "shake": (
        ("shake", "shakes things up"),
        ("jiggle", "jiggles with excitement"),
        ("vibrate", "vibrates with energy"),
        ("wobble", "wobbles to grab attention"),
    ),
    "orbit": (
        ("circle", "circles the screen in style"),
        ("orbit", "orbits into view"),
        ("loop", "loops around to catch the eye"),
    ),
    "pulse": (
        ("pulse", "pulses with energy"),
        ("throb", "throbs with excitement"),
        ("beat", "beats like a heart"),
        ("swell", "swells to grab attention"),
    ),
}

# Motion-flavoured fragments with no verb.
_MOTION_NOUN_POINTS: dict[str, tuple[str, ...]] = {
    "rotate": ("360° look at the {short}", "every angle of the {short}"),
    "zoom_in": ("close-up detail", "a closer look at the {short}"),
    "zoom_out": ("the full picture", "the whole {short} in view"),
    "slide_left": ("a smooth side reveal",),
    "slide_right": ("a smooth side reveal",),
    "bounce": ("playful energy",),
    "float": ("a weightless feel",),
    "shake": ("eye-catching energy",),
    "orbit": ("an all-around showcase",),
    "pulse": ("a heartbeat rhythm",),
}

_CATEGORY_POINTS: dict[str, tuple[str, ...]] = {
    "food_beverages": (
        "rich, bold flavour",
        "no added sugar",
        "made with natural ingredients",
        "a treat any time",
    ),
    "fashion_luxury": ("crafted from fine materials", "timeless elegance", "limited edition design"),
    "home_appliances": ("saves energy every day", "quiet and efficient", "easy to clean", "built to last"),
    "lifestyle_leisure": ("ready for every adventure", "lightweight and durable", "fun for the whole family"),
    "electronics_mobility": ("all-day battery life", "lightning-fast performance", "sleek and smart"),
    "beauty_health": ("gentle on sensitive skin", "long-lasting results", "dermatologist tested"),
}

_OFFER_POINTS: dict[str, tuple[str, ...]] = {
    "50% OFF": ("50% off today", "half price this week"),
    "NEW": ("new arrival", "brand new this season"),
    "BUY 1 GET 1": ("buy one, get one free", "two for the price of one"),
    "FREE SHIPPING": ("free shipping on every order", "free delivery"),
    "SALE": ("on sale now", "big weekend sale"),
    "30% OFF": ("30% off for a limited time", "save 30% today"),
    "LIMITED": ("limited stock", "while supplies last"),
    "HOT DEAL": ("today's hot deal", "deal of the day"),
}


def _verbs(motion: str) -> tuple[str, ...]:
    seen = [lemma for lemma, _ in _CAPTIONS[motion]] + [lemma for lemma, _ in _MOTION_POINTS[motion]]
    return tuple(dict.fromkeys(seen))


MOTION_VERBS: dict[str, tuple[str, ...]] = {m: _verbs(m) for m in MOTIONS}

# --- specs ------------------------------------------------------------------------------------------

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Background:
    """A plain colour (rgb == rgb_end) or a gentle vertical gradient from rgb to rgb_end."""

    kind: str  # "plain" | "gradient"
    color: str
    rgb: RGB
    rgb_end: RGB

    def describe(self) -> str:
        return f"{self.color} gradient" if self.kind == "gradient" else self.color


@dataclass(frozen=True)
class CreativeSpec:
    """Everything that determines a creative's frames and text."""

    seed: int
    category: str
    shape: str
    product: str
    short: str
    color: str
    rgb: RGB
    background: Background
    motion: str
    overlay: str | None = None
    frames: int = 16
    height: int = 64
    width: int = 64
    fps: float = 8.0

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"unknown category {self.category!r}; valid: {', '.join(CATEGORIES)}")
        if self.shape not in _DRAWERS:
            raise ValueError(f"unknown shape {self.shape!r}; valid: {', '.join(SHAPES)}")
        if self.motion not in MOTIONS:
            raise ValueError(f"unknown motion {self.motion!r}; valid: {', '.join(MOTIONS)}")
        if self.frames < 8:
            raise ValueError(f"frames must be >= 8, got {self.frames}")
        if min(self.height, self.width) < 32:
            raise ValueError(f"height and width must be >= 32, got {self.height}x{self.width}")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")


@dataclass
class Creative:
    """A rendered clip with its text."""

    spec: CreativeSpec
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    caption: str
    selling_points: list[str]
    category: str
    motion: str
    product: str


def _mix(rgb: RGB, target: float, amount: float) -> RGB:
    """`rgb` moved `amount` of the way toward the grey level `target`."""
    r, g, b = (int(round(c + amount * (target - c))) for c in rgb)
    return (r, g, b)


def _luma(rgb: Sequence[float]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _contrasts(product: RGB, background: RGB) -> bool:
    # Needs a clear luma step or a large colour step so the product separates from the background.
    dist = math.dist(product, background)
    return dist >= 130 and (abs(_luma(product) - _luma(background)) >= 45 or dist >= 200)


def _sample_background(rng: np.random.Generator, product: RGB) -> Background:
    names = [n for n, bg in BACKGROUNDS.items() if _contrasts(product, bg)]
    name = names[int(rng.integers(len(names)))]
    rgb = BACKGROUNDS[name]
    if rng.random() < 0.5:
        return Background("plain", name, rgb, rgb)
    # A gentle gradient: the far end is the same hue pushed 25% toward white (dark) or black (light).
    target = 255.0 if _luma(rgb) < 128 else 0.0
    end = _mix(rgb, target, 0.25)
    if not _contrasts(product, end):
        return Background("plain", name, rgb, rgb)
    return Background("gradient", name, rgb, end)


def sample_spec(
    seed: int,
    *,
    motions: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    frames: int = 16,
    size: int | tuple[int, int] = 64,
    overlay_prob: float = 0.5,
    fps: float = 8.0,
) -> CreativeSpec:
    """Draw a spec from `seed`; `motions`/`categories` restrict the choices, `size` is side or (h, w)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    motions = tuple(motions) if motions is not None else MOTIONS
    categories = tuple(categories) if categories is not None else tuple(CATEGORIES)
    for m in motions:
        if m not in MOTIONS:
            raise ValueError(f"unknown motion {m!r}; valid: {', '.join(MOTIONS)}")
    for c in categories:
        if c not in CATEGORIES:
            raise ValueError(f"unknown category {c!r}; valid: {', '.join(CATEGORIES)}")
    if not motions or not categories:
        raise ValueError("motions and categories must not be empty")
    height, width = (size, size) if isinstance(size, int) else size

    rng = np.random.default_rng([seed, 1])
    category = categories[int(rng.integers(len(categories)))]
    shapes = CATEGORIES[category]
    shape = shapes[int(rng.integers(len(shapes)))]
    nouns = PRODUCTS[category][shape]
    product, short = nouns[int(rng.integers(len(nouns)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    background = _sample_background(rng, COLORS[color])
    motion = motions[int(rng.integers(len(motions)))]
    overlay = OVERLAYS[int(rng.integers(len(OVERLAYS)))] if rng.random() < overlay_prob else None
    return CreativeSpec(
        seed=seed,
        category=category,
        shape=shape,
        product=product,
        short=short,
        color=color,
        rgb=COLORS[color],
        background=background,
        motion=motion,
        overlay=overlay,
        frames=frames,
        height=height,
        width=width,
        fps=fps,
    )


# --- product sprites --------------------------------------------------------------------------------

_CANVAS = 256  # sprites are drawn large once, then scaled down with area averaging (anti-aliased edges)


class _Painter:
    """Draws on a colour canvas and its alpha mask at once."""

    def __init__(self, body: RGB) -> None:
        self.rgb = np.zeros((_CANVAS, _CANVAS, 3), np.uint8)
        self.alpha = np.zeros((_CANVAS, _CANVAS), np.uint8)
        self.body = body
        self.dark = _shade(body, -1)
        self.light = _shade(body, +1)

    def poly(self, pts: Sequence[tuple[int, int]], color: RGB) -> None:
        arr = np.array(pts, np.int32)
        cv2.fillPoly(self.rgb, [arr], color)
        cv2.fillPoly(self.alpha, [arr], 255)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: RGB) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], color)

    def circle(self, cx: int, cy: int, r: int, color: RGB, thickness: int = -1) -> None:
        cv2.circle(self.rgb, (cx, cy), r, color, thickness)
        cv2.circle(self.alpha, (cx, cy), r, 255, thickness)

    def ellipse(
        self, cx: int, cy: int, ax: int, ay: int, start: int, end: int, color: RGB, thickness: int = -1
    ) -> None:
        cv2.ellipse(self.rgb, (cx, cy), (ax, ay), 0, start, end, color, thickness)
        cv2.ellipse(self.alpha, (cx, cy), (ax, ay), 0, start, end, 255, thickness)

    def line(self, p0: tuple[int, int], p1: tuple[int, int], color: RGB, thickness: int) -> None:
        cv2.line(self.rgb, p0, p1, color, thickness)
        cv2.line(self.alpha, p0, p1, 255, thickness)


def _shade(rgb: RGB, direction: int) -> RGB:
    """A feature colour: darker (-1) or lighter (+1), flipped when the body is too dark/light for it."""
    lum = _luma(rgb)
    if direction < 0 and lum < 70:
        direction = 1
    if direction > 0 and lum > 200:
        direction = -1
    if direction < 0:
        return _mix(rgb, 0.0, 0.5)
    return _mix(rgb, 255.0, 0.6)


def _screen(body: RGB) -> RGB:
    return (30, 32, 40) if _luma(body) > 80 else (90, 140, 200)


def _draw_bottle(p: _Painter) -> None:
    p.rect(96, 100, 160, 214, p.body)
    p.circle(106, 212, 10, p.body)
    p.circle(150, 212, 10, p.body)
    p.rect(106, 212, 150, 222, p.body)
    p.poly([(96, 101), (116, 70), (140, 70), (160, 101)], p.body)
    p.rect(116, 50, 140, 71, p.body)
    p.rect(112, 30, 144, 52, p.dark)
    p.rect(96, 140, 160, 180, p.light)
    p.rect(104, 110, 112, 200, p.light)  # highlight on one side only


def _draw_box(p: _Painter) -> None:
    p.rect(64, 100, 192, 210, p.body)
    p.rect(58, 84, 198, 112, p.dark)
    p.rect(120, 84, 136, 210, p.light)
    p.ellipse(108, 72, 22, 12, 0, 360, p.light)
    p.ellipse(148, 72, 22, 12, 0, 360, p.light)
    p.rect(160, 180, 184, 200, p.dark)  # tag in one corner


def _draw_phone(p: _Painter) -> None:
    p.rect(88, 48, 168, 208, p.body)
    for cx, cy in ((98, 48), (158, 48), (98, 208), (158, 208)):
        p.circle(cx, cy, 10, p.body)
    p.rect(98, 38, 158, 218, p.body)
    p.rect(96, 62, 160, 194, _screen(p.body))
    p.circle(128, 50, 5, p.dark)
    p.rect(112, 204, 144, 208, p.light)
    p.rect(168, 80, 174, 112, p.dark)  # side button


def _draw_shoe(p: _Painter) -> None:
    p.poly([(44, 190), (44, 120), (90, 110), (120, 140), (172, 150), (212, 166), (216, 190)], p.body)
    p.rect(40, 190, 218, 208, p.dark)
    p.poly([(180, 155), (212, 166), (216, 190), (180, 190)], p.light)  # toe cap
    for i in range(3):
        x = 98 + 14 * i
        p.line((x, 124 + 5 * i), (x + 12, 148 + 2 * i), p.light, 5)


def _draw_watch(p: _Painter) -> None:
    p.rect(104, 18, 152, 238, p.dark)
    p.circle(128, 128, 58, p.body)
    p.circle(128, 128, 45, p.light)
    p.line((128, 128), (156, 110), p.dark, 8)  # hour hand at two o'clock
    p.line((128, 128), (128, 92), p.dark, 5)
    p.rect(184, 118, 196, 138, p.body)  # crown


def _draw_cup(p: _Painter) -> None:
    p.circle(172, 140, 28, p.body, thickness=14)
    p.rect(70, 80, 170, 196, p.body)
    p.ellipse(120, 196, 50, 14, 0, 180, p.body)
    p.ellipse(120, 82, 50, 10, 0, 360, p.dark)
    p.rect(70, 120, 170, 136, p.light)


def _draw_lipstick(p: _Painter) -> None:
    p.rect(100, 132, 156, 226, p.dark)
    p.rect(104, 112, 152, 132, p.light)
    p.poly([(108, 112), (108, 62), (148, 36), (148, 112)], p.body)


def _draw_jar(p: _Painter) -> None:
    p.rect(68, 100, 188, 200, p.body)
    p.ellipse(128, 200, 60, 14, 0, 180, p.body)
    p.rect(76, 68, 180, 100, p.dark)
    for x in range(86, 176, 14):
        p.rect(x, 70, x + 4, 98, p.light)
    p.rect(80, 128, 176, 182, p.light)
    p.circle(102, 155, 12, p.body)  # emblem off-centre


def _draw_bag(p: _Painter) -> None:
    p.ellipse(128, 112, 46, 50, 180, 360, p.dark, thickness=12)
    p.poly([(60, 110), (196, 110), (214, 212), (42, 212)], p.body)
    p.poly([(60, 110), (196, 110), (182, 152), (74, 152)], p.dark)
    p.circle(128, 152, 9, p.light)
    p.rect(170, 180, 200, 196, p.light)  # brand patch on one side


def _draw_headphones(p: _Painter) -> None:
    p.ellipse(128, 138, 82, 90, 180, 360, p.body, thickness=16)
    p.rect(34, 124, 74, 204, p.dark)
    p.rect(182, 124, 222, 204, p.dark)
    p.rect(74, 136, 84, 192, p.light)
    p.rect(172, 136, 182, 192, p.light)
    p.circle(202, 212, 8, p.body)  # mic on one side


def _draw_lamp(p: _Painter) -> None:
    p.ellipse(128, 214, 52, 12, 0, 360, p.dark)
    p.line((128, 210), (98, 164), p.dark, 9)
    p.line((98, 164), (132, 116), p.dark, 9)
    p.poly([(104, 44), (166, 62), (190, 124), (96, 108)], p.body)
    p.circle(144, 118, 10, (250, 240, 180))


def _draw_ball(p: _Painter) -> None:
    p.circle(128, 128, 84, p.body)
    p.ellipse(128, 128, 84, 30, 0, 360, p.light, thickness=12)
    p.poly([(96, 70), (118, 64), (126, 84), (108, 98), (90, 88)], p.dark)


_DRAWERS: dict[str, Callable[[_Painter], None]] = {
    "bottle": _draw_bottle,
    "box": _draw_box,
    "phone": _draw_phone,
    "shoe": _draw_shoe,
    "watch": _draw_watch,
    "cup": _draw_cup,
    "lipstick": _draw_lipstick,
    "jar": _draw_jar,
    "bag": _draw_bag,
    "headphones": _draw_headphones,
    "lamp": _draw_lamp,
    "ball": _draw_ball,
}
SHAPES: tuple[str, ...] = tuple(_DRAWERS)


@dataclass(frozen=True)
class _Sprite:
    premult: np.ndarray  # (h, w, 4) float32: rgb * alpha, alpha in [0, 1]
    pivot: tuple[float, float]  # the mask centroid (x, y): the product's centre for rotation
    bottom: float  # lowest mask row below the pivot, for floor contact
    extent: float  # larger side of the mask bounding box


@functools.lru_cache(maxsize=256)
def _sprite(shape: str, rgb: RGB) -> _Sprite:
    painter = _Painter(rgb)
    _DRAWERS[shape](painter)
    ys, xs = np.nonzero(painter.alpha)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    alpha = painter.alpha[y0:y1, x0:x1].astype(np.float32) / 255.0
    rgbf = painter.rgb[y0:y1, x0:x1].astype(np.float32)
    premult = np.dstack([rgbf * alpha[..., None], alpha])
    premult.setflags(write=False)
    m = cv2.moments(painter.alpha[y0:y1, x0:x1], binaryImage=True)
    pivot = (m["m10"] / m["m00"], m["m01"] / m["m00"])
    return _Sprite(premult, pivot, float(y1 - y0) - pivot[1], float(max(x1 - x0, y1 - y0)))


# --- motion paths -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pose:
    cx: float  # pivot position, fraction of width
    cy: float  # pivot position, fraction of height; ignored when floor is set
    scale: float  # product's larger side as a fraction of min(H, W)
    angle: float = 0.0  # degrees, counter-clockwise on screen
    lift: float | None = None  # bounce: height of the product's bottom above the floor, fraction of H


_FLOOR = 0.9  # bounce floor, fraction of height


def _poses(motion: str, n: int) -> list[_Pose]:
    lin = np.linspace(0.0, 1.0, n)  # endpoints included: monotonic motions reach both extremes
    cyc = np.arange(n) / n  # periodic motions loop without repeating the first frame
    if motion == "rotate":
        return [_Pose(0.5, 0.5, 0.48, angle=360.0 * u) for u in cyc]
    if motion == "zoom_in":
        return [_Pose(0.5, 0.5, 0.25 * (2.6**u)) for u in lin]
    if motion == "zoom_out":
        return [_Pose(0.5, 0.5, 0.65 * (2.6**-u)) for u in lin]
    if motion == "slide_left":
        return [_Pose(0.76 - 0.52 * u, 0.5, 0.4) for u in lin]
    if motion == "slide_right":
        return [_Pose(0.24 + 0.52 * u, 0.5, 0.4) for u in lin]
    if motion == "bounce":
        # Two parabolic hops (constant gravity) with floor contact at the start, middle and end.
        hop = max(4, n // 2)
        phase = (np.arange(n) % hop) / hop
        return [_Pose(0.5, 0.0, 0.36, lift=0.32 * 4.0 * p * (1.0 - p)) for p in phase]
    if motion == "float":
        return [_Pose(0.5, 0.5 - 0.1 * math.sin(2 * math.pi * u), 0.42) for u in cyc]
    if motion == "shake":
        amp = [0.045, 0.06, 0.05, 0.055]
        return [_Pose(0.5 + (-1) ** i * amp[i % 4], 0.5, 0.45) for i in range(n)]
    if motion == "orbit":
        return [_Pose(0.5 + 0.2 * math.cos(2 * math.pi * u), 0.5 + 0.2 * math.sin(2 * math.pi * u), 0.32) for u in cyc]
    if motion == "pulse":
        return [_Pose(0.5, 0.5, 0.42 * (1.0 + 0.22 * math.sin(4 * math.pi * u))) for u in cyc]
    raise ValueError(f"unknown motion {motion!r}")


# --- rendering --------------------------------------------------------------------------------------


def _background(bg: Background, height: int, width: int) -> np.ndarray:
    top = np.array(bg.rgb, np.float32)
    end = np.array(bg.rgb_end, np.float32)
    w = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top + w * (end - top), (height, width, 3)).copy()


def _place(sprite: _Sprite, pose: _Pose, height: int, width: int) -> np.ndarray:
    """The sprite warped into the frame: (H, W, 4) premultiplied float32."""
    k = pose.scale * min(height, width) / sprite.extent
    h, w = sprite.premult.shape[:2]
    rw, rh = max(1, round(w * k)), max(1, round(h * k))
    small = cv2.resize(sprite.premult, (rw, rh), interpolation=cv2.INTER_AREA)
    px, py = sprite.pivot[0] * rw / w, sprite.pivot[1] * rh / h
    cx = pose.cx * width
    if pose.lift is None:
        cy = pose.cy * height
    else:
        cy = (_FLOOR - pose.lift) * height - sprite.bottom * rh / h
    m = cv2.getRotationMatrix2D((px, py), pose.angle, 1.0)
    m[0, 2] += cx - px
    m[1, 2] += cy - py
    return cv2.warpAffine(small, m, (width, height), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0, 0))


def _text_color(bg: Background) -> RGB:
    return (250, 250, 250) if _luma(bg.rgb) < 128 and _luma(bg.rgb_end) < 150 else (20, 20, 24)


def _draw_overlay(frames: np.ndarray, text: str, coverage: np.ndarray, color: RGB) -> None:
    """Steady text in the top or bottom band, whichever the product's path covers less."""
    _, height, width, _ = frames.shape
    face = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, face, 1.0, 1)
    scale = min(0.11 * height / th, 0.9 * width / tw)
    thickness = max(1, round(scale * 1.6))
    (tw, th), base = cv2.getTextSize(text, face, scale, thickness)
    margin = max(2, round(0.03 * height))
    x = (width - tw) // 2

    def overlap(baseline: int) -> float:
        return float(coverage[max(0, baseline - th) : baseline + base, x : x + tw].sum())

    y = min((margin + th, height - margin - base), key=overlap)  # top band first on a tie
    for frame in frames:
        cv2.putText(frame, text, (x, y), face, scale, color, thickness, cv2.LINE_AA)


def render(spec: CreativeSpec) -> np.ndarray:
    """The clip of `spec`: (frames, height, width, 3) uint8 RGB."""
    return render_with_alpha(spec)[0]


def render_with_alpha(spec: CreativeSpec) -> tuple[np.ndarray, np.ndarray]:
    """The clip of `spec` and the product's coverage in each frame: (frames, H, W, 3) uint8 RGB and
    (frames, H, W) float32 alpha in [0, 1] (the overlay text is not product)."""
    sprite = _sprite(spec.shape, spec.rgb)
    bg = _background(spec.background, spec.height, spec.width)
    out = np.empty((spec.frames, spec.height, spec.width, 3), np.uint8)
    alphas = np.empty((spec.frames, spec.height, spec.width), np.float32)
    coverage = np.zeros((spec.height, spec.width), np.float32)
    for i, pose in enumerate(_poses(spec.motion, spec.frames)):
        layer = _place(sprite, pose, spec.height, spec.width)
        alpha = layer[..., 3:]
        alphas[i] = alpha[..., 0]
        np.maximum(coverage, alpha[..., 0], out=coverage)
        frame = bg * (1.0 - alpha) + layer[..., :3]
        out[i] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    if spec.overlay:
        _draw_overlay(out, spec.overlay, coverage, _text_color(spec.background))
    return out, alphas


# --- text -------------------------------------------------------------------------------------------


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def describe(spec: CreativeSpec) -> tuple[str, list[str]]:
    """Caption and 1-3 selling points for `spec`; wording varies with the seed."""
    rng = np.random.default_rng([spec.seed, 2])

    def pick(options: Sequence[str]) -> str:
        return options[int(rng.integers(len(options)))]

    subj = f"{_article(spec.color)} {spec.color} {spec.product}"
    _, template = _CAPTIONS[spec.motion][int(rng.integers(len(_CAPTIONS[spec.motion])))]
    clause = template.format(subj=subj, Subj=subj[0].upper() + subj[1:])
    bg = spec.background.describe()
    where = pick((f"on {_article(bg)} {bg} background", f"against {_article(bg)} {bg} backdrop"))
    caption = f"{clause} {where}"
    if spec.overlay:
        caption += pick((f', with "{spec.overlay}" on screen', f', with the words "{spec.overlay}" shown'))
    caption += "."

    _, motion_point = _MOTION_POINTS[spec.motion][int(rng.integers(len(_MOTION_POINTS[spec.motion])))]
    points = [motion_point.format(short=spec.short)]
    if rng.random() < 0.6:
        points.append(pick(_CATEGORY_POINTS[spec.category]))
    if spec.overlay:
        points.append(pick(_OFFER_POINTS[spec.overlay]))
    elif rng.random() < 0.3:
        points.append(pick(_MOTION_NOUN_POINTS[spec.motion]).format(short=spec.short))
    order = rng.permutation(len(points))
    return caption, [points[i] for i in order]


def make_creative(seed: int, **kw: Any) -> Creative:
    """Sample, render and describe one creative; `kw` goes to `sample_spec`."""
    spec = sample_spec(seed, **kw)
    caption, points = describe(spec)
    return Creative(
        spec=spec,
        frames=render(spec),
        caption=caption,
        selling_points=points,
        category=spec.category,
        motion=spec.motion,
        product=spec.product,
    )


def iter_creatives(n: int, seed: int = 0, **kw: Any) -> Iterator[Creative]:
    """`n` creatives from consecutive seeds starting at `seed`."""
    for i in range(n):
        yield make_creative(seed + i, **kw)
