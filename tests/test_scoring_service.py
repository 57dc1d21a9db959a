"""ScoringService over gRPC: ScoreStream partials while the caller is still sending, Score, bad streams,
cancellation, and the CRScore judge through an OpenAI-compatible endpoint."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import grpc
import numpy as np
import pytest
from conftest import auth

from kdcvg.data.creatives import make_creative
from kdcvg.media.video import encode_mp4
from kdcvg.v1 import scoring_pb2, scoring_pb2_grpc


@pytest.fixture
async def scoring(channel):
    return scoring_pb2_grpc.ScoringServiceStub(channel)


def clip(seed: int = 3, motion: str | None = None) -> np.ndarray:
    return make_creative(seed, motions=[motion] if motion else None).frames


def options(**kw) -> scoring_pb2.ScoreStreamRequest:
    return scoring_pb2.ScoreStreamRequest(options=scoring_pb2.ScoreOptions(**kw))


def frame_msg(frame: np.ndarray) -> scoring_pb2.ScoreStreamRequest:
    h, w = frame.shape[:2]
    return scoring_pb2.ScoreStreamRequest(frame=scoring_pb2.RawFrame(width=w, height=h, rgb=frame.tobytes()))


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


async def status_of(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if hasattr(call, "__aiter__"):
            [m async for m in call]
        else:
            await call
    return info.value


async def test_partials_arrive_while_the_caller_is_still_sending(scoring, server):
    frames = clip(3, motion="rotate")
    frames = np.concatenate([frames, frames])  # 32 frames
    first_partial = asyncio.Event()
    sent_before_partial = []

    async def requests():
        yield options(metrics=["motionx", "product"], product_image=png(frames[0]), fps=8)
        for i, f in enumerate(frames):
            if i == 20:  # hold the rest back until the server has answered with a partial score
                await asyncio.wait_for(first_partial.wait(), 30)
                sent_before_partial.append(i)
            yield frame_msg(f)

    events = []
    async for event in scoring.ScoreStream(requests(), metadata=auth()):
        events.append(event)
        if event.HasField("partial"):
            first_partial.set()
    assert sent_before_partial == [20]
    partials = [e.partial for e in events if e.HasField("partial")]
    assert {p.name for p in partials} == {"motionx", "product"}
    assert all(p.frames < 32 for p in partials[:2])
    summary = events[-1].summary
    assert summary.frames == 32
    by_name = {m.name: m for m in summary.metrics}
    assert set(by_name) == {"motionx", "product"}
    assert by_name["motionx"].frames == 32
    assert {"amplitude", "smoothness", "activation"} <= set(by_name["motionx"].components)
    assert all(0.0 <= m.value <= 1.0 for m in summary.metrics)
    assert server.scorer.sessions == 0


async def test_encoded_chunks_are_scored_with_every_metric_and_reasons_for_the_rest(scoring):
    c = make_creative(5, motions=["bounce"], overlay_prob=1.0)
    mp4 = encode_mp4(c.frames, fps=8)

    def requests():
        yield options(prompt=c.caption)
        for i in range(0, len(mp4), 4096):
            yield scoring_pb2.ScoreStreamRequest(chunk=mp4[i : i + 4096])

    events = [e async for e in scoring.ScoreStream(requests(), metadata=auth())]
    summary = events[-1].summary
    names = {m.name for m in summary.metrics}
    assert {"motionx", "reward"} <= names
    unavailable = {u.name: u.reason for u in summary.unavailable}
    assert "product_image" in unavailable["product"]
    assert "KDCVG_CRSCORE_URL" in unavailable["crscore"]
    assert names | set(unavailable) == {"motionx", "tsscore", "product", "reward", "crscore"}


async def test_unary_score_matches_the_stream(scoring):
    c = make_creative(8, motions=["slide_left"])
    mp4 = encode_mp4(c.frames, fps=8)
    reply = await scoring.Score(
        scoring_pb2.ScoreRequest(
            options=scoring_pb2.ScoreOptions(metrics=["motionx", "reward"], prompt=c.caption), video=mp4
        ),
        metadata=auth(),
    )
    unary = {m.name: m.value for m in reply.summary.metrics}

    def requests():
        yield options(metrics=["motionx", "reward"], prompt=c.caption)
        yield scoring_pb2.ScoreStreamRequest(chunk=mp4)

    events = [e async for e in scoring.ScoreStream(requests(), metadata=auth())]
    streamed = {m.name: m.value for m in events[-1].summary.metrics}
    assert unary == pytest.approx(streamed)
    assert reply.summary.frames == c.frames.shape[0]


async def test_static_clip_scores_less_motion_than_a_moving_one(scoring):
    moving = clip(4, motion="zoom_in")
    static = np.repeat(moving[:1], len(moving), axis=0)
    values = {}
    for name, frames in (("moving", moving), ("static", static)):
        reply = await scoring.Score(
            scoring_pb2.ScoreRequest(
                options=scoring_pb2.ScoreOptions(metrics=["motionx"]), video=encode_mp4(frames, fps=8)
            ),
            metadata=auth(),
        )
        values[name] = reply.summary.metrics[0].value
    assert values["static"] < values["moving"]


BAD_STREAMS = {
    "no options first": (lambda f: [frame_msg(f[0])], grpc.StatusCode.INVALID_ARGUMENT, "first ScoreStream message"),
    "unknown metric": (lambda f: [options(metrics=["beauty"])], grpc.StatusCode.INVALID_ARGUMENT, "valid: motionx"),
    "zero frames": (lambda f: [options()], grpc.StatusCode.INVALID_ARGUMENT, "no frames"),
    "changing size": (
        lambda f: [options(), frame_msg(f[0]), frame_msg(np.zeros((32, 48, 3), np.uint8))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "same size",
    ),
    "short rgb": (
        lambda f: [options(), scoring_pb2.ScoreStreamRequest(frame=scoring_pb2.RawFrame(width=8, height=8, rgb=b"x"))],
        grpc.StatusCode.INVALID_ARGUMENT,
        "width*height*3",
    ),
    "not a video": (
        lambda f: [options(), scoring_pb2.ScoreStreamRequest(chunk=b"hello, this is not a video" * 10)],
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a readable video",
    ),
    "frames and chunks": (
        lambda f: [options(), frame_msg(f[0]), scoring_pb2.ScoreStreamRequest(chunk=b"x")],
        grpc.StatusCode.INVALID_ARGUMENT,
        "not both",
    ),
    "options twice": (lambda f: [options(), options()], grpc.StatusCode.INVALID_ARGUMENT, "once"),
    "too many frames": (lambda f: [options(), *[frame_msg(f[0])] * 257], grpc.StatusCode.RESOURCE_EXHAUSTED, "256"),
    "oversized file": (
        lambda f: [options(), *[scoring_pb2.ScoreStreamRequest(chunk=b"\0" * (1 << 20))] * 3],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "limit",
    ),
    "huge frames": (
        lambda f: [options(), frame_msg(np.zeros((720, 1400, 3), np.uint8))],
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "pixels",
    ),
    "bad product image": (
        lambda f: [options(metrics=["product"], product_image=b"not an image")],
        grpc.StatusCode.INVALID_ARGUMENT,
        "product_image",
    ),
    "bad fps": (lambda f: [options(fps=-1)], grpc.StatusCode.INVALID_ARGUMENT, "fps"),
}


@pytest.mark.parametrize("case", list(BAD_STREAMS))
async def test_bad_streams_end_with_a_clear_status(scoring, server, case):
    make, code, fragment = BAD_STREAMS[case]
    err = await status_of(scoring.ScoreStream(iter(make(clip(1))), metadata=auth()))
    assert err.code() == code, err.details()
    assert fragment in err.details()
    assert server.scorer.sessions == 0


async def test_bad_unary_requests(scoring):
    cases = [
        (scoring_pb2.ScoreRequest(), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (scoring_pb2.ScoreRequest(video=b"GIF89a not really"), grpc.StatusCode.INVALID_ARGUMENT, "not a readable"),
        (
            scoring_pb2.ScoreRequest(options=scoring_pb2.ScoreOptions(metrics=["nope"]), video=b"x"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown metric",
        ),
    ]
    for request, code, fragment in cases:
        err = await status_of(scoring.Score(request, metadata=auth()))
        assert err.code() == code
        assert fragment in err.details()


async def test_scoring_needs_an_api_key(scoring):
    err = await status_of(scoring.Score(scoring_pb2.ScoreRequest(video=b"x")))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    err = await status_of(scoring.ScoreStream(silent_stream()))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED


async def silent_stream():
    """A request stream that sends nothing: the server refuses the call on its metadata alone. (A message
    written while that refusal is in flight can fail on the client, which grpc reports as INTERNAL.)"""
    await asyncio.Event().wait()
    yield options()


async def test_cancelling_a_stream_frees_its_session(scoring, server):
    frames = clip(2)
    stop = asyncio.Event()

    async def requests():
        yield options(metrics=["motionx"])
        for f in frames:
            yield frame_msg(f)
        await stop.wait()  # the caller never closes its side

    call = scoring.ScoreStream(requests(), metadata=auth())
    async for event in call:
        assert event.HasField("partial")
        break
    assert server.scorer.sessions == 1
    call.cancel()
    for _ in range(100):
        if server.scorer.sessions == 0:
            break
        await asyncio.sleep(0.02)
    assert server.scorer.sessions == 0
    stop.set()


# --- CRScore ---------------------------------------------------------------------------------------------


class _Judge(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat-completions endpoint that answers fixed scores and records requests."""

    answers: list[str] = []
    seen: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        text = type(self).answers[(len(type(self).seen) - 1) % len(type(self).answers)]
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def judge():
    _Judge.answers, _Judge.seen = ["4", "Score: 5", "3"], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/v1"
    httpd.shutdown()


async def test_crscore_asks_the_configured_judge_n_times_with_8_frames(judge):
    from kdcvg.scoring.crscore import CRScoreClient, CRScoreConfig

    client = CRScoreClient(CRScoreConfig(url=judge, model="judge-model", api_key="sk-test"))
    try:
        result = await client.score(clip(6), "a red bottle that spins")
    finally:
        await client.close()
    assert result.name == "crscore"
    assert result.components["mean_1_to_5"] == pytest.approx(4.0)
    assert result.value == pytest.approx(0.75)
    assert len(_Judge.seen) == 3
    first = _Judge.seen[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sk-test"
    content = first["body"]["messages"][0]["content"]
    assert sum(part["type"] == "image_url" for part in content) == 8
    assert "a red bottle that spins" in content[0]["text"]
    assert {s["body"]["seed"] for s in _Judge.seen} == {0, 1, 2}


async def test_crscore_unreadable_answers_make_it_unavailable_not_a_number(judge):
    from kdcvg.scoring.base import MetricUnavailableError
    from kdcvg.scoring.crscore import CRScoreClient, CRScoreConfig

    _Judge.answers = ["I cannot rate videos."]
    client = CRScoreClient(CRScoreConfig(url=judge))
    try:
        with pytest.raises(MetricUnavailableError, match="could not be read"):
            await client.score(clip(6), "")
    finally:
        await client.close()
    unreachable = CRScoreClient(CRScoreConfig(url="http://127.0.0.1:9/v1", timeout_s=2))
    try:
        with pytest.raises(MetricUnavailableError, match="did not answer"):
            await unreachable.score(clip(6), "")
    finally:
        await unreachable.close()


async def test_crscore_through_the_service_when_configured(settings, encoder, atomizer, judge):
    from kdcvg.app import build_knowledge_base, start

    settings = settings.model_copy(update={"crscore_url": judge})
    kb = build_knowledge_base(settings, encoder=encoder, atomizer=atomizer)
    running = await start(settings, kb, generation=False)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = scoring_pb2_grpc.ScoringServiceStub(ch)
            reply = await stub.Score(
                scoring_pb2.ScoreRequest(
                    options=scoring_pb2.ScoreOptions(metrics=["crscore"]), video=encode_mp4(clip(6), fps=8)
                ),
                metadata=auth(),
            )
    finally:
        await running.stop(0.5)
    (metric,) = reply.summary.metrics
    assert metric.name == "crscore" and metric.value == pytest.approx(0.75)
    assert not reply.summary.unavailable


async def test_scoring_runs_off_the_event_loop(scoring, channel):
    """While a long Score (OCR on every frame) runs, the same server answers other calls."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    c = make_creative(9, overlay_prob=1.0)
    frames = np.concatenate([c.frames, c.frames[::-1]])
    score = asyncio.ensure_future(
        scoring.Score(
            scoring_pb2.ScoreRequest(
                options=scoring_pb2.ScoreOptions(metrics=["tsscore"]), video=encode_mp4(frames, fps=8)
            ),
            metadata=auth(),
        )
    )
    await asyncio.sleep(0.2)  # the Score call is decoded and OCR has started
    health = health_pb2_grpc.HealthStub(channel)
    answered = 0
    for _ in range(5):
        reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        answered += 1
    assert answered == 5 and not score.done()
    reply = await score
    assert reply.summary.metrics[0].name == "tsscore"


def fragmented_mp4(frames: np.ndarray, fps: int = 8) -> bytes:
    """An MP4 that streams: its index comes first and a fragment every 4 frames (as live encoders write)."""
    import io
    from fractions import Fraction

    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4", options={"movflags": "frag_keyframe+empty_moov"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": "18", "g": "4", "keyint_min": "4", "sc_threshold": "0"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")))
        container.mux(stream.encode(None))
    return buf.getvalue()


async def test_a_streamable_upload_is_scored_while_it_uploads(scoring, server):
    frames = np.concatenate([clip(3, motion="rotate")] * 2)  # 32 frames
    data = fragmented_mp4(frames)
    first_partial = asyncio.Event()
    held_back = []

    async def requests():
        yield options(metrics=["motionx"])
        step = len(data) // 10
        for i in range(0, len(data), step):
            if i >= 7 * step and not held_back:  # the last 30% waits for a score of what came before
                await asyncio.wait_for(first_partial.wait(), 30)
                held_back.append(i)
            yield scoring_pb2.ScoreStreamRequest(chunk=data[i : i + step])

    events = []
    async for event in scoring.ScoreStream(requests(), metadata=auth()):
        events.append(event)
        if event.HasField("partial"):
            first_partial.set()
    assert held_back, "the stream ended before the last chunks were sent"
    partials = [e.partial for e in events if e.HasField("partial")]
    assert partials and partials[0].frames < 32
    summary = events[-1].summary
    assert summary.frames == 32 and summary.metrics[0].frames == 32
    assert server.scorer.sessions == 0


async def test_cancelling_an_upload_stops_its_decoder(scoring, server):
    data = fragmented_mp4(clip(2))
    stop = asyncio.Event()

    async def requests():
        yield options(metrics=["motionx"])
        yield scoring_pb2.ScoreStreamRequest(chunk=data[: len(data) // 2])
        await stop.wait()

    before = {t.name for t in threading.enumerate()}
    call = scoring.ScoreStream(requests(), metadata=auth())
    await asyncio.sleep(0.5)
    assert any(t.name == "kdcvg-score-decode" for t in threading.enumerate())
    call.cancel()
    for _ in range(100):
        if server.scorer.sessions == 0 and not any(t.name == "kdcvg-score-decode" for t in threading.enumerate()):
            break
        await asyncio.sleep(0.02)
    assert server.scorer.sessions == 0
    assert not any(t.name == "kdcvg-score-decode" for t in threading.enumerate()) or "kdcvg-score-decode" in before
    stop.set()
