"""Scoring through the SDK (sync and async) and the `kdcvg score` command, against a running server."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import API_KEY, KEYS, MODEL_CACHE, free_port
from typer.testing import CliRunner

from kdcvg.cli import app
from kdcvg.data.creatives import make_creative
from kdcvg.media.video import encode_mp4
from kdcvg_client import AsyncKdcvgClient, InvalidArgument, KdcvgClient


@pytest.fixture(scope="module")
def running(tmp_path_factory, encoder, atomizer):
    from kdcvg.app import build_knowledge_base
    from kdcvg.cli import background_server
    from kdcvg.config import Settings

    settings = Settings(
        data_dir=tmp_path_factory.mktemp("sdk-scoring") / "data",
        port=0,
        metrics_port=free_port(),
        api_keys=KEYS,
        encoder_cache_dir=MODEL_CACHE,
        log_format="text",
        log_level="WARNING",
    )
    kb = build_knowledge_base(settings, encoder=encoder, atomizer=atomizer)
    with background_server(settings, kb, False) as server:
        yield server


@pytest.fixture(scope="module")
def creative():
    return make_creative(11, motions=["rotate"], overlay_prob=1.0)


def test_score_frames_streams_partials_then_the_summary(running, creative):
    with KdcvgClient(f"127.0.0.1:{running.port}", api_key=API_KEY) as client:
        stream = client.score_frames(iter(creative.frames), metrics=["motionx", "reward"], prompt=creative.caption)
        events = list(stream)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-1] == "summary" and kinds.count("summary") == 1
    assert {e.partial.name for e in events[:-1]} == {"motionx", "reward"}
    summary = events[-1].summary
    assert summary.frames == 16 and {m.name for m in summary.metrics} == {"motionx", "reward"}


def test_unary_score_from_a_path_with_a_product_image(running, creative, tmp_path):
    video = tmp_path / "ad.mp4"
    video.write_bytes(encode_mp4(creative.frames, fps=8))
    image = tmp_path / "product.png"
    cv2.imwrite(str(image), cv2.cvtColor(creative.frames[0], cv2.COLOR_RGB2BGR))
    with KdcvgClient(f"127.0.0.1:{running.port}", api_key=API_KEY) as client:
        reply = client.score(video, metrics=["product"], product_image=image)
        with pytest.raises(InvalidArgument, match="unknown metric"):
            client.score(video, metrics=["aesthetics"])
        with pytest.raises(ValueError, match="RGB uint8"):
            list(client.score_frames([np.zeros((8, 8), np.uint8)]))
    (metric,) = reply.summary.metrics
    assert metric.name == "product" and metric.value > 0.5


async def test_async_client_streams_an_encoded_file(running, creative):
    async with AsyncKdcvgClient(f"127.0.0.1:{running.port}", api_key=API_KEY) as client:
        events = [e async for e in client.score_frames(encode_mp4(creative.frames, fps=8), metrics=["motionx"])]
    summary = events[-1].summary
    assert [m.name for m in summary.metrics] == ["motionx"] and summary.frames == 16


def test_cli_score_prints_partials_a_table_and_writes_a_card(running, creative, tmp_path):
    video = tmp_path / "ad.mp4"
    video.write_bytes(encode_mp4(creative.frames, fps=8))
    card = tmp_path / "card.png"
    env = {"KDCVG_TARGET": f"127.0.0.1:{running.port}", "KDCVG_API_KEY": API_KEY, "COLUMNS": "200"}
    result = CliRunner().invoke(
        app, ["score", str(video), "--prompt", creative.caption, "--metric", "motionx", "--png", str(card)], env=env
    )
    assert result.exit_code == 0, result.output
    assert "partial motionx" in result.output and result.output.count("motionx") >= 2  # partial, table row
    image = cv2.imread(str(card))
    assert image is not None and image.shape[0] > 64 * 3
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    result = CliRunner().invoke(app, ["score", str(bad)], env=env)
    assert result.exit_code == 1 and "error" in result.output
