"""scripts/finetune_decoder.py: only the decoder changes, the export loads, and a resumed run continues
exactly where the last checkpoint left off."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from kdcvg.app import BUNDLED_MODEL
from kdcvg.models.video_model import VideoModel

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "finetune_decoder.py"


def load_script():
    spec = importlib.util.spec_from_file_location("finetune_decoder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_the_decoder_moves_and_a_resumed_run_continues(tmp_path):
    script = load_script()
    work, out = tmp_path / "work", tmp_path / "model"
    common = ["--threads", "1", "--clips", "1", "--work-dir", str(work), "--export-dir", str(out), "--no-bf16"]
    assert script.main([*common, "--steps", "2"]) == (0, 2)
    assert script.main([*common, "--steps", "4", "--resume"]) == (2, 4)
    assert torch.load(work / "decoder.pt", weights_only=False)["step"] == 4

    before, after = VideoModel.load(BUNDLED_MODEL), VideoModel.load(out)
    old, new = before.state_dict(), after.state_dict()
    moved = {k for k in old if not torch.equal(old[k], new[k])}
    assert moved and all(k.startswith("autoencoder.decoder.") for k in moved)
