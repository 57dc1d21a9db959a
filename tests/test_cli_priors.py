"""The `kdcvg prior` commands against a running server (tiny random model, as in test_sdk_priors)."""

from __future__ import annotations

import json

import pytest
from conftest import API_KEY
from test_knowledge_service import clip
from test_priors_service import fake_prior, tiny_model_dir  # noqa: F401 - a fixture
from test_sdk_priors import add_entries, prior_server
from typer.testing import CliRunner

from kdcvg.cli import app
from kdcvg_client import KdcvgClient

runner = CliRunner()


@pytest.fixture(scope="module")
def running(tmp_path_factory, encoder, atomizer, tiny_model_dir):  # noqa: F811
    with prior_server(tmp_path_factory.mktemp("cli-priors") / "data", encoder, atomizer, tiny_model_dir) as server:
        yield server


@pytest.fixture(scope="module")
def env(running) -> dict[str, str]:
    # A wide console, so tables print whole ids.
    return {"KDCVG_TARGET": f"127.0.0.1:{running.port}", "KDCVG_API_KEY": API_KEY, "COLUMNS": "200"}


@pytest.fixture(scope="module")
def client(running):
    with KdcvgClient(f"127.0.0.1:{running.port}", api_key=API_KEY) as c:
        yield c


def invoke(env: dict[str, str], *args: str):
    return runner.invoke(app, ["prior", *args], env=env)


def table_row(output: str, entry_id: str) -> list[str]:
    line = next(line for line in output.splitlines() if entry_id in line)
    return [cell.strip() for cell in line.split("│")[1:-1]]


def test_list_distill_load_unload(env, client) -> None:
    (entry_id,) = add_entries(client, [(3, "rotate")])
    result = invoke(env, "list")
    assert result.exit_code == 0, result.output
    assert "no motion priors" in result.output

    result = invoke(env, "distill", entry_id, "--steps", "2", "--rank", "4", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "2/2" in result.output and "loss" in result.output  # the progress bar's last state
    assert f"prior {entry_id}: rank 4" in result.output and "tier disk" in result.output

    result = invoke(env, "list")
    assert result.exit_code == 0, result.output
    assert table_row(result.output, entry_id)[1:3] == ["4", "disk"]

    result = invoke(env, "load", entry_id)
    assert result.exit_code == 0, result.output
    assert f"prior {entry_id}: tier device (loaded from disk in" in result.output and " ms)" in result.output
    assert table_row(invoke(env, "list").output, entry_id)[2] == "device"
    result = invoke(env, "unload", entry_id)
    assert result.exit_code == 0, result.output
    assert f"prior {entry_id}: tier disk (unloaded in" in result.output


def test_unknown_ids_exit_1_with_the_status(env) -> None:
    result = invoke(env, "load", "no-such-prior")
    assert result.exit_code == 1
    assert "NOT_FOUND" in result.output and "distil it first" in result.output
    result = invoke(env, "unload", "no-such-prior")
    assert result.exit_code == 1 and "NOT_FOUND" in result.output
    result = invoke(env, "distill", "a" * 64, "--steps", "2")
    assert result.exit_code == 1 and "NOT_FOUND" in result.output and "no entry" in result.output
    result = invoke(env, "list", "--api-key", "nope")
    assert result.exit_code == 1 and "UNAUTHENTICATED" in result.output


def _summary(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("distilled "))


def test_distill_all_finds_every_entry_and_skips_existing(running, env, client) -> None:
    ids = add_entries(client, [(8, "slide_left"), (5, "zoom_in"), (11, "rotate")])
    fake_prior(running, "alpha", ids[2])
    before = {p.id for p in client.iter_priors()}
    todo = [i for i in ids if i not in before]
    result = invoke(env, "distill-all", "--steps", "2", "--rank", "2")
    assert result.exit_code == 0, result.output
    assert "entries" in result.output  # the overall bar
    # Every entry of the tenant is found; those with a prior (this test's fake one, and any from other tests)
    # are skipped.
    assert _summary(result.output).startswith(f"distilled {len(todo)}, skipped {len(before)} ")
    assert _summary(result.output).endswith("failed 0")
    for entry_id in todo:
        assert f"distilled {entry_id}: rank 2" in result.output
    assert set(ids) <= {p.id for p in client.iter_priors()}
    # Nothing left to do.
    result = invoke(env, "distill-all", "--steps", "2")
    assert result.exit_code == 0, result.output
    assert _summary(result.output).startswith("distilled 0, ")


def test_distill_all_reports_failures_and_exits_1(running, env, client, tmp_path) -> None:
    video, creative = clip(13, motions=["slide_right"])
    (entry_id,) = add_entries(client, [(13, "slide_right")])
    fake_prior(running, "alpha", entry_id)
    # A `kb ingest` directory names its clips; their ids are the sha256 of the bytes.
    (tmp_path / "clip.mp4").write_bytes(video)
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"file": "clip.mp4", "caption": creative.caption}))
    missing = "a" * 64
    args = ["distill-all", missing, "--manifest", str(tmp_path), "--steps", "2", "--no-skip-existing"]
    result = invoke(env, *args)
    assert result.exit_code == 1, result.output
    assert _summary(result.output) == "distilled 1, skipped 0 (already had a prior), failed 1"
    assert f"distilled {entry_id}: " in result.output  # distilled again despite its prior
    assert f"failed {missing}: NOT_FOUND: no entry" in " ".join(result.output.split())
