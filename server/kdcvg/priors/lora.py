"""Motion-prior LoRAs on the query projection of every self-attention layer, batched per row.

A LoRA adds scale * B(A x) to a layer's output (A: rank x d_in, B: d_out x rank). `attach` wraps every
self-attention `q` Linear of a DiT in a `LoRALinear`; when no `LoRABatch` is active on the calling thread
the wrapper is exactly the base layer. A `LoRABatch` holds the stacked weights of several LoRAs (one
"slot" each, lower ranks zero-padded to the stack's rank) and, per sample row, the slot it uses (-1: none)
and its scale. Rows of one forward pass may therefore use different LoRAs: base projection plus a
gathered low-rank update (the BGMV pattern of Punica / vLLM). `lora_delta` is that update; the PyTorch
implementation here is the reference a Triton kernel replaces through `set_lora_kernel`.

The batch is thread-local, so a distillation training its LoRA in one thread and the sampler serving
other LoRAs in another share the same module without seeing each other's weights.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

FORMAT = "kdcvg-lora/1"
TARGET_SUFFIX = ".attn.q"

LoraKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class PriorFileError(ValueError):
    """A LoRA file that cannot be used with this model: unreadable, corrupt or of mismatched shapes."""


def lora_delta_reference(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, index: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Per-row low-rank update (BGMV): out[i] = scale[i] * x[i] @ a[index[i]].T @ b[index[i]].T.

    x (N, n, d_in); a (S, r, d_in); b (S, d_out, r); index (N,) long, -1 for no LoRA; scale (N,).
    Returns (N, n, d_out) in x's dtype; rows with index -1 are zero.

    Rows are grouped by slot (SGMV in PyTorch): one pair of matmuls per LoRA present instead of gathering a
    (r, d) weight pair for every row, which on CPU cost as much as the rest of the forward pass.
    """
    out = x.new_zeros(x.shape[0], x.shape[1], b.shape[1])
    for slot in index.unique().tolist():
        if slot < 0:
            continue
        rows = (index == slot).nonzero().squeeze(1)
        delta = (x[rows] @ a[slot].to(x.dtype).T) @ b[slot].to(x.dtype).T
        out = out.index_add(0, rows, delta * scale[rows].to(x.dtype)[:, None, None])
    return out


_kernel: LoraKernel = lora_delta_reference


def set_lora_kernel(kernel: LoraKernel | None) -> None:
    """Replaces the low-rank update (same signature as `lora_delta_reference`); None restores it."""
    global _kernel
    _kernel = kernel or lora_delta_reference


def lora_delta(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, index: torch.Tensor, scale: torch.Tensor):  # noqa: ANN201
    return _kernel(x, a, b, index, scale)


@dataclass
class LoRABatch:
    """Slot stacks per target layer and, per sample row of the forward pass, the slot and scale."""

    a: dict[str, torch.Tensor]  # layer -> (S, r, d_in)
    b: dict[str, torch.Tensor]  # layer -> (S, d_out, r)
    index: torch.Tensor  # (B,) long
    scale: torch.Tensor  # (B,) float


_active = threading.local()


@contextmanager
def use_lora(batch: LoRABatch | None) -> Iterator[None]:
    """Makes `batch` the LoRAs of every forward pass on this thread inside the block."""
    prev = getattr(_active, "batch", None)
    _active.batch = batch
    try:
        yield
    finally:
        _active.batch = prev


class LoRALinear(nn.Module):
    """A base Linear plus the active batch's low-rank update for this layer (when there is one)."""

    def __init__(self, base: nn.Linear, name: str) -> None:
        super().__init__()
        self.base = base
        self.name = name

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        batch: LoRABatch | None = getattr(_active, "batch", None)
        if batch is None or self.name not in batch.a:
            return y
        rows = x.shape[0]
        samples = batch.index.shape[0]
        if rows % samples:
            raise RuntimeError(f"{rows} attention rows do not split over {samples} samples")
        # Spatial blocks fold (B, T) and temporal blocks (B, S) into the leading dimension, batch first.
        per = rows // samples
        index = batch.index.repeat_interleave(per) if per > 1 else batch.index
        scale = batch.scale.repeat_interleave(per) if per > 1 else batch.scale
        return y + lora_delta(x, batch.a[self.name], batch.b[self.name], index, scale)


def attach(dit: nn.Module) -> dict[str, LoRALinear]:
    """Wraps every self-attention `q` Linear of `dit` (idempotent); returns them by qualified name."""
    found: dict[str, LoRALinear] = {}
    for name, module in list(dit.named_modules()):
        if name.endswith(".attn") and hasattr(module, "q"):
            qname = name + ".q"
            if not isinstance(module.q, LoRALinear):
                module.q = LoRALinear(module.q, qname)
            found[qname] = module.q
    if not found:
        raise ValueError("the model has no self-attention q projections to attach LoRAs to")
    return found


def targets(dit: nn.Module) -> dict[str, tuple[int, int]]:
    """Target layer name -> (d_in, d_out), after `attach`."""
    return {name: (m.in_features, m.out_features) for name, m in dit.named_modules() if isinstance(m, LoRALinear)}


def max_rank(dit: nn.Module) -> int:
    """The largest useful rank: the narrowest target layer's width."""
    return min(min(shape) for shape in targets(dit).values())


def fingerprint(dit: nn.Module) -> str:
    """Identifies the base model a LoRA was distilled on: its config, target shapes and weights (a LoRA is a
    correction to particular weights, so another checkpoint of the same architecture does not match)."""
    cfg = getattr(dit, "config", None)
    desc = {"config": cfg.to_dict() if hasattr(cfg, "to_dict") else str(cfg), "targets": targets(dit)}
    h = hashlib.sha256(json.dumps(desc, sort_keys=True).encode())
    with torch.no_grad():
        for name, tensor in sorted(dit.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class LoRAWeights:
    """One LoRA: per target layer A (r, d_in) and B (d_out, r), with metadata."""

    rank: int
    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.a.values(), *self.b.values()))

    @classmethod
    def init(
        cls, dit: nn.Module, rank: int, *, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> LoRAWeights:
        """A fresh trainable LoRA: A small random, B zero (so it starts as the base model)."""
        a, b = {}, {}
        for name, (d_in, d_out) in targets(dit).items():
            a[name] = (torch.randn(rank, d_in, generator=generator) / d_in**0.5).to(device).requires_grad_(True)
            b[name] = torch.zeros(d_out, rank, device=device).requires_grad_(True)
        return cls(rank, a, b)

    def parameters(self) -> list[torch.Tensor]:
        return [*self.a.values(), *self.b.values()]

    def detached(self, dtype: torch.dtype = torch.float32) -> LoRAWeights:
        return LoRAWeights(
            self.rank,
            {k: v.detach().to(dtype).clone() for k, v in self.a.items()},
            {k: v.detach().to(dtype).clone() for k, v in self.b.items()},
            dict(self.meta),
        )

    def as_batch(self, samples: int, scale: float = 1.0) -> LoRABatch:
        """Every row of a `samples`-row forward pass uses this LoRA (distillation, merged-style runs)."""
        device = next(iter(self.a.values())).device
        return LoRABatch(
            {k: v[None] for k, v in self.a.items()},
            {k: v[None] for k, v in self.b.items()},
            torch.zeros(samples, dtype=torch.long, device=device),
            torch.full((samples,), float(scale), device=device),
        )

    def check(self, dit: nn.Module) -> None:
        """Raises PriorFileError unless every target layer of `dit` has A and B of matching shapes."""
        want = targets(dit)
        if set(self.a) != set(want) or set(self.b) != set(want):
            missing = sorted(set(want) - set(self.a))
            extra = sorted(set(self.a) - set(want))
            raise PriorFileError(f"LoRA layers do not match the model (missing {missing[:3]}, unknown {extra[:3]})")
        for name, (d_in, d_out) in want.items():
            if tuple(self.a[name].shape) != (self.rank, d_in) or tuple(self.b[name].shape) != (d_out, self.rank):
                raise PriorFileError(
                    f"LoRA layer {name} has A {tuple(self.a[name].shape)} and B {tuple(self.b[name].shape)}; "
                    f"the model needs A ({self.rank}, {d_in}) and B ({d_out}, {self.rank})"
                )
            if not (torch.isfinite(self.a[name]).all() and torch.isfinite(self.b[name]).all()):
                raise PriorFileError(f"LoRA layer {name} holds NaN or infinite values")

    def save(self, path: Path) -> None:
        """Writes safetensors atomically (temp file, fsync, rename)."""
        from safetensors.torch import save_file

        tensors = {f"{k}.lora_A": v.detach().contiguous().cpu() for k, v in self.a.items()}
        tensors |= {f"{k}.lora_B": v.detach().contiguous().cpu() for k, v in self.b.items()}
        meta = {**self.meta, "format": FORMAT, "rank": str(self.rank)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb+") as f:
            import os

            os.fsync(f.fileno())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, dit: nn.Module | None = None, base_model: str | None = None) -> LoRAWeights:
        """Reads and (given the model) checks a LoRA file; PriorFileError says what is wrong with it.
        `base_model`: the model's fingerprint, when the caller has it already."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
        except FileNotFoundError:
            raise
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise PriorFileError(f"{path.name} is not a readable LoRA file ({exc})") from exc
        if meta.get("format") != FORMAT:
            raise PriorFileError(f"{path.name} is not a {FORMAT} file (format {meta.get('format')!r})")
        try:
            rank = int(meta["rank"])
        except (KeyError, ValueError) as exc:
            raise PriorFileError(f"{path.name} has no valid rank in its metadata") from exc
        a = {k.removesuffix(".lora_A"): v.float() for k, v in tensors.items() if k.endswith(".lora_A")}
        b = {k.removesuffix(".lora_B"): v.float() for k, v in tensors.items() if k.endswith(".lora_B")}
        out = cls(rank, a, b, {k: v for k, v in meta.items() if k not in ("format", "rank")})
        if dit is not None:
            out.check(dit)
            want = base_model or fingerprint(dit)
            if out.meta.get("base_model", want) != want:
                raise PriorFileError(
                    f"{path.name} was distilled on another base model ({out.meta['base_model']}, this one is {want}); "
                    "distil it again for this model"
                )
        return out
