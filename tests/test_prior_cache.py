"""The motion-prior cache: disk store per tenant, host LRU under a byte cap, device slots (LRU, protected
uids, atomic swaps under the slot lock), versions, deletion, bad ids and corrupt files."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from kdcvg.errors import NotFound
from kdcvg.models.stdit import STDiT, STDiTConfig
from kdcvg.priors.cache import DEVICE, DISK, HOST, DeviceSlots, PriorCache, PriorInfo, SlotsBusy
from kdcvg.priors.lora import LoRAWeights, PriorFileError, attach, fingerprint

HIDDEN = 32
RANK = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def dit() -> STDiT:
    torch.manual_seed(0)
    cfg = STDiTConfig(
        in_channels=4, latent_frames=4, latent_height=4, latent_width=4, hidden=HIDDEN, depth=1, heads=2, text_dim=16
    )
    model = STDiT(cfg).eval()
    attach(model)
    return model


@pytest.fixture
def cache(tmp_path: Path, dit: STDiT) -> PriorCache:
    return PriorCache(tmp_path / "priors", dit, device_slots=2)


def lora(dit: nn.Module, seed: int, rank: int = RANK, **meta: str) -> LoRAWeights:
    g = torch.Generator().manual_seed(seed)
    w = LoRAWeights.init(dit, rank, generator=g).detached()
    for name in w.a:
        w.a[name] = torch.randn(w.a[name].shape, generator=g)
        w.b[name] = torch.randn(w.b[name].shape, generator=g)
    w.meta = dict(meta)
    return w


def same(x: LoRAWeights, y: LoRAWeights) -> bool:
    return (
        x.rank == y.rank
        and x.a.keys() == y.a.keys()
        and all(torch.equal(x.a[k], y.a[k]) and torch.equal(x.b[k], y.b[k]) for k in x.a)
    )


def slot_holds(slots: DeviceSlots, slot: int, w: LoRAWeights) -> bool:
    """The slot's stacks are exactly `w`, zero-padded to the slots' rank."""
    r = w.rank
    for k in slots.a:
        a, b = slots.a[k][slot], slots.b[k][slot]
        if not (torch.equal(a[:r], w.a[k]) and torch.equal(b[:, :r], w.b[k])):
            return False
        if torch.count_nonzero(a[r:]) or torch.count_nonzero(b[:, r:]):
            return False
    return True


# --- tiers ------------------------------------------------------------------------------------------------


def test_store_list_get_load_walks_the_tiers(cache: PriorCache, dit: STDiT) -> None:
    original = lora(dit, 1, final_loss="0.25")
    stored = cache.store("alpha", "p1", original)
    assert same(stored, original)
    assert stored.meta["id"] == "p1" and stored.meta["base_model"] == fingerprint(dit) == cache.base_model
    assert stored.meta["final_loss"] == "0.25" and len(stored.meta["uid"]) == 32
    assert "uid" not in original.meta  # the caller's copy is not changed
    assert cache.exists("alpha", "p1") and cache.path("alpha", "p1").is_file()
    assert cache.path("alpha", "p1").is_relative_to(cache.root)

    assert cache.list("alpha") == [PriorInfo("p1", RANK, DISK, original.nbytes, 0.25)]
    assert cache.tier("alpha", "p1") == DISK

    w, tier = cache.get("alpha", "p1")
    assert tier == DISK and same(w, original) and w.meta["uid"] == stored.meta["uid"]
    assert cache.loads[DISK] == 1 and cache.tier("alpha", "p1") == HOST
    w2, tier = cache.get("alpha", "p1")
    assert tier == HOST and w2 is w and cache.loads[HOST] == 1 and cache.loads[DISK] == 1

    info, tier, millis = cache.load("alpha", "p1")
    assert tier == HOST and millis >= 0
    assert info == PriorInfo("p1", RANK, DEVICE, original.nbytes, 0.25)
    slot = cache.slots.slot_of(stored.meta["uid"])
    assert slot is not None and slot_holds(cache.slots, slot, original)
    assert cache.slots.installs == 1

    info, tier, _ = cache.load("alpha", "p1")
    assert tier == DEVICE and info.tier == DEVICE and cache.slots.installs == 1
    assert cache.loads[DEVICE] == 1
    assert cache.list("alpha")[0].tier == DEVICE


def test_load_straight_from_disk(cache: PriorCache, dit: STDiT) -> None:
    cache.store("alpha", "p1", lora(dit, 1))
    info, tier, _ = cache.load("alpha", "p1")
    assert tier == DISK and info.tier == DEVICE and cache.loads == {DISK: 1}


def test_device_slots_replace_the_least_recently_used(cache: PriorCache, dit: STDiT) -> None:
    ws = {p: cache.store("alpha", p, lora(dit, i)) for i, p in enumerate(["p1", "p2", "p3"])}
    cache.load("alpha", "p1")
    cache.load("alpha", "p2")
    cache.load("alpha", "p1")  # p2 is now the least recently used
    _, tier, _ = cache.load("alpha", "p3")  # a third prior in two slots: replaces, never an error
    assert tier == DISK
    assert [cache.tier("alpha", p) for p in ("p1", "p2", "p3")] == [DEVICE, HOST, DEVICE]
    assert sorted(cache.slots.uids) == sorted([ws["p1"].meta["uid"], ws["p3"].meta["uid"]])
    assert slot_holds(cache.slots, cache.slots.slot_of(ws["p3"].meta["uid"]), ws["p3"])
    assert slot_holds(cache.slots, cache.slots.slot_of(ws["p1"].meta["uid"]), ws["p1"])
    _, tier, _ = cache.load("alpha", "p2")  # back in, over p1 (p3 was used last)
    assert tier == HOST and cache.tier("alpha", "p1") == HOST and cache.slots.installs == 4


def test_lower_rank_prior_replacing_a_higher_one_is_zero_padded(cache: PriorCache, dit: STDiT) -> None:
    big = cache.store("alpha", "big", lora(dit, 1, rank=8))
    small = cache.store("alpha", "small", lora(dit, 2, rank=2))
    slots = cache.slots
    with slots.lock:
        slot, hit = slots.ensure(big)
        assert not hit
        slots.evict(big.meta["uid"])
        again, hit = slots.ensure(small)
    assert again == slot and not hit
    assert slot_holds(slots, slot, small)  # nothing of `big` is left beyond rank 2


def test_ensure_never_replaces_protected_slots(cache: PriorCache, dit: STDiT) -> None:
    ws = [cache.store("alpha", f"p{i}", lora(dit, i)) for i in range(3)]
    slots = cache.slots
    with slots.lock:
        s0, hit0 = slots.ensure(ws[0])
        s1, _ = slots.ensure(ws[1])
        assert s0 != s1 and not hit0
        assert slots.ensure(ws[0]) == (s0, True)
        uids = list(slots.uids)
        with pytest.raises(SlotsBusy, match="all 2 device slots"):
            slots.ensure(ws[2], protect={ws[0].meta["uid"], ws[1].meta["uid"]})
        assert slots.uids == uids and slot_holds(slots, s0, ws[0]) and slot_holds(slots, s1, ws[1])
        # ws[0] is the most recently used, but only ws[1] may go.
        slot, hit = slots.ensure(ws[2], protect={ws[1].meta["uid"]})
        assert slot == s0 and not hit
        assert slot_holds(slots, s0, ws[2])
    assert slots.evict(ws[1].meta["uid"]) and not slots.evict(ws[1].meta["uid"])
    with pytest.raises(ValueError, match="at least one"):
        DeviceSlots(cache.dit, 0, 2)


def test_slot_rank_limits(tmp_path: Path, dit: STDiT) -> None:
    assert PriorCache(tmp_path / "a", dit, rank=1000).slot_rank == HIDDEN  # clamped to the narrowest layer
    narrow = PriorCache(tmp_path / "b", dit, rank=2)
    assert all(v.shape == (8, 2, HIDDEN) for v in narrow.slots.a.values())
    narrow.store("alpha", "p", lora(dit, 1, rank=RANK))
    with pytest.raises(PriorFileError, match="rank 4 is above the device slots' rank 2"):
        narrow.load("alpha", "p")
    assert narrow.slots.uids == [None] * 8


def test_batch_from_slots(cache: PriorCache, dit: STDiT) -> None:
    w = cache.store("alpha", "p", lora(dit, 1))
    with cache.slots.lock:
        slot, _ = cache.slots.ensure(w)
        batch = cache.slots.batch([slot, -1], [1.0, 0.5])
    assert batch.a is cache.slots.a and batch.index.tolist() == [slot, -1] and batch.scale.tolist() == [1.0, 0.5]


# --- host memory --------------------------------------------------------------------------------------------


def test_host_byte_cap_evicts_least_recently_used(tmp_path: Path, dit: STDiT) -> None:
    size = lora(dit, 0).nbytes
    cache = PriorCache(tmp_path / "priors", dit, device_slots=2, host_bytes=2 * size)
    ws = {p: cache.store("alpha", p, lora(dit, i)) for i, p in enumerate(["p1", "p2", "p3"])}
    cache.get("alpha", "p1")
    cache.get("alpha", "p2")
    cache.get("alpha", "p1")  # p2 is now the least recently used
    cache.get("alpha", "p3")
    assert cache.evictions[HOST] == 1
    assert [cache.tier("alpha", p) for p in ("p1", "p2", "p3")] == [HOST, DISK, HOST]
    w, tier = cache.get("alpha", "p2")  # reloads from disk, intact
    assert tier == DISK and same(w, ws["p2"]) and w.meta["uid"] == ws["p2"].meta["uid"]
    assert cache.evictions[HOST] == 2 and cache.tier("alpha", "p1") == DISK
    assert cache.loads[DISK] == 4 and cache.loads[HOST] == 1


def test_host_keeps_one_entry_larger_than_the_cap(tmp_path: Path, dit: STDiT) -> None:
    cache = PriorCache(tmp_path / "priors", dit, host_bytes=1)
    cache.store("alpha", "p1", lora(dit, 1))
    cache.get("alpha", "p1")
    assert cache.tier("alpha", "p1") == HOST and cache.evictions[HOST] == 0


# --- versions, deletion ---------------------------------------------------------------------------------------


def test_new_version_drops_the_old_one_from_host_and_slots(cache: PriorCache, dit: STDiT) -> None:
    old = cache.store("alpha", "p1", lora(dit, 1))
    cache.load("alpha", "p1")
    old_slot = cache.slots.slot_of(old.meta["uid"])
    assert old_slot is not None
    new = cache.store("alpha", "p1", lora(dit, 2, rank=2))
    assert new.meta["uid"] != old.meta["uid"]
    assert cache.slots.slot_of(old.meta["uid"]) is None and cache.tier("alpha", "p1") == DISK
    w, tier = cache.get("alpha", "p1")
    assert tier == DISK and same(w, new) and w.meta["uid"] == new.meta["uid"]
    info, _, _ = cache.load("alpha", "p1")
    assert info.rank == 2 and info.tier == DEVICE
    assert slot_holds(cache.slots, cache.slots.slot_of(new.meta["uid"]), new)
    assert len(cache.list("alpha")) == 1


def test_delete_removes_file_and_tiers(cache: PriorCache, dit: STDiT) -> None:
    w = cache.store("alpha", "p1", lora(dit, 1))
    cache.store("alpha", "p2", lora(dit, 2))
    cache.load("alpha", "p1")
    assert cache.delete("alpha", "p1") is True
    assert not cache.path("alpha", "p1").exists() and not cache.exists("alpha", "p1")
    assert cache.slots.slot_of(w.meta["uid"]) is None
    assert [p.id for p in cache.list("alpha")] == ["p2"]
    for call in (cache.get, cache.load, cache.info, cache.unload):
        with pytest.raises(NotFound, match="p1"):
            call("alpha", "p1")
    assert cache.delete("alpha", "p1") is False


def test_unload_frees_the_slot_and_keeps_the_file(cache: PriorCache, dit: STDiT) -> None:
    w = cache.store("alpha", "p1", lora(dit, 1))
    cache.load("alpha", "p1")
    info = cache.unload("alpha", "p1")
    assert info.tier == DISK and cache.slots.slot_of(w.meta["uid"]) is None and cache.exists("alpha", "p1")
    _, tier, _ = cache.load("alpha", "p1")
    assert tier == DISK


def test_unknown_and_unsafe_ids_are_not_found(cache: PriorCache, dit: STDiT, tmp_path: Path) -> None:
    for call in (cache.get, cache.load, cache.info, cache.unload):
        with pytest.raises(NotFound, match="nope"):
            call("alpha", "nope")
    assert cache.delete("alpha", "nope") is False and not cache.exists("alpha", "nope")
    w = lora(dit, 1)
    outside = tmp_path / "escape.safetensors"
    for bad in ("../escape", "..", ".", "", "a/b", "a\\b", "/etc/passwd", "x" * 129, "sp ace", "nul\x00"):
        for call in (cache.get, cache.load, cache.delete, cache.exists):
            with pytest.raises(NotFound):
                call("alpha", bad)
        with pytest.raises(NotFound):
            cache.store("alpha", bad, w)
    assert not outside.exists() and not list(tmp_path.glob("*.safetensors"))
    assert cache.list("alpha") == []


def test_corrupt_file_is_a_prior_file_error(cache: PriorCache, dit: STDiT) -> None:
    cache.store("alpha", "good", lora(dit, 1))
    bad = cache.path("alpha", "bad")
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(PriorFileError, match="bad.safetensors is not a readable LoRA file"):
        cache.get("alpha", "bad")
    with pytest.raises(PriorFileError):
        cache.load("alpha", "bad")
    assert [p.id for p in cache.list("alpha")] == ["good"]  # listings skip it
    assert cache.tier("alpha", "bad") == DISK and cache.slots.uids == [None, None]
    # A LoRA of another base model (a valid file of other shapes) is refused when loaded too.
    other = STDiT(STDiTConfig(in_channels=4, latent_frames=4, latent_height=4, latent_width=4, hidden=16, depth=1))
    attach(other)
    lora(other, 1, base_model=fingerprint(other)).save(cache.path("alpha", "foreign"))
    with pytest.raises(PriorFileError, match=r"has A \(4, 16\).*needs A \(4, 32\)"):
        cache.get("alpha", "foreign")


def test_tenants_do_not_see_each_other(cache: PriorCache, dit: STDiT) -> None:
    a = cache.store("alpha", "p1", lora(dit, 1))
    assert cache.list("beta") == [] and not cache.exists("beta", "p1")
    for call in (cache.get, cache.load, cache.info):
        with pytest.raises(NotFound):
            call("beta", "p1")
    assert cache.delete("beta", "p1") is False and cache.exists("alpha", "p1")
    b = cache.store("beta", "p1", lora(dit, 2))
    assert same(cache.get("alpha", "p1")[0], a) and same(cache.get("beta", "p1")[0], b)
    cache.load("alpha", "p1")
    assert cache.tier("alpha", "p1") == DEVICE and cache.tier("beta", "p1") == HOST
    # A tenant name with path characters stays one directory under the root.
    cache.store("../evil", "p1", lora(dit, 3))
    assert cache.path("../evil", "p1").parent.parent == cache.root
    assert [p.id for p in cache.list("../evil")] == ["p1"] and len(cache.list("alpha")) == 1


# --- atomic swaps ---------------------------------------------------------------------------------------------


def test_slot_contents_do_not_change_while_the_lock_is_held(tmp_path: Path, dit: STDiT) -> None:
    cache = PriorCache(tmp_path / "priors", dit, device_slots=1)
    cache.store("alpha", "a", lora(dit, 1, rank=4))
    cache.store("alpha", "b", lora(dit, 2, rank=2))  # a lower rank: the swap must also clear the padding
    ws = {w.meta["uid"]: w for w in (cache.get("alpha", p)[0] for p in "ab")}
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            i = 0
            while not stop.is_set():
                cache.load("alpha", "ab"[i % 2])
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    th = threading.Thread(target=hammer, daemon=True)
    th.start()
    slots = cache.slots
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 10
        checks = 0
        while (checks < 30 or len(seen) < 2) and time.monotonic() < deadline:
            with slots.lock:
                uid = slots.uids[0]
                first = ({k: v[0].clone() for k, v in slots.a.items()}, {k: v[0].clone() for k, v in slots.b.items()})
                time.sleep(0.002)  # the loader is trying to swap meanwhile
                assert slots.uids[0] == uid
                for k in slots.a:
                    assert torch.equal(slots.a[k][0], first[0][k]) and torch.equal(slots.b[k][0], first[1][k])
                if uid is not None:
                    assert slot_holds(slots, 0, ws[uid])  # a whole prior, never a mix of two
                    seen.add(uid)
            checks += 1
            time.sleep(0.001)
    finally:
        stop.set()
        th.join(timeout=10)
    assert not errors
    assert seen == set(ws) and slots.installs > 2


# --- regressions: a prior evicted from host memory, and a store racing a disk read ---------------------------


def test_forget_reaches_device_slots_after_host_eviction(tmp_path: Path, dit: STDiT) -> None:
    cache = PriorCache(tmp_path / "priors", dit, device_slots=2, host_bytes=lora(dit, 0).nbytes)
    old = cache.store("alpha", "p1", lora(dit, 1))
    cache.store("alpha", "p2", lora(dit, 2))
    cache.load("alpha", "p1")
    cache.get("alpha", "p2")  # the host cap drops p1's host copy; its device slot stays
    assert cache.slots.slot_of(old.meta["uid"]) is not None
    info = cache.unload("alpha", "p1")
    assert info.tier == DISK
    assert cache.slots.slot_of(old.meta["uid"]) is None  # fails: UnloadPrior left it in the device slot


def test_store_during_a_disk_read_is_not_undone(tmp_path: Path, dit: STDiT) -> None:
    reading, release = threading.Event(), threading.Event()

    class PausingCache(PriorCache):
        """Pauses the reader thread just after its disk read, to open the window deterministically."""

        def _read(self, tenant: str, prior_id: str, *, check: bool = True) -> LoRAWeights:
            w = super()._read(tenant, prior_id, check=check)
            if threading.current_thread().name == "reader":
                reading.set()
                release.wait(10)
            return w

    cache = PausingCache(tmp_path / "priors", dit, device_slots=2)
    cache.store("alpha", "p", lora(dit, 1))
    th = threading.Thread(target=cache.get, args=("alpha", "p"), name="reader")
    th.start()
    assert reading.wait(10)
    new = cache.store("alpha", "p", lora(dit, 2))  # a re-distilled version lands mid-read
    release.set()
    th.join(10)
    w, _ = cache.get("alpha", "p")
    assert w.meta["uid"] == new.meta["uid"]  # fails: the host holds (and serves) the old version
