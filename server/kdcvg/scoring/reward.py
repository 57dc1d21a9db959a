"""A CleveReward-style reward model: how well a clip follows a text, as a cosine in a shared 256-d space.

Method (CleveReward, paper 004 in the project's papers): a video embedding and a text embedding are each
passed through their own projection into a shared 256-d space and the reward is their cosine similarity;
the model is trained on (text, chosen clip, rejected clip) triplets with the Bradley-Terry loss
``-log sigmoid(r_chosen - r_rejected)``. Here the cosine difference is multiplied by a learned scale
(``logit_scale``, as in CLIP) inside the loss only: a cosine difference lies in [-2, 2], too narrow a range
for the sigmoid to separate pairs confidently. The scale plays no part in scoring.

- Text side: the project's frozen all-MiniLM-L6-v2 sentence vector (384-d, `kdcvg.text.encoder`) and a
  trainable linear projection 384 -> 256.
- Video side: `VideoEncoder`, a small (2+1)D conv net trained from scratch. Each of the 16 frames (64x64)
  enters with its RGB and its difference to the previous frame (so the first layer already sees motion)
  through a 4x4 patchify conv with a learned per-position bias (16x16); two stride-2 spatial convs bring
  it to 4x4, and each of the three levels ends in a residual temporal conv (kernel 3 over frames). The
  flattened 4x4 map of each frame becomes a token, two transformer layers over the 16 tokens (learned
  positions) read the trajectory; their mean and max over time, with the stem's features pooled over the
  whole clip (mean and max: the clip's look, colour above all), go through a linear layer to the 256-d
  embedding.

Clips of any length (>= 2 frames) and size (>= 8 px) are brought to the model's input by `preprocess`:
16 frames sampled uniformly over the clip (nearest frame; a clip shorter than 16 frames repeats frames,
which the model may read as a stutter), each resized to 64x64 (bilinear, antialiased).

The second half of the module builds the preference pairs the model is trained and evaluated on, from the
procedural creatives of `kdcvg.data.creatives`: for a text of a clip, the clip itself is chosen, and the
rejected clip is (``motion``) the same product with another motion, (``product``) the same motion with
another colour and/or shape, or (``corrupt``) the clip itself corrupted (noise, blur, shuffled, frozen or
dropped frames, wrong colours).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdcvg.data import creatives as cr
from kdcvg.scoring.base import MetricResult, check_clip

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights" / "reward-tiny"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
MIN_FRAMES, MIN_SIDE = 2, 8


@dataclass(frozen=True)
class RewardConfig:
    """Shapes of a `RewardModel`; written to ``config.json`` next to the weights."""

    frames: int = 16
    size: int = 64
    stem_stride: int = 4  # the first conv is a patchify: kernel = stride
    channels: tuple[int, ...] = (48, 96, 160)
    head_channels: int = 32
    token_dim: int = 192
    temporal_layers: int = 2
    heads: int = 4
    text_dim: int = 384
    embed_dim: int = 256

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RewardConfig:
        """The config from `to_dict`'s output; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "channels" in kw:
            kw["channels"] = tuple(kw["channels"])
        return cls(**kw)


# ---------------------------------------------------------------------------------------------------------
# preprocessing


def preprocess(frames: np.ndarray | torch.Tensor, frames_out: int = 16, size: int = 64) -> torch.Tensor:
    """Clip(s) of uint8 RGB ``(T, H, W, 3)`` or ``(B, T, H, W, 3)`` -> uint8 ``(B, frames_out, 3, size, size)``.

    Frames are sampled uniformly over the clip (nearest index, so a short clip repeats frames) and resized
    with antialiased bilinear interpolation when the size differs. Raises ``ValueError`` on anything else
    than uint8 RGB with at least `MIN_FRAMES` frames and sides of at least `MIN_SIDE` pixels.
    """
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        # A read-only array (a memory map, a broadcast view) is copied: torch tensors must be writable.
        x = torch.from_numpy(frames if frames.flags.writeable and frames.flags.c_contiguous else frames.copy())
    elif isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        x = frames.detach().cpu()
    else:
        raise ValueError(f"expected a numpy array or torch tensor of frames, got {type(frames).__name__}")
    if x.ndim == 4:
        x = x.unsqueeze(0)
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3) or (B, T, H, W, 3), got {tuple(x.shape)}")
    b, t, h, w, _ = x.shape
    if b == 0:
        raise ValueError("the batch has no clips")
    if t < MIN_FRAMES:
        raise ValueError(f"a clip needs at least {MIN_FRAMES} frames, got {t}")
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"frames must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {h}x{w}")
    if t != frames_out:
        idx = torch.linspace(0, t - 1, frames_out).round().long()
        x = x[:, idx]
    x = x.permute(0, 1, 4, 2, 3)  # (B, T, 3, H, W)
    if (h, w) != (size, size):
        flat = x.reshape(b * frames_out, 3, h, w).float()
        flat = F.interpolate(flat, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = flat.round().clamp(0, 255).to(torch.uint8).reshape(b, frames_out, 3, size, size)
    return x.contiguous()


# ---------------------------------------------------------------------------------------------------------
# the model


class _Temporal(nn.Module):
    """A residual conv over frames (kernel 3), zero-initialised so that it starts as the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, (3, 1), padding=(1, 0))
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """``(B*T, C, H, W) -> (B*T, C, H, W)``."""
        bt, c, h, w = x.shape
        # (B, C, T, H*W): a (3, 1) kernel convolves over frames only.
        y = self.conv(x.reshape(bt // t, t, c, h * w).transpose(1, 2))
        return F.gelu(x + y.transpose(1, 2).reshape(bt, c, h, w))


class _Stage(nn.Module):
    """A stride-2 3x3 spatial conv with batch norm, then a residual temporal conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.temporal = _Temporal(cout)

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """``(B*T, C, H, W) -> (B*T, C', H/2, W/2)``."""
        return self.temporal(F.gelu(self.bn(self.spatial(x))), t)


class VideoEncoder(nn.Module):
    """(2+1)D conv net + temporal transformer: uint8 clips ``(B, T, 3, S, S)`` -> ``(B, embed_dim)``."""

    def __init__(self, config: RewardConfig) -> None:
        super().__init__()
        self.config = config
        s, p, c0 = config.size, config.stem_stride, config.channels[0]
        if s % (p * 2 ** (len(config.channels) - 1)):
            raise ValueError(f"size {s} does not divide into the stem stride and the stages")
        # Patchify stem over RGB and over the frame difference. A conv is linear, so the difference's
        # response is the difference of the frames' responses: both come out of one conv on the frames.
        self.stem = nn.Conv2d(3, 2 * c0, p, stride=p, bias=False)
        self.stem_pos = nn.Parameter(torch.zeros(1, c0, s // p, s // p))  # where a patch is (CoordConv-like)
        self.stem_bn = nn.BatchNorm2d(c0)
        self.stem_temporal = _Temporal(c0)
        self.stages = nn.ModuleList(
            _Stage(a, b) for a, b in zip(config.channels[:-1], config.channels[1:], strict=True)
        )
        side = s // (p * 2 ** (len(config.channels) - 1))
        self.head = nn.Sequential(
            nn.Conv2d(config.channels[-1], config.head_channels, 1, bias=False),
            nn.BatchNorm2d(config.head_channels),
            nn.GELU(),
        )
        self.token = nn.Linear(config.head_channels * side * side, config.token_dim)
        self.pos = nn.Parameter(torch.zeros(1, config.frames, config.token_dim))
        layer = nn.TransformerEncoderLayer(
            config.token_dim,
            config.heads,
            dim_feedforward=2 * config.token_dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.temporal = nn.TransformerEncoder(layer, config.temporal_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.token_dim)
        # Appearance skip: the stem's features pooled over space and time (mean and max) go straight to the
        # output, so colour, which the product changes in most tests, does not have to survive every stage.
        self.out = nn.Linear(2 * config.token_dim + 2 * config.channels[0], config.embed_dim)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 or float (0..255) ``(B, T, 3, S, S)`` with T, S from the config -> ``(B, embed_dim)``."""
        b, t = clips.shape[:2]
        c0 = self.config.channels[0]
        x = clips.flatten(0, 1).float().mul_(2.0 / 255.0).sub_(1.0)
        y = self.stem(x)
        rgb, d = y[:, :c0], y[:, c0:].unflatten(0, (b, t))
        diff = torch.cat([torch.zeros_like(d[:, :1]), d[:, 1:] - d[:, :-1]], dim=1).flatten(0, 1)
        x = F.gelu(self.stem_bn(rgb + 2.0 * diff + self.stem_pos))
        look = x.unflatten(0, (b, t)).transpose(1, 2).flatten(2)  # (B, C0, T*H*W)
        look = torch.cat([look.mean(-1), look.amax(-1)], dim=-1)
        x = self.stem_temporal(x, t)
        for stage in self.stages:
            x = stage(x, t)
        tokens = self.token(self.head(x).flatten(1)).reshape(b, t, -1) + self.pos
        h = self.norm(self.temporal(tokens))
        return self.out(torch.cat([h.mean(1), h.amax(1), look], dim=-1))


class RewardModel(nn.Module):
    """Video encoder + text projection into one space; the reward is the cosine of the two embeddings."""

    def __init__(self, config: RewardConfig | None = None) -> None:
        super().__init__()
        self.config = config or RewardConfig()
        self.video = VideoEncoder(self.config)
        self.text = nn.Linear(self.config.text_dim, self.config.embed_dim)
        # Training only: the Bradley-Terry loss uses exp(logit_scale) * (cos_chosen - cos_rejected).
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(10.0))))

    def video_embed(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Unit-norm video embeddings ``(B, embed_dim)`` of uint8 clips ``(B, T, H, W, 3)`` (or one clip)."""
        x = preprocess(frames, self.config.frames, self.config.size).to(self.logit_scale.device)
        return F.normalize(self.video(x), dim=-1)

    def text_project(self, text_emb: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Unit-norm projections ``(B, embed_dim)`` of sentence vectors ``(B, text_dim)`` (or one vector)."""
        t = torch.as_tensor(np.asarray(text_emb) if isinstance(text_emb, np.ndarray) else text_emb)
        if t.ndim == 1:
            t = t.unsqueeze(0)
        if t.ndim != 2 or t.shape[-1] != self.config.text_dim:
            raise ValueError(f"expected text embeddings of shape (B, {self.config.text_dim}), got {tuple(t.shape)}")
        if not torch.is_floating_point(t):
            raise ValueError(f"expected float text embeddings, got {t.dtype}")
        if not torch.isfinite(t).all():
            raise ValueError("text embeddings contain NaN or infinity")
        return F.normalize(self.text(t.float().to(self.logit_scale.device)), dim=-1)

    def score(self, frames: np.ndarray | torch.Tensor, text_emb: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Cosines ``(B,)`` in [-1, 1] between clips and texts; one text is broadcast over all the clips."""
        v = self.video_embed(frames)
        t = self.text_project(text_emb)
        if t.shape[0] not in (1, v.shape[0]):
            raise ValueError(f"{v.shape[0]} clips but {t.shape[0]} text embeddings")
        return (v * t).sum(-1)

    def save(self, directory: Path) -> None:
        """Write ``config.json`` and fp32 ``model.safetensors`` into `directory`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().contiguous() for k, v in self.state_dict().items() if v.is_floating_point()}
        tmp = directory / (WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / WEIGHTS_FILE)
        (directory / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")


def count_parameters(module: nn.Module) -> int:
    """Parameters of `module` (frozen or not)."""
    return sum(p.numel() for p in module.parameters())


def load_reward_model(path: Path | None = None) -> RewardModel:
    """The reward model in `path` (default: the shipped ``weights/reward-tiny``), in eval mode on the CPU."""
    from safetensors.torch import load_file

    directory = Path(path) if path is not None else WEIGHTS_DIR
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"no reward model in {directory} (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    model = RewardModel(RewardConfig.from_dict(json.loads(config_path.read_text())))
    state = load_file(str(weights_path))
    # BatchNorm's num_batches_tracked is not stored (integer, unused in eval).
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{weights_path}: missing {missing}, unexpected {unexpected}")
    return model.eval().requires_grad_(False)


def reward_score(model: RewardModel, frames: np.ndarray, text_embedding: np.ndarray) -> MetricResult:
    """The reward of one clip ``(T, H, W, 3)`` uint8 for one sentence vector ``(384,)``: value (cos + 1) / 2.

    Safe to call from several threads at once on one model (eval mode, no state is written).
    """
    frames = check_clip(frames)
    emb = np.asarray(text_embedding)
    if emb.ndim == 2 and emb.shape[0] == 1:
        emb = emb[0]
    if emb.ndim != 1:
        raise ValueError(f"expected one text embedding of shape ({model.config.text_dim},), got {emb.shape}")
    with torch.inference_mode():
        cos = float(model.score(frames, emb)[0])
    cos = min(1.0, max(-1.0, cos))
    return MetricResult(name="reward", value=(cos + 1.0) / 2.0, components={"cosine": cos}, frames=frames.shape[0])


# ---------------------------------------------------------------------------------------------------------
# preference pairs from procedural creatives

PAIR_TYPES: tuple[str, ...] = ("motion", "product", "corrupt")
CORRUPTIONS: tuple[str, ...] = ("noise", "blur", "shuffle", "freeze", "colour", "drop")
TEXT_KINDS: tuple[str, ...] = ("caption", "request", "short", "points")
# Texts that name the product (colour and noun): a `product` pair needs one of these.
PRODUCT_TEXT_KINDS: tuple[str, ...] = ("caption", "request", "short")


def clip_texts(c: cr.Creative) -> dict[str, str]:
    """A creative's texts by kind: its caption; the request as the server builds it ("<colour> <product>:
    <points>"); a short prompt ("a red bottle of juice that spins to show every angle"); the points alone."""
    spec = c.spec
    product = f"{spec.color} {spec.product}"
    motion_point = next(
        (p for p in c.selling_points if any(re.search(rf"\b{v}", p) for v in cr.MOTION_VERBS[spec.motion])),
        c.selling_points[0],
    )
    article = "an" if spec.color[0] in "aeiou" else "a"
    return {
        "caption": c.caption,
        "request": f"{product}: " + "; ".join(c.selling_points),
        "short": f"{article} {product} that {motion_point}",
        "points": "; ".join(c.selling_points),
    }


def with_motion(spec: cr.CreativeSpec, rng: np.random.Generator) -> cr.CreativeSpec:
    """`spec` with another motion, drawn uniformly."""
    others = [m for m in cr.MOTIONS if m != spec.motion]
    return dataclasses.replace(spec, motion=others[int(rng.integers(len(others)))])


def _contrasts(rgb: tuple[int, int, int], bg: cr.Background) -> bool:
    # The creatives' own background rule, applied to both ends of a gradient.
    return cr._contrasts(rgb, bg.rgb) and cr._contrasts(rgb, bg.rgb_end)


def with_product(spec: cr.CreativeSpec, rng: np.random.Generator) -> cr.CreativeSpec:
    """`spec` with another colour (half the time), another shape (a quarter) or both, still visible on its
    background."""
    mode = int(rng.choice(3, p=[0.5, 0.25, 0.25]))  # 0: colour, 1: shape, 2: both
    shape, color = spec.shape, spec.color
    if mode in (1, 2):
        shapes = [s for s in cr.SHAPES if s != spec.shape]
        shape = shapes[int(rng.integers(len(shapes)))]
    if mode in (0, 2):
        colors = [c for c in cr.COLORS if c != spec.color and _contrasts(cr.COLORS[c], spec.background)]
        if colors:
            color = colors[int(rng.integers(len(colors)))]
        elif mode == 0:  # no other colour shows on this background: change the shape instead
            shapes = [s for s in cr.SHAPES if s != spec.shape]
            shape = shapes[int(rng.integers(len(shapes)))]
    return dataclasses.replace(spec, shape=shape, color=color, rgb=cr.COLORS[color])


def corrupt_clip(frames: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`frames` (T, H, W, 3) uint8 damaged by one of `CORRUPTIONS`, at a clearly visible strength."""
    t = frames.shape[0]
    if kind == "noise":
        noisy = frames.astype(np.float32) + rng.normal(0.0, rng.uniform(18.0, 40.0), frames.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)
    if kind == "blur":
        sigma = float(rng.uniform(1.6, 3.0))
        return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in frames])
    if kind == "shuffle":
        order = np.arange(t)
        while np.array_equal(order, np.arange(t)):
            order = rng.permutation(t)
        return frames[order]
    if kind == "freeze":
        start = int(rng.integers(0, t // 2))  # frozen from here on: at least half of the clip stands still
        idx = np.minimum(np.arange(t), start)
        return frames[idx]
    if kind == "colour":
        mode = int(rng.integers(3))
        if mode == 0:  # channels swapped
            perm = [(1, 2, 0), (2, 0, 1), (2, 1, 0), (0, 2, 1), (1, 0, 2)][int(rng.integers(5))]
            return np.ascontiguousarray(frames[..., list(perm)])
        if mode == 1:  # inverted
            return 255 - frames
        grey = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.repeat(np.clip(grey + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    if kind == "drop":
        keep = np.sort(rng.choice(t, size=max(2, int(round(t * rng.uniform(0.25, 0.45)))), replace=False))
        keep[0] = 0
        idx = keep[np.searchsorted(keep, np.arange(t), side="right") - 1]  # hold the last kept frame
        return frames[idx]
    raise ValueError(f"unknown corruption {kind!r}; valid: {', '.join(CORRUPTIONS)}")


@dataclass
class PreferencePair:
    """A text, its chosen (matching) clip and a rejected clip, with how the rejected one differs."""

    kind: str  # one of PAIR_TYPES
    detail: str  # the other motion, the other colour/shape, or the corruption
    text_kind: str  # one of TEXT_KINDS
    text: str
    chosen: np.ndarray
    rejected: np.ndarray
    seed: int


def preference_pair(seed: int, kind: str) -> PreferencePair:
    """The deterministic pair of `kind` for creative `seed` (any motion, 16 frames at 64x64)."""
    if kind not in PAIR_TYPES:
        raise ValueError(f"unknown pair type {kind!r}; valid: {', '.join(PAIR_TYPES)}")
    c = cr.make_creative(seed)
    rng = np.random.default_rng([seed, 7, PAIR_TYPES.index(kind)])
    kinds = PRODUCT_TEXT_KINDS if kind == "product" else TEXT_KINDS
    text_kind = kinds[int(rng.integers(len(kinds)))]
    text = clip_texts(c)[text_kind]
    if kind == "motion":
        spec = with_motion(c.spec, rng)
        rejected, detail = cr.render(spec), spec.motion
    elif kind == "product":
        spec = with_product(c.spec, rng)
        rejected, detail = cr.render(spec), f"{spec.color} {spec.shape}"
    else:
        detail = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
        rejected = corrupt_clip(c.frames, detail, rng)
    return PreferencePair(kind, detail, text_kind, text, c.frames, rejected, seed)
