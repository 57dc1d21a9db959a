"""Entries whose units an older atomizer made are re-atomized in the background when a server starts."""

from __future__ import annotations

import logging
import time

import numpy as np

from kdcvg.knowledge.base import Entry, point_key, unit_from_payload, unit_payload
from kdcvg.knowledge.index import IndexPoint, point_uuid
from kdcvg.text.atomizer import VERSION, SemanticUnit

TENANT = "alpha"
CAPTION = "A phone slides left across the frame."
POINTS = ["slides left into the spotlight", "free shipping"]


def stored_entry(entry_id: str, units: list, version: int | None) -> dict:
    entry = Entry(
        id=entry_id,
        tenant=TENANT,
        category="electronics",
        caption=CAPTION,
        selling_points=POINTS,
        motion="slide_left",
        product="phone",
        labels={},
        frame_count=16,
        width=64,
        height=64,
        fps=8.0,
        keyframes=[0],
        units=[],
        video_bytes=1,
        created_ms=0,
    )
    payload = entry.payload() | {"units": units, "tenant": TENANT, "category": entry.category}
    if version is None:
        payload.pop("units_version")  # stored before versions were kept
    else:
        payload["units_version"] = version
    return payload


def test_old_units_are_recomputed_at_start(settings, encoder, atomizer):
    from kdcvg.app import build_knowledge_base

    old_units = [["leave", "phone slide", "frame", True]]  # what version 1 made of the caption
    current = [["pinned", "", "", True]]  # a current entry is never parsed again, whatever it holds
    ids = {"old": "a" * 64, "older": "b" * 64, "current": "c" * 64}
    kb = build_knowledge_base(settings, encoder=encoder, atomizer=atomizer)
    vector = encoder.encode([CAPTION])[0]
    kb.index.upsert(
        [
            IndexPoint(point_key(TENANT, ids["old"]), vector, stored_entry(ids["old"], old_units, 1)),
            IndexPoint(point_key(TENANT, ids["older"]), vector, stored_entry(ids["older"], old_units, None)),
            IndexPoint(point_key(TENANT, ids["current"]), vector, stored_entry(ids["current"], current, VERSION)),
        ]
    )
    kb.close()

    kb = build_knowledge_base(settings, encoder=encoder, atomizer=atomizer)
    try:
        pids = {k: point_uuid(TENANT, point_key(TENANT, v)) for k, v in ids.items()}
        deadline = time.monotonic() + 60
        while True:
            got = kb.index.payloads(list(pids.values()), ["units", "units_version"])
            if all(got[pids[k]].get("units_version") == VERSION for k in ("old", "older")):
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.05)
        want = [unit_payload(u) for u in atomizer.atomize(CAPTION)]
        assert got[pids["old"]]["units"][0] == ["slide left", "phone", "frame", True, False]
        assert got[pids["old"]]["units"] == got[pids["older"]]["units"]
        assert got[pids["old"]]["units"][: len(want)] == want
        assert got[pids["current"]] == {"units": current, "units_version": VERSION}
        # The ranking reads units from memory: the table holds the new ones, not version 1's.
        deadline = time.monotonic() + 10
        while "slide left" not in unit_motions(kb, pids["old"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "leave" not in unit_motions(kb, pids["old"])
        entry = Entry.from_payload(kb.index.retrieve([point_key(TENANT, ids["older"])], tenant=TENANT)[0].payload)
        assert entry.units_version == VERSION and entry.units[0].motion == "slide left"
    finally:
        kb.close()


def unit_motions(kb, pid: str) -> set[str]:
    """Which of "slide left" and "leave" the unit table holds as motions of the point."""
    if pid not in kb.units:
        return set()
    packed, _ = kb.units.pack([pid])
    rows = packed.mot[int(packed.start[0]) : int(packed.start[0] + packed.count[0])]
    known = kb.units.vectors(["slide left", "leave"])
    return {s for s, v in known.items() if any(np.allclose(r, v, atol=1e-6) for r in rows)}


def test_stored_units_round_trip_and_older_ones_read_as_verbal():
    reveal = SemanticUnit("reveal", "side", "", True, nominal=True)
    assert unit_from_payload(unit_payload(reveal)) == reveal
    # written before version 5: [motion, actor, recipient, core]
    entry = Entry.from_payload(stored_entry("d" * 64, [["slide left", "phone", "frame", True]], 4))
    assert entry.units == [SemanticUnit("slide left", "phone", "frame", True, nominal=False)]


def test_entries_without_a_version_read_as_version_one():
    assert Entry.from_payload(stored_entry("d" * 64, [], None)).units_version == 1
    assert Entry.from_payload(stored_entry("d" * 64, [], VERSION)).units_version == VERSION


def test_reatomize_after_close_stops_quietly(settings, encoder, atomizer, caplog):
    """A shutdown in the middle leaves the rest for the next start; it never raises into the server."""
    from kdcvg.app import build_knowledge_base

    kb = build_knowledge_base(settings, encoder=encoder, atomizer=atomizer)
    pid = point_uuid(TENANT, point_key(TENANT, "e" * 64))
    kb.index.upsert(
        [IndexPoint(point_key(TENANT, "e" * 64), encoder.encode([CAPTION])[0], stored_entry("e" * 64, [], 1))]
    )
    kb.close()
    with caplog.at_level(logging.WARNING, logger="kdcvg"):
        assert kb.reatomize([pid]) == 0
    assert "re-atomizing stopped at shutdown" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
