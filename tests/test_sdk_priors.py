"""The Python SDK (kdcvg_client) against a real server: the PriorService methods of both clients, and
Generate's reference_id. The server runs on its own event loop in a thread (as `kdcvg demo` runs it), with a
small randomly initialised video model (test_priors_service's), so distillation and sampling take moments."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import API_KEY, KEYS, MODEL_CACHE, OTHER_KEY, free_port
from test_knowledge_service import clip
from test_priors_service import fake_prior, tiny_model_dir  # noqa: F401 - a fixture

from kdcvg.v1 import prior_pb2
from kdcvg_client import (
    AsyncKdcvgClient,
    InvalidArgument,
    KdcvgClient,
    NotFound,
    ResourceExhausted,
    prior_tier_name,
)
from kdcvg_client._retry import PRIOR, RETRY_CODES

POINTS = ["spins to show every angle", "ice-cold refreshment"]
GEN_OPTIONS = {"steps": 2, "seed": 7}


@contextlib.contextmanager
def prior_server(data_dir, encoder, atomizer, model_dir) -> Iterator:  # noqa: ANN001
    """A running server with the tiny model, generation and priors, on a background thread."""
    from kdcvg.app import assemble_generation, build_knowledge_base
    from kdcvg.cli import background_server
    from kdcvg.config import Settings
    from kdcvg.models.video_model import VideoModel

    settings = Settings(
        data_dir=data_dir,
        port=0,
        metrics_port=free_port(),
        api_keys=KEYS,
        encoder_cache_dir=MODEL_CACHE,
        max_video_bytes=2 * 1024 * 1024,
        log_format="text",
        log_level="WARNING",
        prior_device_slots=2,
        prior_steps=3,
    )
    kb = build_knowledge_base(settings, encoder=encoder, atomizer=atomizer)
    pipeline = assemble_generation(settings, kb, VideoModel.load(model_dir).eval(), kb.encoder)
    with background_server(settings, kb, pipeline) as running:
        yield running


def add_entries(client: KdcvgClient, specs: list[tuple[int, str]]) -> list[str]:
    """Ingests one procedural clip per (seed, motion); returns the entry ids."""
    ids = []
    for seed, motion in specs:
        video, creative = clip(seed, motions=[motion])
        reply = client.ingest(
            video,
            category=creative.category,
            caption=creative.caption,
            selling_points=creative.selling_points,
            motion=creative.motion,
            product=creative.product,
        )
        ids.append(reply.entry.id)
    return ids


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def running(tmp_path_factory, encoder, atomizer, tiny_model_dir):  # noqa: F811
    with prior_server(tmp_path_factory.mktemp("sdk-priors") / "data", encoder, atomizer, tiny_model_dir) as server:
        yield server


@pytest.fixture(scope="module")
def target(running) -> str:
    return f"127.0.0.1:{running.port}"


@pytest.fixture(scope="module")
def client(target) -> Iterator[KdcvgClient]:
    with KdcvgClient(target, api_key=API_KEY) as c:
        yield c


@pytest.fixture(scope="module")
def entries(client) -> list[str]:
    """rotate (distilled by the `distilled` fixture), slide_left (async distillation), zoom_in (cancellations)."""
    return add_entries(client, [(3, "rotate"), (8, "slide_left"), (5, "zoom_in")])


@pytest.fixture(scope="module")
def distilled(client, entries) -> tuple[prior_pb2.Prior, list[prior_pb2.DistillPriorResponse]]:
    events: list[prior_pb2.DistillPriorResponse] = []
    prior = client.distill_prior_wait(entries[0], steps=2, rank=4, seed=5, on_event=events.append)
    return prior, events


def test_retry_table_leaves_distill_alone() -> None:
    for method in ("ListPriors", "LoadPrior", "UnloadPrior"):
        assert RETRY_CODES[PRIOR + method]
    assert PRIOR + "DistillPrior" not in RETRY_CODES


def test_distill_prior_wait_streams_steps_and_returns_the_prior(client, entries, distilled) -> None:
    prior, events = distilled
    assert [(e.step, e.total_steps) for e in events[:-1]] == [(1, 2), (2, 2)]
    assert all(e.loss >= 0 for e in events) and not any(e.HasField("prior") for e in events[:-1])
    assert events[-1].prior == prior
    assert prior.id == entries[0] and prior.rank == 4 and prior.size_bytes > 0
    assert prior_tier_name(prior.tier) == "disk"
    assert client.get(entries[0]).entry.has_prior


def test_list_load_unload(client, distilled) -> None:
    prior, _ = distilled
    assert prior.id in [p.id for p in client.list_priors().priors]
    loaded = client.load_prior(prior.id)
    assert prior_tier_name(loaded.prior.tier) == "device" and loaded.load_millis >= 0
    assert prior_tier_name(loaded.loaded_from) in ("disk", "host")
    again = client.load_prior(prior.id)
    assert prior_tier_name(again.loaded_from) == "device"
    unloaded = client.unload_prior(prior.id)
    assert unloaded.prior.id == prior.id and prior_tier_name(unloaded.prior.tier) == "disk"
    listed = {p.id: p for p in client.iter_priors()}
    assert prior_tier_name(listed[prior.id].tier) == "disk"


async def test_iter_priors_walks_every_page(running, target) -> None:
    # Tenant beta, which no other test here touches: exactly these five priors.
    for i in range(5):
        fake_prior(running, "beta", f"p{i}", seed=i)
    with KdcvgClient(target, api_key=OTHER_KEY) as beta:
        first = beta.list_priors(2)
        assert [p.id for p in first.priors] == ["p0", "p1"] and first.next_page_token
        second = beta.list_priors(2, first.next_page_token)
        assert [p.id for p in second.priors] == ["p2", "p3"]
        assert [p.id for p in beta.iter_priors(page_size=2)] == [f"p{i}" for i in range(5)]
        assert [p.id for p in beta.iter_priors()] == [f"p{i}" for i in range(5)]
        with pytest.raises(InvalidArgument, match="page_size"):
            beta.list_priors(5000)
    async with AsyncKdcvgClient(target, api_key=OTHER_KEY) as beta:
        assert [p.id async for p in beta.iter_priors(page_size=3)] == [f"p{i}" for i in range(5)]
        assert len((await beta.list_priors(page_size=4)).priors) == 4


def test_unknown_prior_raises_not_found(client) -> None:
    with pytest.raises(NotFound, match="distil it first") as info:
        client.load_prior("no-such-prior")
    assert info.value.method == PRIOR + "LoadPrior" and info.value.attempts == 1
    with pytest.raises(NotFound):
        client.unload_prior("no-such-prior")
    with pytest.raises(NotFound, match="no entry"):
        client.distill_prior_wait("a" * 64, steps=2)
    with pytest.raises(InvalidArgument, match="not an entry id"):
        client.distill_prior_wait("abc", steps=2)


async def test_async_client_priors(running, target, entries) -> None:
    seen: list[tuple[int, int]] = []

    async def on_event(event: prior_pb2.DistillPriorResponse) -> None:
        seen.append((event.step, event.total_steps))

    async with AsyncKdcvgClient(target, api_key=API_KEY) as client:
        prior = await client.distill_prior_wait(entries[1], steps=2, rank=2, on_event=on_event)
        assert prior.id == entries[1] and prior.rank == 2 and seen[:2] == [(1, 2), (2, 2)]
        assert entries[1] in [p.id async for p in client.iter_priors()]
        loaded = await client.load_prior(entries[1])
        assert prior_tier_name(loaded.prior.tier) == "device"
        unloaded = await client.unload_prior(entries[1])
        assert prior_tier_name(unloaded.prior.tier) == "disk"
        with pytest.raises(NotFound, match="distil it first"):
            await client.load_prior("no-such-prior")
        with pytest.raises(NotFound, match="no entry"):
            await client.distill_prior_wait("a" * 64, steps=2)


def _no_prior_left(running, entry_id: str, cancelled_before: int) -> None:
    distiller = running.generation.distiller
    assert wait_until(lambda: distiller.running == 0), "the distillation kept running"
    assert distiller.cancelled == cancelled_before + 1
    assert not running.generation.priors.exists("alpha", entry_id)


def test_abandoned_distill_stream_is_cancelled(running, client, entries) -> None:
    entry_id = entries[2]
    distiller = running.generation.distiller
    before = distiller.cancelled
    for event in client.distill_prior(entry_id, steps=2000):
        assert (event.step, event.total_steps) == (1, 2000)
        # One distillation at a time: a second is refused at once, and DistillPrior is never retried.
        with pytest.raises(ResourceExhausted, match="retry") as info:
            client.distill_prior_wait(entries[1], steps=2)
        assert info.value.attempts == 1
        break  # dropping the stream cancels the call
    _no_prior_left(running, entry_id, before)
    assert entry_id not in [p.id for p in client.iter_priors()]
    assert not client.get(entry_id).entry.has_prior


async def test_async_stream_left_early_is_cancelled(running, target, entries) -> None:
    entry_id = entries[2]
    distiller = running.generation.distiller
    assert wait_until(lambda: distiller.running == 0)
    before = distiller.cancelled
    async with AsyncKdcvgClient(target, api_key=API_KEY) as client:
        async with client.distill_prior(entry_id, steps=2000) as stream:
            async for event in stream:
                assert event.step == 1
                break
        _no_prior_left(running, entry_id, before)


def test_generate_with_reference_id_pins_that_entry(running, client, entries) -> None:
    retrieved = client.search(POINTS, limit=1).references[0].entry.id
    pinned = next(e for e in entries if e != retrieved)
    events = list(
        client.generate(
            "sparkling water",
            POINTS,
            category="food_beverages",
            options={**GEN_OPTIONS, "knowledge_mode": "semantic"},
            reference_id=pinned,
        )
    )
    refs = [e.references for e in events if e.HasField("references")]
    assert [r.entry_id for r in refs] == [pinned] and refs[0].prior_id == ""
    assert events[-1].HasField("summary")
    # The default mode is FULL when the pinned reference has a prior.
    fake_prior(running, "alpha", pinned, seed=3)
    video = client.generate_video(
        "sparkling water", POINTS, category="food_beverages", options=GEN_OPTIONS, reference_id=pinned
    )
    assert video.references[0].entry_id == pinned and video.references[0].prior_id == pinned
    assert video.mp4 and video.summary.video_bytes == len(video.mp4)
    with pytest.raises(NotFound, match="no entry"):
        client.generate_video("sparkling water", POINTS, category="food_beverages", reference_id="b" * 64)


async def test_async_generate_with_reference_id(target, entries) -> None:
    async with AsyncKdcvgClient(target, api_key=API_KEY) as client:
        for pinned in entries[:2]:
            video = await client.generate_video(
                "sparkling water",
                POINTS,
                category="food_beverages",
                options={**GEN_OPTIONS, "knowledge_mode": "semantic"},
                reference_id=pinned,
            )
            assert [r.entry_id for r in video.references] == [pinned]
        stream = client.generate(
            "sparkling water", POINTS, category="food_beverages", options=GEN_OPTIONS, reference_id="c" * 64
        )
        with pytest.raises(NotFound):
            async for _ in stream:
                pass
