"""STDiT: a spatial-temporal diffusion transformer as OpenSora v1.2 (STDiT3) builds it.

- Patchify (1, 2, 2) on the latent video, a fixed 2-D sin-cos position embedding on the spatial grid.
- `depth` pairs of blocks: a spatial block (self-attention over the tokens of one frame) then a temporal
  block (self-attention over the frames at one spatial position, with RoPE on q and k). Each block also
  cross-attends to the text tokens and has an MLP.
- Per-head RMSNorm on q and k. q, k and v are separate `nn.Linear` modules named `q`, `k`, `v` in every
  self-attention, so a LoRA can target `q` alone; the cross-attention names its projections `q_linear`,
  `kv_linear`, `proj` (as OpenSora does) so it never matches that target.
- adaLN-single: one shared timestep MLP produces 6 x hidden modulation values (shift, scale, gate for the
  attention and for the MLP); each block adds its own learned table to them; non-affine LayerNorm then
  x * (1 + scale) + shift, and gated residuals.
- Frame-aware text conditioning (this project's addition for motion): an MLP of the pooled text vector
  and the frame's position in the clip produces an extra per-frame modulation that is added to the shared
  one, so each latent frame gets its own shift/scale/gate from "what motion" x "when in the clip".
  `frame_conditioning=False` turns it off.

Input x (B, C, T, H, W) latents, t (B,) in [0, 1] (1 = noise), text tokens (B, L, text_dim) with mask
(B, L) bool; output the velocity, same shape as x.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kdcvg.kernels import attention as attention_kernel
from kdcvg.kernels.adaln import gated_residual, layernorm_modulate, modulate


@dataclass
class STDiTConfig:
    kind: str = "stdit"
    in_channels: int = 8
    latent_frames: int = 8
    latent_height: int = 8
    latent_width: int = 8
    patch: tuple[int, int, int] = (1, 2, 2)
    hidden: int = 192
    depth: int = 4  # pairs of (spatial, temporal) blocks
    heads: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 384
    frame_conditioning: bool = True
    frame_features: int = 8  # sin/cos frequencies of the frame position
    rope_base: float = 10000.0

    @property
    def num_tokens(self) -> int:
        pt, ph, pw = self.patch
        return (self.latent_frames // pt) * (self.latent_height // ph) * (self.latent_width // pw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patch"] = list(self.patch)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> STDiTConfig:
        d = dict(d)
        if d.get("kind", cls.kind) != cls.kind:
            raise ValueError(f"DiT config kind {d.get('kind')!r} is not {cls.kind!r}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown DiT config keys: {sorted(unknown)}")
        if "patch" in d:
            d["patch"] = tuple(d["patch"])
        cfg = cls(**d)
        if cfg.patch[0] != 1:
            raise ValueError("only temporal patch size 1 is supported")
        if cfg.hidden % cfg.heads or (cfg.hidden // cfg.heads) % 2:
            raise ValueError("hidden must split into heads of even size")
        return cfg


# --- building blocks ----------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t * 1000 (t in [0, 1]); (B, dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (h*w, dim), rows in raster order."""

    def one_d(pos: torch.Tensor, d: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = pos.double()[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([one_d(gy.reshape(-1), dim // 2), one_d(gx.reshape(-1), dim // 2)], dim=1)
    return emb.float()


def frame_position_features(frames: int, n_freq: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(frames, 2 * n_freq + 1): the frame's position u in [0, 1) and sin/cos(2 pi k u), k = 1..n_freq."""
    u = torch.arange(frames, dtype=torch.float32, device=device) / frames
    k = torch.arange(1, n_freq + 1, dtype=torch.float32, device=device)
    ang = 2 * math.pi * u[:, None] * k[None]
    return torch.cat([u[:, None], torch.sin(ang), torch.cos(ang)], dim=1)


class RotaryEmbedding(nn.Module):
    """RoPE over one axis (here: time), rotating interleaved halves of each head."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., n, head_dim) -> rotated by position along n."""
        n = x.shape[-2]
        pos = torch.arange(n, dtype=torch.float32, device=x.device)
        ang = pos[:, None] * self.inv_freq[None]  # (n, hd/2)
        cos, sin = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return out.flatten(-2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q, k, v Linears, per-head RMSNorm on q/k, optional RoPE."""

    def __init__(self, dim: int, heads: int, *, rope: bool, rope_base: float = 10000.0) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.rope = RotaryEmbedding(self.head_dim, rope_base) if rope else None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        if attention_kernel.triton_ok(q, k, v):  # CUDA: one kernel, RMSNorm and RoPE fused into its prologue
            out = attention_kernel.attention_triton(
                q,
                k,
                v,
                q_norm_weight=self.q_norm.weight,
                k_norm_weight=self.k_norm.weight,
                eps=self.q_norm.eps or 1e-6,
                rope_inv_freq=self.rope.inv_freq if self.rope is not None else None,
            )
            return self.proj(out.transpose(1, 2).reshape(b, n, d))
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q), self.rope(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """Video tokens attend to the text tokens (masked)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        m = y.shape[1]
        q = self.q_linear(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        kv = self.kv_linear(y).view(b, m, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask[:, None, None, :])
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class STDiTBlock(nn.Module):
    def __init__(self, cfg: STDiTConfig, *, temporal: bool) -> None:
        super().__init__()
        d = cfg.hidden
        self.temporal = temporal
        self.norm1 = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.attn = SelfAttention(d, cfg.heads, rope=temporal, rope_base=cfg.rope_base)
        self.cross_attn = CrossAttention(d, cfg.heads)
        self.norm2 = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))
        self.scale_shift_table = nn.Parameter(torch.randn(6, d) / d**0.5)

    def forward(self, x: torch.Tensor, mod: torch.Tensor, y: torch.Tensor, y_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, S, d); mod (B, 6, d) or (B, T, 6, d); y (B, L, d); y_mask (B, L)."""
        b, t, s, d = x.shape
        if mod.dim() == 3:
            mod = mod[:, None]
        mods = (self.scale_shift_table + mod).unsqueeze(3)  # (B, T|1, 6, 1, d)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.unbind(2)

        # On CUDA the Triton kernels of kdcvg.kernels run these; elsewhere their PyTorch references.
        h = layernorm_modulate(x, shift_msa, scale_msa, self.norm1.eps)
        if self.temporal:
            h = h.transpose(1, 2).reshape(b * s, t, d)
            h = self.attn(h).reshape(b, s, t, d).transpose(1, 2)
        else:
            h = self.attn(h.reshape(b * t, s, d)).reshape(b, t, s, d)
        x = gated_residual(x, gate_msa, h)
        x = x + self.cross_attn(x.reshape(b, t * s, d), y, y_mask).reshape(b, t, s, d)
        h = layernorm_modulate(x, shift_mlp, scale_mlp, self.norm2.eps)
        return gated_residual(x, gate_mlp, self.mlp(h))


class FinalLayer(nn.Module):
    def __init__(self, d: int, out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(d, out)
        self.scale_shift_table = nn.Parameter(torch.randn(2, d) / d**0.5)

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).unsqueeze(2).unbind(1)  # (B, 1, d)
        return self.linear(modulate(self.norm(x), shift[:, None], scale[:, None]))


# --- the model ------------------------------------------------------------------------------------------


class STDiT(nn.Module):
    def __init__(self, cfg: STDiTConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.hidden
        _, ph, pw = cfg.patch
        self.x_embedder = nn.Linear(cfg.in_channels * ph * pw, d)
        self.register_buffer(
            "pos_embed", sincos_2d(cfg.latent_height // ph, cfg.latent_width // pw, d), persistent=False
        )
        self.t_embedder = Mlp(256, d, d)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.y_embedder = Mlp(cfg.text_dim, d, d)
        if cfg.frame_conditioning:
            self.text_pool = nn.Linear(cfg.text_dim, d)
            self.frame_embed = nn.Linear(2 * cfg.frame_features + 1, d)
            self.frame_mlp = nn.Sequential(nn.SiLU(), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 6 * d))
        blocks = []
        for _ in range(cfg.depth):
            blocks.append(STDiTBlock(cfg, temporal=False))
            blocks.append(STDiTBlock(cfg, temporal=True))
        self.blocks = nn.ModuleList(blocks)
        self.final_layer = FinalLayer(d, cfg.in_channels * ph * pw)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for m in (self.t_embedder.fc1, self.t_embedder.fc2, self.t_block[1]):
            nn.init.normal_(m.weight, std=0.02)
        for blk in self.blocks:
            nn.init.zeros_(blk.cross_attn.proj.weight)
        nn.init.zeros_(self.final_layer.linear.weight)
        if self.config.frame_conditioning:
            nn.init.zeros_(self.frame_mlp[-1].weight)

    # --- conditioning -------------------------------------------------------------------------------
    @staticmethod
    def pooled_text(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked mean of the token states, L2-normalised (the sentence vector): (B, text_dim)."""
        m = mask.to(y.dtype)[..., None]
        pooled = (y * m).sum(1) / m.sum(1).clamp(min=1.0)
        return F.normalize(pooled, dim=-1)

    def frame_modulation(self, y: torch.Tensor, mask: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, T, 6d): per-frame modulation from the pooled text and the frame position."""
        pooled = self.text_pool(self.pooled_text(y, mask))  # (B, d)
        feats = frame_position_features(frames, self.config.frame_features, y.device).to(pooled.dtype)
        h = pooled[:, None] + self.frame_embed(feats)[None]
        return self.frame_mlp(h)

    # --- forward ------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        y_mask: torch.Tensor,
        *,
        frame_conditioning: bool = True,
    ) -> torch.Tensor:
        cfg = self.config
        b, c, tf, h, w = x.shape
        _, ph, pw = cfg.patch
        hp, wp = h // ph, w // pw
        d = cfg.hidden
        # patchify: (B, C, T, H, W) -> (B, T, S, C*ph*pw)
        p = x.reshape(b, c, tf, hp, ph, wp, pw).permute(0, 2, 3, 5, 1, 4, 6).reshape(b, tf, hp * wp, c * ph * pw)
        if hp * wp == self.pos_embed.shape[0]:
            pos = self.pos_embed
        else:
            pos = sincos_2d(hp, wp, d).to(x.device)
        tok = self.x_embedder(p) + pos.to(p.dtype)

        t_emb = self.t_embedder(timestep_embedding(t, 256).to(tok.dtype))  # (B, d)
        mod = self.t_block(t_emb).view(b, 6, d)
        if cfg.frame_conditioning and frame_conditioning:
            mod = mod[:, None] + self.frame_modulation(y, y_mask, tf).view(b, tf, 6, d)
        ye = self.y_embedder(y)
        y_mask = y_mask.bool()

        for blk in self.blocks:
            tok = blk(tok, mod, ye, y_mask)
        out = self.final_layer(tok, t_emb)  # (B, T, S, C*ph*pw)
        out = out.reshape(b, tf, hp, wp, c, ph, pw).permute(0, 4, 1, 2, 5, 3, 6).reshape(b, c, tf, h, w)
        return out


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
