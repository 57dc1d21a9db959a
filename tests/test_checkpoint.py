"""The training scripts' checkpoint helpers: a restored random state draws the same numbers again."""

from __future__ import annotations

import random

import numpy as np
import torch

from kdcvg.models.checkpoint import rng_state, save_checkpoint, set_rng_state


def draws(gen: torch.Generator) -> tuple:
    return (torch.rand(3, generator=gen).tolist(), torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random())


def test_a_saved_and_restored_random_state_repeats_the_draws(tmp_path):
    gen = torch.Generator().manual_seed(5)
    draws(gen)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"rng": rng_state(gen), "step": 7})
    first = draws(gen)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # written whole, nothing left beside it

    state = torch.load(path, weights_only=False)
    other = torch.Generator().manual_seed(99)
    set_rng_state(other, state["rng"])
    assert draws(other) == first and state["step"] == 7
