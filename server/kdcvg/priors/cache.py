"""Where motion priors live: disk (safetensors beside the knowledge base), host memory (LRU, pinned when a
GPU is present) and device slots (the stacks the sampler's forward pass reads).

Swaps are atomic: a device slot is written only under `DeviceSlots.lock`, which the sampler holds for the
whole of each forward pass, so a step sees a slot either entirely before or entirely after a load. The slow
part of a load (reading and checking the file) happens outside that lock, so it never stalls sampling.
A prior is identified by (tenant, id); each stored version carries a `uid`, which is what device slots are
keyed by, so a re-distilled prior never mixes with the version a request in flight is using.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kdcvg.errors import NotFound
from kdcvg.priors.lora import LoRABatch, LoRAWeights, PriorFileError, fingerprint, max_rank, targets

DISK, HOST, DEVICE = "disk", "host", "device"
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass(frozen=True)
class PriorInfo:
    id: str
    rank: int
    tier: str
    size_bytes: int
    final_loss: float


class SlotsBusy(RuntimeError):
    """Every device slot is used by the step being assembled (the caller waits for the next step)."""


class DeviceSlots:
    """`n` LoRA slots stacked per target layer on the model's device, LRU-replaced."""

    def __init__(self, dit: nn.Module, n: int, rank: int, device: torch.device | str = "cpu") -> None:
        if n < 1:
            raise ValueError("at least one device slot is needed")
        self.n, self.rank = n, rank
        shapes = targets(dit)
        self.a = {k: torch.zeros(n, rank, d_in, device=device) for k, (d_in, _) in shapes.items()}
        self.b = {k: torch.zeros(n, d_out, rank, device=device) for k, (_, d_out) in shapes.items()}
        self.uids: list[str | None] = [None] * n
        self._used = [0] * n
        self._tick = 0
        self.lock = threading.RLock()
        self.installs = 0
        self.replaced = 0  # installs that evicted another LoRA

    def slot_of(self, uid: str) -> int | None:
        try:
            return self.uids.index(uid)
        except ValueError:
            return None

    def ensure(self, weights: LoRAWeights, protect: set[str] = frozenset()) -> tuple[int, bool]:
        """The slot holding `weights` (installing it if needed, never over a uid in `protect`); (slot, hit).
        Call with `lock` held."""
        uid = weights.meta["uid"]
        self._tick += 1
        slot = self.slot_of(uid)
        if slot is not None:
            self._used[slot] = self._tick
            return slot, True
        if weights.rank > self.rank:
            raise PriorFileError(f"prior rank {weights.rank} is above the device slots' rank {self.rank}")
        free = [i for i, u in enumerate(self.uids) if u is None]
        if free:
            slot = free[0]
        else:
            candidates = [i for i, u in enumerate(self.uids) if u not in protect]
            if not candidates:
                raise SlotsBusy(f"all {self.n} device slots are in use by this step")
            slot = min(candidates, key=lambda i: self._used[i])
            self.replaced += 1
        r = weights.rank
        for k in self.a:
            self.a[k][slot].zero_()
            self.b[k][slot].zero_()
            self.a[k][slot, :r].copy_(weights.a[k])
            self.b[k][slot, :, :r].copy_(weights.b[k])
        self.uids[slot] = uid
        self._used[slot] = self._tick
        self.installs += 1
        return slot, False

    def evict(self, uid: str) -> bool:
        with self.lock:
            slot = self.slot_of(uid)
            if slot is None:
                return False
            self.uids[slot] = None
            return True

    def batch(self, index: list[int], scale: list[float]) -> LoRABatch:
        device = next(iter(self.a.values())).device
        return LoRABatch(
            self.a,
            self.b,
            torch.tensor(index, dtype=torch.long, device=device),
            torch.tensor(scale, dtype=torch.float32, device=device),
        )


class PriorCache:
    """The three tiers, for one base model."""

    def __init__(
        self,
        root: Path,
        dit: nn.Module,
        *,
        device_slots: int = 8,
        host_bytes: int = 256 << 20,
        rank: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.dit = dit
        self.max_rank = max_rank(dit)
        self.slot_rank = min(rank or self.max_rank, self.max_rank)
        self.slots = DeviceSlots(dit, device_slots, self.slot_rank, device)
        self.host_bytes = host_bytes
        self._host: OrderedDict[tuple[str, str], LoRAWeights] = OrderedDict()
        self._host_lock = threading.Lock()
        # Every uid a key has had in memory (to evict them all) and a version counter bumped by each
        # store/delete/unload, so a disk read that raced one of them is not cached.
        self._uids: dict[tuple[str, str], set[str]] = {}
        self._version: Counter[tuple[str, str]] = Counter()
        self.base_model = fingerprint(dit)
        self._pin = torch.cuda.is_available()
        self.loads: Counter[str] = Counter()  # loads by the tier they came from (device = a hit)
        self.evictions: Counter[str] = Counter()

    # --- disk ----------------------------------------------------------------------------------------
    def path(self, tenant: str, prior_id: str) -> Path:
        if not _SAFE.match(prior_id) or prior_id in (".", ".."):
            raise NotFound(f"prior {prior_id!r} not found")
        return self.root / _tenant_dir(tenant) / f"{prior_id}.safetensors"

    def exists(self, tenant: str, prior_id: str) -> bool:
        return self.path(tenant, prior_id).exists()

    def store(self, tenant: str, prior_id: str, weights: LoRAWeights) -> LoRAWeights:
        """Writes a new version of a prior (atomic) and drops older copies from host and device."""
        w = weights.detached()
        w.meta = {**w.meta, "uid": uuid.uuid4().hex, "base_model": self.base_model, "id": prior_id}
        w.check(self.dit)
        path = self.path(tenant, prior_id)
        w.save(path)
        self._forget(tenant, prior_id)
        return w

    def delete(self, tenant: str, prior_id: str) -> bool:
        path = self.path(tenant, prior_id)
        self._forget(tenant, prior_id)
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False

    def list(self, tenant: str) -> list[PriorInfo]:
        folder = self.root / _tenant_dir(tenant)
        out = []
        for path in sorted(folder.glob("*.safetensors")) if folder.exists() else []:
            pid = path.name.removesuffix(".safetensors")
            try:
                out.append(self.info(tenant, pid))
            except (PriorFileError, NotFound):
                continue  # a corrupt file is reported when it is loaded, not in listings
        return out

    def info(self, tenant: str, prior_id: str) -> PriorInfo:
        w = self._host_peek(tenant, prior_id) or self._read(tenant, prior_id, check=False)
        return PriorInfo(
            prior_id, w.rank, self.tier(tenant, prior_id), w.nbytes, float(w.meta.get("final_loss", "nan"))
        )

    def tier(self, tenant: str, prior_id: str) -> str:
        with self._host_lock:
            uids = set(self._uids.get((tenant, prior_id), ()))
            in_host = (tenant, prior_id) in self._host
        if any(self.slots.slot_of(u) is not None for u in uids):
            return DEVICE
        return HOST if in_host else DISK

    def _read(self, tenant: str, prior_id: str, *, check: bool = True) -> LoRAWeights:
        path = self.path(tenant, prior_id)
        try:
            w = LoRAWeights.load(path, self.dit if check else None, self.base_model)
        except FileNotFoundError:
            raise NotFound(f"prior {prior_id!r} not found: distil it first (PriorService.DistillPrior)") from None
        w.meta.setdefault("uid", f"file-{path.stat().st_mtime_ns}")
        return w

    # --- host ----------------------------------------------------------------------------------------
    def _host_peek(self, tenant: str, prior_id: str) -> LoRAWeights | None:
        with self._host_lock:
            return self._host.get((tenant, prior_id))

    def get(self, tenant: str, prior_id: str) -> tuple[LoRAWeights, str]:
        """The prior in host memory (read from disk if needed); (weights, tier it was found in). Blocking."""
        key = (tenant, prior_id)
        while True:
            with self._host_lock:
                w = self._host.get(key)
                if w is not None:
                    self._host.move_to_end(key)
                    tier = DEVICE if self.slots.slot_of(w.meta["uid"]) is not None else HOST
                    self.loads[tier] += 1
                    return w, tier
                version = self._version[key]
            w = self._read(tenant, prior_id)
            if self._pin:
                w = LoRAWeights(
                    w.rank,
                    {k: v.pin_memory() for k, v in w.a.items()},
                    {k: v.pin_memory() for k, v in w.b.items()},
                    w.meta,
                )
            with self._host_lock:
                if self._version[key] != version:
                    continue  # stored, deleted or unloaded while we read: read again
                self._host[key] = w
                self._uids.setdefault(key, set()).add(w.meta["uid"])
                self._host.move_to_end(key)
                total = sum(v.nbytes for v in self._host.values())
                while total > self.host_bytes and len(self._host) > 1:
                    _, old = self._host.popitem(last=False)
                    total -= old.nbytes
                    self.evictions[HOST] += 1
                self.loads[DISK] += 1
            return w, DISK

    # --- device --------------------------------------------------------------------------------------
    def load(self, tenant: str, prior_id: str) -> tuple[PriorInfo, str, float]:
        """Brings a prior into a device slot; (info, tier it came from, milliseconds)."""
        t0 = time.perf_counter()
        w, tier = self.get(tenant, prior_id)
        with self.slots.lock:
            before = self.slots.installs
            self.slots.ensure(w)
            if self.slots.installs > before and tier == DEVICE:
                tier = HOST
        millis = (time.perf_counter() - t0) * 1000
        return self.info(tenant, prior_id), tier, millis

    def unload(self, tenant: str, prior_id: str) -> PriorInfo:
        if not self.exists(tenant, prior_id):
            raise NotFound(f"prior {prior_id!r} not found")
        self._forget(tenant, prior_id)
        return self.info(tenant, prior_id)

    def _forget(self, tenant: str, prior_id: str) -> None:
        key = (tenant, prior_id)
        with self._host_lock:
            self._version[key] += 1
            self._host.pop(key, None)
            uids = self._uids.pop(key, set())
        for uid in uids:
            self.slots.evict(uid)


def _tenant_dir(tenant: str) -> str:
    # Tenant names come from the server's key file; hex keeps any of them a safe single path component.
    return tenant.encode().hex() or "00"
