"""Shared fixtures: one text encoder and atomizer per session, a fresh server per test."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Kernel tests run the Triton kernels on CPU through the interpreter. Triton reads this when it is
# imported, and the model imports it, so it is set here, before any test module loads. On CPU the server
# never launches a Triton kernel (its dispatch takes the PyTorch references), so other tests are unaffected.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
# Exported ONNX models are cached across runs (gitignored); the export itself is tested in test_text_encoder.
MODEL_CACHE = Path(os.environ.get("KDCVG_TEST_MODEL_CACHE", ROOT / ".cache" / "models"))

API_KEY = "key-alpha"
OTHER_KEY = "key-beta"
KEYS = {API_KEY: "alpha", OTHER_KEY: "beta"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def encoder():
    from kdcvg.text.encoder import TextEncoder

    return TextEncoder.load(MODEL_CACHE, precision="int8")


@pytest.fixture(scope="session")
def atomizer():
    from kdcvg.text.atomizer import Atomizer

    return Atomizer()


@pytest.fixture
def settings(tmp_path):
    from kdcvg.config import Settings

    return Settings(
        data_dir=tmp_path / "data",
        port=0,
        metrics_port=free_port(),
        api_keys=KEYS,
        encoder_cache_dir=MODEL_CACHE,
        max_video_bytes=2 * 1024 * 1024,
        log_format="text",
    )


@pytest.fixture
async def server(settings, encoder, atomizer) -> AsyncIterator:
    from kdcvg.app import build_knowledge_base, start

    kb = build_knowledge_base(settings, encoder=encoder, atomizer=atomizer)
    running = await start(settings, kb, generation=False)
    yield running
    await running.stop(0.5)


@pytest.fixture
async def channel(server) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


def auth(key: str = API_KEY) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)
