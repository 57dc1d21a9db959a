"""What the training scripts share: their start (log file, threads, seeds), atomic checkpoint files and the
random state a resumed run restores."""

from __future__ import annotations

import logging
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


def start_run(work_dir: Path, *, threads: int, seed: int) -> torch.Generator:
    """Creates ``work_dir``, logs to its train.log, sets torch's threads (0: torch's default) and seeds
    torch, numpy and Python; returns a torch generator seeded with ``seed`` for the run's own draws."""
    work_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", handlers=[logging.FileHandler(work_dir / "train.log")]
    )
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return torch.Generator().manual_seed(seed)
