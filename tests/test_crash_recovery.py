"""Kill the server (SIGKILL) in the middle of a 200-clip ingest, restart it: every acknowledged clip is
there and searchable, none is duplicated, and finishing the ingest gives exactly 200 entries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from conftest import MODEL_CACHE, free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kdcvg.data.creatives import make_creative
from kdcvg.media.video import encode_mp4
from kdcvg.v1 import common_pb2, knowledge_pb2, knowledge_pb2_grpc

pytestmark = pytest.mark.slow
KEY = "crash-key"
N_CLIPS = 200
KILL_AFTER = 70


def start_server(data_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = os.environ | {
        "KDCVG_DATA_DIR": str(data_dir),
        "KDCVG_PORT": str(port),
        "KDCVG_METRICS_PORT": "0",
        "KDCVG_API_KEYS": f'{{"{KEY}": "crash"}}',
        "KDCVG_ENCODER_CACHE_DIR": str(MODEL_CACHE),
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdcvg.cli", "serve"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                channel.close()
                return proc
        except grpc.RpcError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not become healthy:\n" + log.read_text()[-3000:])


def messages(video: bytes, creative) -> list[knowledge_pb2.IngestRequest]:
    meta = knowledge_pb2.IngestMetadata(
        category=common_pb2.Category.Value("CATEGORY_" + creative.category.upper()),
        caption=creative.caption,
        selling_points=creative.selling_points,
        motion=creative.motion,
        total_bytes=len(video),
    )
    return [knowledge_pb2.IngestRequest(metadata=meta), knowledge_pb2.IngestRequest(chunk=video)]


def test_kill_mid_ingest_then_restart(tmp_path):
    import hashlib

    clips = []
    for seed in range(N_CLIPS):
        creative = make_creative(50_000 + seed)
        video = encode_mp4(creative.frames, fps=creative.spec.fps)
        clips.append((hashlib.sha256(video).hexdigest(), video, creative))
    assert len({c[0] for c in clips}) == N_CLIPS
    data, port, log = tmp_path / "data", free_port(), tmp_path / "server.log"
    md = (("authorization", f"Bearer {KEY}"),)

    server = start_server(data, port, log)
    acked: list[str] = []
    killed = threading.Event()

    def ingest_all() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
            for sha, video, creative in clips:
                try:
                    reply = stub.Ingest(iter(messages(video, creative)), metadata=md, timeout=30)
                except grpc.RpcError:
                    assert killed.is_set(), "ingest failed before the kill"
                    return
                assert reply.entry.id == sha
                acked.append(sha)

    writer = threading.Thread(target=ingest_all)
    writer.start()
    while len(acked) < KILL_AFTER and writer.is_alive():
        time.sleep(0.01)
    killed.set()
    server.send_signal(signal.SIGKILL)
    server.wait()
    writer.join()
    assert KILL_AFTER <= len(acked) < N_CLIPS, f"kill landed after {len(acked)} acks"

    server = start_server(data, port, log)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = knowledge_pb2_grpc.KnowledgeServiceStub(channel)
            for sha in acked:
                assert stub.Get(knowledge_pb2.GetRequest(id=sha), metadata=md).entry.id == sha
            # Every acknowledged clip is in the vector index: found by its own text under plain cosine.
            by_id = {sha: creative for sha, _, creative in clips}
            for sha in acked[:: max(1, len(acked) // 10)]:
                reply = stub.Search(
                    knowledge_pb2.SearchRequest(
                        selling_points=[by_id[sha].caption, *by_id[sha].selling_points],
                        limit=3,
                        ranking=knowledge_pb2.RANKING_COSINE,
                    ),
                    metadata=md,
                )
                assert sha in [r.entry.id for r in reply.references]
            # Finish the ingest: acknowledged clips are recognised, the rest are created once.
            created = 0
            for sha, video, creative in clips:
                reply = stub.Ingest(iter(messages(video, creative)), metadata=md, timeout=30)
                if sha in acked:
                    assert reply.already_existed
                created += not reply.already_existed
            # At most the one in flight at the kill may have landed without its acknowledgement.
            assert N_CLIPS - len(acked) - 1 <= created <= N_CLIPS - len(acked)
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, log.read_text()[-3000:]

    from kdcvg.knowledge.index import HnswParams, open_index

    index = open_index("edge", path=data / "index", url=None, api_key=None, collection="kdcvg", hnsw=HnswParams())
    try:
        assert index.count("crash") == N_CLIPS
    finally:
        index.close()
    assert not list((data / "videos" / ".spool").iterdir())
