"""What the training scripts share: atomic checkpoint files and the random state a resumed run restores."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Writes ``state`` with torch.save beside ``path`` and renames it into place: a run killed while saving
    leaves the previous checkpoint whole."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    """The state of ``gen`` and of torch's, numpy's and Python's global generators."""
    return {
        "gen": gen.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(gen: torch.Generator, state: dict[str, Any]) -> None:
    """Restores what ``rng_state`` saved."""
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
