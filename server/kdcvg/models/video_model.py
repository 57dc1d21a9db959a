"""VideoModel: the autoencoder + STDiT + sampler settings, loaded from a directory.

A model directory holds
    config.json         {"kind": "kdcvg-video-model", "format": 1, "autoencoder": {...}, "dit": {...},
                         "frames", "height", "width", "fps", "sampling": {...}, "text_encoder": ...}
    model.safetensors   "autoencoder.*", "dit.*" and "null_text" / "null_text_mask" (the text encoder's
                        token states of the empty string: the unconditional branch of CFG)
Tensors may be stored in bf16/fp16/fp32; they are cast to the dtype asked for at load time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcvg.models import rectified_flow as rf
from kdcvg.models.autoencoder import AutoencoderConfig, VideoAutoencoder
from kdcvg.models.stdit import STDiT, STDiTConfig

KIND = "kdcvg-video-model"
FORMAT = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ModelLoadError(ValueError):
    """A model directory that cannot be loaded (wrong kind, bad config, mismatched weights)."""


class VideoModel(nn.Module):
    def __init__(
        self,
        ae_config: AutoencoderConfig,
        dit_config: STDiTConfig,
        *,
        frames: int = 16,
        height: int = 64,
        width: int = 64,
        fps: float = 8.0,
        sampling: dict[str, Any] | None = None,
        text_encoder: str = "all-minilm-l6-v2",
        null_text: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.ae_config, self.dit_config = ae_config, dit_config
        self.frames, self.height, self.width, self.fps = frames, height, width, fps
        self.sampling = {"steps": 30, "guidance": 2.0, "base_tokens": 128, "base_shift": 4.0, **(sampling or {})}
        self.text_encoder = text_encoder
        self._check_geometry()
        self.autoencoder = VideoAutoencoder(ae_config)
        self.dit = STDiT(dit_config)
        if null_text is None:
            null_text = torch.zeros(2, dit_config.text_dim)
        self.register_buffer("null_text", null_text.float().clone())

    def _check_geometry(self) -> None:
        a, d = self.ae_config, self.dit_config
        expected = (self.frames // a.temporal, self.height // a.spatial, self.width // a.spatial)
        got = (d.latent_frames, d.latent_height, d.latent_width)
        if self.frames % a.temporal or self.height % a.spatial or self.width % a.spatial or expected != got:
            raise ModelLoadError(
                f"geometry mismatch: {self.frames}x{self.height}x{self.width} frames through the autoencoder "
                f"give latents {expected}, the DiT expects {got}"
            )
        if a.latent_channels != d.in_channels:
            raise ModelLoadError(f"autoencoder has {a.latent_channels} latent channels, DiT expects {d.in_channels}")

    # --- config ---------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "format": FORMAT,
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "fps": self.fps,
            "text_encoder": self.text_encoder,
            "sampling": self.sampling,
            "autoencoder": self.ae_config.to_dict(),
            "dit": self.dit_config.to_dict(),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> VideoModel:
        if not isinstance(config, dict) or config.get("kind") != KIND:
            got = config.get("kind") if isinstance(config, dict) else type(config).__name__
            raise ModelLoadError(f"config kind is {got!r}, expected {KIND!r}")
        if config.get("format") != FORMAT:
            raise ModelLoadError(f"config format {config.get('format')!r} is not supported (expected {FORMAT})")
        try:
            ae = AutoencoderConfig.from_dict(config["autoencoder"])
            dit = STDiTConfig.from_dict(config["dit"])
            return cls(
                ae,
                dit,
                frames=int(config["frames"]),
                height=int(config["height"]),
                width=int(config["width"]),
                fps=float(config["fps"]),
                sampling=config.get("sampling"),
                text_encoder=config.get("text_encoder", "all-minilm-l6-v2"),
            )
        except KeyError as e:
            raise ModelLoadError(f"config is missing {e}") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, ModelLoadError):
                raise
            raise ModelLoadError(f"bad config: {e}") from None

    # --- load / save ----------------------------------------------------------------------------------
    @classmethod
    def load(
        cls, directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> VideoModel:
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"video model directory not found: {directory}")
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"video model directory {directory} has no {p.name}")
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{cfg_path} is not valid JSON: {e}") from None
        model = cls.from_config(config)
        state = load_file(str(w_path))
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in own
            if k in state and state[k].shape != own[k].shape and k != "null_text"
        ]
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
            if unexpected:
                parts.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[:3]})")
            if shapes:
                parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
            raise ModelLoadError(f"weights in {w_path} do not match its config: " + "; ".join(parts))
        model.null_text = state.pop("null_text").float().clone()
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        return model.to(device=device, dtype=dtype).eval()

    def save(self, directory: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
        """Write config.json and model.safetensors (floating tensors stored as `dtype`)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in self.state_dict().items()
        }
        tmp = directory / (WEIGHTS_NAME + ".tmp")
        save_file(state, str(tmp), metadata={"kind": KIND})
        tmp.replace(directory / WEIGHTS_NAME)
        (directory / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        return directory

    # --- properties -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.null_text.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.dit.parameters()).dtype

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        d = self.dit_config
        return (d.in_channels, d.latent_frames, d.latent_height, d.latent_width)

    def default_shift(self) -> float:
        return rf.resolution_shift(
            self.dit_config.num_tokens,
            base_tokens=int(self.sampling["base_tokens"]),
            base_shift=float(self.sampling["base_shift"]),
        )

    # --- autoencoder ------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 (B, T, H, W, 3) -> normalised latents (B, C, T', h, w)."""
        x = VideoAutoencoder.to_float(frames).to(self.device, self.dtype)
        return self.autoencoder.encode(x)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """normalised latents (B, C, T', h, w) -> uint8 (B, T, H, W, 3) on the CPU."""
        return VideoAutoencoder.to_uint8(self.autoencoder.decode(latents.to(self.device, self.dtype))).cpu()

    # --- diffusion --------------------------------------------------------------------------------------
    def velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        return self.dit(x_t, t, text_tokens, text_mask)

    def null_tokens(self, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty text's token states padded to `length`: (batch, length, D), mask (batch, length)."""
        n = self.null_text.shape[0]
        length = max(length, n)
        y = torch.zeros(batch, length, self.null_text.shape[1], device=self.device, dtype=self.null_text.dtype)
        y[:, :n] = self.null_text
        mask = torch.zeros(batch, length, dtype=torch.bool, device=self.device)
        mask[:, :n] = True
        return y, mask

    @torch.no_grad()
    def generate(
        self,
        text_tokens: torch.Tensor | np.ndarray,
        text_mask: torch.Tensor | np.ndarray,
        *,
        steps: int = 30,
        guidance: float = 2.0,
        seed: int | list[int] = 0,
        shift: float | None = None,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        velocity_fn: Callable[..., torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Text token states (B, L, D) + mask (B, L) -> uint8 frames (B, T, H, W, 3) on the CPU.

        seed: one int (row i uses seed + i) or one per row. callback(step, steps, x) runs after each Euler
        step and may raise to stop. velocity_fn(x, t, tokens, mask) replaces self.velocity (e.g. a
        LoRA-patched call); it receives the doubled CFG batch.
        """
        y = torch.as_tensor(text_tokens).to(self.device, self.dtype)
        m = torch.as_tensor(text_mask).to(self.device).bool()
        if y.dim() != 3 or m.shape != y.shape[:2]:
            raise ValueError(f"text_tokens must be (B, L, D) with mask (B, L); got {tuple(y.shape)}, {tuple(m.shape)}")
        b, length, _ = y.shape
        seeds = [seed + i for i in range(b)] if isinstance(seed, int) else list(seed)
        if len(seeds) != b:
            raise ValueError(f"{len(seeds)} seeds for {b} rows")
        noise = torch.stack(
            [torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        ).to(self.device, self.dtype)
        if guidance != 1.0:
            ny, nm = self.null_tokens(b, length)
            if ny.shape[1] > length:
                pad = ny.shape[1] - length
                y = torch.cat([y, y.new_zeros(b, pad, y.shape[2])], 1)
                m = torch.cat([m, m.new_zeros(b, pad)], 1)
            yy, mm = torch.cat([y, ny.to(y.dtype)]), torch.cat([m, nm])
        else:
            yy, mm = y, m
        fn = velocity_fn or self.velocity

        def vfn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return fn(x, t.to(x.dtype), yy, mm)

        shift = self.default_shift() if shift is None else shift
        if not math.isfinite(shift) or shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        latents = rf.sample(vfn, noise, steps=steps, guidance=guidance, shift=shift, callback=callback)
        return self.decode(latents)
