"""A small video autoencoder: pairs of frames -> one latent frame, 8x spatial and 2x temporal compression.

Each group of `temporal` consecutive frames is stacked on the channel axis, pixel-unshuffled by 2 (no
information lost before the first conv, so edges survive), then strided convs bring it to H/8 x W/8 with
`latent_channels` channels. The decoder mirrors it and pixel-shuffles back. Latents are normalised with
per-channel statistics measured after training (`latent_mean`, `latent_std`), so the diffusion model sees
roughly unit-variance inputs.

Shapes: frames (B, T, H, W, 3) uint8 <-> latents (B, C, T/temporal, H/8, W/8) float.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AutoencoderConfig:
    kind: str = "frame-pair-conv-ae"
    in_channels: int = 3
    latent_channels: int = 8
    temporal: int = 2  # frames per latent frame
    channels: tuple[int, int, int] = (48, 96, 128)  # widths at H/2, H/4, H/8
    latent_mean: list[float] = field(default_factory=lambda: [0.0] * 8)
    latent_std: list[float] = field(default_factory=lambda: [1.0] * 8)

    spatial: int = 8  # fixed by the architecture: unshuffle 2 + two stride-2 convs

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AutoencoderConfig:
        d = dict(d)
        if d.get("kind", cls.kind) != cls.kind:
            raise ValueError(f"autoencoder config kind {d.get('kind')!r} is not {cls.kind!r}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown autoencoder config keys: {sorted(unknown)}")
        if "channels" in d:
            d["channels"] = tuple(d["channels"])
        cfg = cls(**d)
        if len(cfg.latent_mean) != cfg.latent_channels or len(cfg.latent_std) != cfg.latent_channels:
            raise ValueError("latent_mean / latent_std must have latent_channels entries")
        return cfg


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        cin = cfg.in_channels * cfg.temporal * 4
        self.net = nn.Sequential(
            nn.PixelUnshuffle(2),
            nn.Conv2d(cin, c1, 3, padding=1),
            ResBlock(c1),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            ResBlock(c2),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1),
            ResBlock(c3),
            nn.SiLU(),
            nn.Conv2d(c3, cfg.latent_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        c1, c2, c3 = cfg.channels
        cout = cfg.in_channels * cfg.temporal * 4
        self.net = nn.Sequential(
            nn.Conv2d(cfg.latent_channels, c3, 3, padding=1),
            ResBlock(c3),
            ResBlock(c3),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c3, c2, 3, padding=1),
            ResBlock(c2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(c2, c1, 3, padding=1),
            ResBlock(c1),
            nn.SiLU(),
            nn.Conv2d(c1, cout, 3, padding=1),
            nn.PixelShuffle(2),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VideoAutoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    # --- pixel <-> grouped tensors ------------------------------------------------------------------
    def _group(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(B, T, H, W, 3) float in [-1, 1] -> (B*T/k, 3k, H, W)."""
        b, t, h, w, c = x.shape
        k = self.config.temporal
        if t % k:
            raise ValueError(f"frames ({t}) must be a multiple of the temporal factor {k}")
        x = x.reshape(b, t // k, k, h, w, c).permute(0, 1, 2, 5, 3, 4).reshape(b * t // k, k * c, h, w)
        return x, b

    def _ungroup(self, x: torch.Tensor, b: int) -> torch.Tensor:
        """(B*T', 3k, H, W) -> (B, T'*k, H, W, 3)."""
        n, kc, h, w = x.shape
        k = self.config.temporal
        c = kc // k
        return x.reshape(b, n // b, k, c, h, w).permute(0, 1, 2, 4, 5, 3).reshape(b, n // b * k, h, w, c)

    @staticmethod
    def to_float(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> float32 in [-1, 1]."""
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(frames)
        return frames.float() / 127.5 - 1.0

    @staticmethod
    def to_uint8(x: torch.Tensor) -> torch.Tensor:
        return ((x.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)

    # --- raw (unnormalised) paths used in training ---------------------------------------------------
    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """float (B, T, H, W, 3) in [-1, 1] -> raw latents (B, C, T/k, H/8, W/8)."""
        g, b = self._group(x)
        z = self.encoder(g)
        n, c, h, w = z.shape
        return z.reshape(b, n // b, c, h, w).transpose(1, 2)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """raw latents (B, C, T', h, w) -> float (B, T'*k, H, W, 3)."""
        b, c, t, h, w = z.shape
        y = self.decoder(z.transpose(1, 2).reshape(b * t, c, h, w))
        return self._ungroup(y, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_raw(self.encode_raw(x))

    # --- normalised latents (what the DiT sees) ------------------------------------------------------
    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        mean = torch.tensor(self.config.latent_mean, dtype=z.dtype, device=z.device).reshape(shape)
        std = torch.tensor(self.config.latent_std, dtype=z.dtype, device=z.device).reshape(shape)
        return mean, std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encode_raw(x)
        mean, std = self._stats(z)
        return (z - mean) / std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return self.decode_raw(z * std + mean)


def reconstruction_loss(x: torch.Tensor, y: torch.Tensor, edge_weight: float = 1.0) -> torch.Tensor:
    """L1 on pixels plus L1 on horizontal/vertical finite differences (edge fidelity); (B,T,H,W,3)."""
    l1 = (x - y).abs().mean()
    dxx, dyx = x[:, :, :, 1:] - x[:, :, :, :-1], y[:, :, :, 1:] - y[:, :, :, :-1]
    dxy, dyy = x[:, :, 1:] - x[:, :, :-1], y[:, :, 1:] - y[:, :, :-1]
    edge = (dxx - dyx).abs().mean() + (dxy - dyy).abs().mean()
    return l1 + edge_weight * edge
