"""The kernels' on/off switch: per thread, nestable, restored after the block."""

from __future__ import annotations

import threading

from kdcvg.kernels import dispatch


def test_switch_is_scoped_and_per_thread() -> None:
    assert dispatch.enabled()
    seen = {}
    with dispatch.kernels(False):
        assert not dispatch.enabled()
        with dispatch.kernels(True):
            assert dispatch.enabled()
        assert not dispatch.enabled()
        other = threading.Thread(target=lambda: seen.setdefault("other", dispatch.enabled()))
        other.start()
        other.join()
    assert dispatch.enabled()
    assert seen == {"other": True}


def test_settings_pick_the_process_default() -> None:
    try:
        dispatch.set_default(False)
        assert not dispatch.enabled()
        with dispatch.kernels(True):
            assert dispatch.enabled()
    finally:
        dispatch.set_default(True)
    assert dispatch.enabled()
