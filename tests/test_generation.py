"""GenerationService.Generate over real gRPC: event order, the MP4, semantic references, batching across
requests, the in-flight limit, early deadline refusal, cancellation within one step, bad inputs.

The mechanics are tested on a small randomly initialised VideoModel of the shipped architecture (what it
draws does not matter here); the shipped weights' quality is measured by bench/video_model.py."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest
from conftest import auth

from kdcvg.media.video import decode_video
from kdcvg.v1 import generation_pb2, generation_pb2_grpc


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import torch

    from kdcvg.models.autoencoder import AutoencoderConfig
    from kdcvg.models.stdit import STDiTConfig
    from kdcvg.models.video_model import VideoModel

    torch.manual_seed(0)
    model = VideoModel(AutoencoderConfig(), STDiTConfig(hidden=32, depth=1, heads=2))
    return model.save(tmp_path_factory.mktemp("tiny-model"))


def make_pipeline(kb, model_dir, *, max_jobs: int = 8, max_rows: int = 16):
    from kdcvg.generation.pipeline import GenerationPipeline
    from kdcvg.generation.sampler import BatchedSampler
    from kdcvg.models.video_model import VideoModel

    model = VideoModel.load(model_dir).eval()
    sampler = BatchedSampler(model, max_rows=max_rows, max_jobs=max_jobs)
    sampler.calibrate()
    return GenerationPipeline(kb=kb, text_encoder=kb.encoder, model=model, sampler=sampler)


@pytest.fixture
async def gen_server(settings, encoder, atomizer, tiny_model_dir):
    from kdcvg.app import build_knowledge_base, start

    kb = build_knowledge_base(settings, encoder=encoder, atomizer=atomizer)
    running = await start(settings, kb, generation=make_pipeline(kb, tiny_model_dir))
    yield running
    await running.stop(0.5)


@pytest.fixture
async def stub(gen_server):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gen_server.port}") as ch:
        yield generation_pb2_grpc.GenerationServiceStub(ch)


def request(mode=generation_pb2.KNOWLEDGE_MODE_OFF, **options) -> generation_pb2.GenerateRequest:
    return generation_pb2.GenerateRequest(
        product="sparkling water",
        selling_points=["spins to show every angle", "ice-cold refreshment"],
        options=generation_pb2.GenerateOptions(knowledge_mode=mode, **{"steps": 4, "seed": 7, **options}),
    )


async def collect(call) -> list[generation_pb2.GenerateResponse]:
    return [event async for event in call]


async def test_generate_streams_progress_video_and_summary(stub):
    events = await collect(stub.Generate(request(steps=5), metadata=auth()))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "summary"
    progress = [e.progress for e in events if e.HasField("progress")]
    sampled = [(p.step, p.total_steps) for p in progress if p.stage == "sample"]
    assert sampled == [(i, 5) for i in range(1, 6)]
    chunks = [e.video for e in events if e.HasField("video")]
    assert [c.offset for c in chunks] == [sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))]
    assert chunks[-1].last and not any(c.last for c in chunks[:-1]) and chunks[0].mime_type == "video/mp4"
    video = b"".join(c.data for c in chunks)
    summary = events[-1].summary
    assert summary.sha256 == hashlib.sha256(video).hexdigest() and summary.video_bytes == len(video)
    assert summary.seed == 7 and (summary.frames, summary.width, summary.height) == (16, 64, 64)
    assert {"encode", "sample", "decode", "mux", "total"} <= set(summary.stage_millis)
    decoded = decode_video(video)
    assert decoded.frames.shape == (16, 64, 64, 3)
    # The same seed gives the same video.
    again = await collect(stub.Generate(request(steps=5), metadata=auth()))
    assert again[-1].summary.sha256 == summary.sha256


async def test_generate_attaches_scores_before_the_summary(stub, gen_server):
    events = await collect(stub.Generate(request(steps=3, score=True), metadata=auth()))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-2:] == ["scores", "summary"]
    scores = events[-2].scores
    assert scores.frames == 16
    names = {m.name for m in scores.metrics}
    assert {"motionx", "reward"} <= names
    assert all(0.0 <= m.value <= 1.0 for m in scores.metrics)
    assert "product" in {u.name for u in scores.unavailable}
    assert "score" in events[-1].summary.stage_millis
    assert gen_server.scorer.sessions == 0


async def test_semantic_mode_names_its_reference(stub, gen_server):
    from test_knowledge_service import clip, ingest

    from kdcvg.v1 import knowledge_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gen_server.port}") as ch:
        kstub = knowledge_pb2_grpc.KnowledgeServiceStub(ch)
        video, creative = clip(3, motions=["rotate"])
        entry = (await ingest(kstub, video, creative)).entry
    events = await collect(stub.Generate(request(mode=generation_pb2.KNOWLEDGE_MODE_SEMANTIC), metadata=auth()))
    assert events[0].WhichOneof("event") == "references"
    ref = events[0].references
    assert ref.entry_id == entry.id and ref.caption == creative.caption and ref.retrieval_id
    assert ref.score.score == pytest.approx(ref.score.total_similarity + ref.score.unit_score, abs=1e-4)
    assert events[-1].HasField("summary")


async def test_concurrent_requests_share_sampler_steps(stub, gen_server):
    sampler = gen_server.generation.sampler
    before_steps, before_rows = sampler.steps_run, sampler.rows_run
    results = await asyncio.gather(
        *(collect(stub.Generate(request(steps=6, seed=s), metadata=auth())) for s in (1, 2, 3, 4))
    )
    assert all(r[-1].HasField("summary") for r in results)
    steps, rows = sampler.steps_run - before_steps, sampler.rows_run - before_rows
    assert rows == 4 * 6 * 2  # every request's 6 guided steps ran, cond + uncond rows
    assert steps < 4 * 6  # ... in fewer forward passes than one request at a time


async def test_in_flight_limit_answers_resource_exhausted(settings, encoder, atomizer, tiny_model_dir):
    from kdcvg.app import build_knowledge_base, start

    kb = build_knowledge_base(settings, encoder=encoder, atomizer=atomizer)
    running = await start(settings, kb, generation=make_pipeline(kb, tiny_model_dir, max_jobs=1))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            s = generation_pb2_grpc.GenerationServiceStub(ch)
            long_call = s.Generate(request(steps=200), metadata=auth())
            first = await long_call.read()
            assert first.HasField("progress")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await collect(s.Generate(request(steps=3), metadata=auth()))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "in flight" in info.value.details()
            long_call.cancel()
    finally:
        await running.stop(0.5)


async def test_cancel_stops_sampling_within_a_step(stub, gen_server):
    sampler = gen_server.generation.sampler
    call = stub.Generate(request(steps=200), metadata=auth())
    for _ in range(3):
        assert (await call.read()).HasField("progress")
    call.cancel()
    for _ in range(100):
        if sampler.in_flight == 0:
            break
        await asyncio.sleep(0.02)
    assert sampler.in_flight == 0
    steps = sampler.steps_run
    await asyncio.sleep(0.3)
    assert sampler.steps_run <= steps + 1


async def test_deadline_that_cannot_be_met_is_refused_early(stub, gen_server):
    sampler = gen_server.generation.sampler
    estimate = sampler.estimate_seconds(200)
    assert estimate > 0
    before = sampler.steps_run
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub.Generate(request(steps=200), metadata=auth(), timeout=estimate / 4))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "needs about" in info.value.details() or info.value.details() == "Deadline Exceeded"
    assert sampler.steps_run == before


@pytest.mark.parametrize(
    ("changes", "code", "fragment"),
    [
        ({"product": ""}, grpc.StatusCode.INVALID_ARGUMENT, "product is empty"),
        ({"product": "p" * 201}, grpc.StatusCode.INVALID_ARGUMENT, "product is longer"),
        ({"selling_points": []}, grpc.StatusCode.INVALID_ARGUMENT, "selling_points is empty"),
        ({"steps": 500}, grpc.StatusCode.INVALID_ARGUMENT, "steps 500"),
        ({"guidance": 40.0}, grpc.StatusCode.INVALID_ARGUMENT, "guidance"),
        ({"frames": 32}, grpc.StatusCode.INVALID_ARGUMENT, "16 frames of 64x64"),
        ({"fps": 200}, grpc.StatusCode.INVALID_ARGUMENT, "fps"),
        ({"knowledge_mode": generation_pb2.KNOWLEDGE_MODE_FULL}, grpc.StatusCode.FAILED_PRECONDITION, "knowledge mode"),
        ({"prior_scale": 9.0}, grpc.StatusCode.INVALID_ARGUMENT, "prior_scale"),
        ({"knowledge_mode": 9}, grpc.StatusCode.INVALID_ARGUMENT, "knowledge mode"),
        ({"category": 77}, grpc.StatusCode.INVALID_ARGUMENT, "unknown category"),
    ],
)
async def test_bad_requests(stub, changes, code, fragment):
    req = request()
    for key, value in changes.items():
        if key in ("product", "category"):
            setattr(req, key, value)
        elif key == "selling_points":
            del req.selling_points[:]
        else:
            setattr(req.options, key, value)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub.Generate(req, metadata=auth()))
    assert info.value.code() == code, info.value.details()
    assert fragment.lower() in info.value.details().lower()


async def test_generate_needs_an_api_key(stub):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(stub.Generate(request()))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
