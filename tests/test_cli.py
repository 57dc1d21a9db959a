"""The `kdcvg` command line: the README's main job (`kdcvg demo`) and the knowledge-base commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import MODEL_CACHE, ROOT
from typer.testing import CliRunner

from kdcvg.cli import app, background_server

runner = CliRunner()


@pytest.mark.slow
def test_demo_serves_ingests_and_retrieves(tmp_path):
    env = os.environ | {"KDCVG_ENCODER_CACHE_DIR": str(MODEL_CACHE), "COLUMNS": "160"}
    cmd = [sys.executable, "-m", "kdcvg.cli", "demo", "--data-dir", str(tmp_path / "demo")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "60 clips ingested" in out
    assert "spins to show every angle" in out and "zooms in on the details" in out
    # Run again: the knowledge base persisted, nothing is ingested twice.
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 clips ingested, 60 already present" in again.stdout


def test_kb_commands_against_a_server(settings, encoder, atomizer, tmp_path):
    from kdcvg.app import build_knowledge_base
    from kdcvg.cli import SAMPLE_DIR

    manifest = [json.loads(line) for line in (SAMPLE_DIR / "manifest.jsonl").read_text().splitlines()][:6]
    small = tmp_path / "kb"
    small.mkdir()
    (small / "manifest.jsonl").write_text("\n".join(json.dumps(row) for row in manifest))
    for row in manifest:
        (small / row["file"]).write_bytes((SAMPLE_DIR / row["file"]).read_bytes())

    kb = build_knowledge_base(settings, encoder=encoder, atomizer=atomizer)
    with background_server(settings, kb, generation=False) as running:
        env = {"KDCVG_TARGET": f"127.0.0.1:{running.port}", "KDCVG_API_KEY": "key-alpha"}
        result = runner.invoke(app, ["kb", "ingest", str(small)], env=env)
        assert result.exit_code == 0, result.output
        assert "ingested 6 new clips, 0 already present" in result.output
        result = runner.invoke(app, ["kb", "search", manifest[0]["selling_points"][0], "--json"], env=env)
        assert result.exit_code == 0, result.output
        reply = json.loads(result.output)
        entry_id = reply["references"][0]["entry"]["id"]
        assert reply["retrievalId"]
        result = runner.invoke(app, ["kb", "feedback", reply["retrievalId"], entry_id, "0.5"], env=env)
        assert result.exit_code == 0 and "stored feedback event" in result.output
        result = runner.invoke(app, ["kb", "get", entry_id], env=env)
        assert json.loads(result.output)["id"] == entry_id
        result = runner.invoke(app, ["kb", "delete", entry_id], env=env)
        assert result.exit_code == 0
        result = runner.invoke(app, ["kb", "get", entry_id], env=env)
        assert result.exit_code == 1
        assert "NOT_FOUND" in result.output and "no entry" in result.output
        # A wrong key is refused with the reason.
        result = runner.invoke(app, ["kb", "search", "spins"], env=env | {"KDCVG_API_KEY": "nope"})
        assert result.exit_code == 1
        assert "UNAUTHENTICATED" in result.output and "API key" in result.output
