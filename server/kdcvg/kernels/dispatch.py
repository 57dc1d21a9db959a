"""Whether the Triton kernels run: on CUDA tensors unless `KDCVG_KERNELS=torch` (or `kernels(False)`).

Every kernel module's dispatch function asks `enabled()` before taking its Triton path, so one switch
turns the whole sampler back to its PyTorch references (to compare, or to route around a kernel bug).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_state = threading.local()
_DEFAULT = os.environ.get("KDCVG_KERNELS", "triton").strip().lower() != "torch"


def set_default(on: bool) -> None:
    """The process-wide default (Settings.kernels); `kernels()` still overrides it per thread."""
    global _DEFAULT
    _DEFAULT = on


def enabled() -> bool:
    """True unless turned off for this thread (`kernels(False)`) or process (`KDCVG_KERNELS=torch`)."""
    return getattr(_state, "on", _DEFAULT)


def on_device(t: torch.Tensor) -> bool:
    """A tensor the kernels can take: on CUDA, or on CPU inside `kernels(True, interpret_cpu=True)`."""
    return t.is_cuda or (t.device.type == "cpu" and getattr(_state, "cpu", False))


@contextmanager
def kernels(on: bool, *, interpret_cpu: bool = False) -> Iterator[None]:
    """Turns the Triton kernels on or off for the calling thread, within the block. `interpret_cpu` lets
    them take CPU tensors, which only works under TRITON_INTERPRET=1 (tests of the model's wiring)."""
    before = (getattr(_state, "on", None), getattr(_state, "cpu", False))
    _state.on, _state.cpu = on, interpret_cpu
    try:
        yield
    finally:
        if before[0] is None:
            del _state.on
        else:
            _state.on = before[0]
        _state.cpu = before[1]
