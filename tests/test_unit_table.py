"""The in-memory unit table that Search ranks from: packing must equal packing the units directly, and the
table must stay a faithful cache of the index (loaded at start, filled on ingest and on a miss, emptied on
delete)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kdcvg.retrieval.ranking import PackedUnits, UnitEmbeddingCache, UnitVectors, rank
from kdcvg.retrieval.unit_table import UnitTable
from kdcvg.text.atomizer import SemanticUnit

DIM = 16


class CountingEmbed:
    """A deterministic embedding per string; counts the strings it was asked for."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(DIM) for t in texts]).astype(
            np.float32
        )


U = SemanticUnit
ENTRIES = {
    "p1": ("e1", [U("spin", "bottle", "", True), U("reveal", "", "label", False)]),
    "p2": ("e2", []),  # a text without units
    "p3": ("e3", [U("", "watch", "", False), U("float", "watch", "table", True)]),  # core not first
    "p4": ("e4", [U("spin", "", "", True)]),
}


def table_with(entries: dict) -> tuple[UnitTable, CountingEmbed]:
    embed = CountingEmbed()
    table = UnitTable(embed, DIM)
    table.add([(pid, eid, units) for pid, (eid, units) in entries.items()])
    return table, embed


def test_pack_equals_packing_the_units_directly():
    table, embed = table_with(ENTRIES)
    order = ["p3", "p2", "p1", "p4", "p1"]  # any order, repeats allowed
    packed, entry_ids = table.pack(order)
    assert entry_ids == ["e3", "e2", "e1", "e4", "e1"]
    want = PackedUnits.from_units([ENTRIES[p][1] for p in order], embed, DIM)
    for name in ("mot", "atr", "rec"):
        np.testing.assert_allclose(getattr(packed, name), getattr(want, name), atol=1e-6)
    for name in ("start", "count", "core"):
        np.testing.assert_array_equal(getattr(packed, name), getattr(want, name))

    query = UnitVectors.from_units([U("spin", "bottle", "label", True)], embed, DIM)
    totals = np.array([0.5, 0.9, 0.4, 0.6, 0.4], dtype=np.float32)
    assert rank(query, totals, packed) == rank(query, totals, want)


def test_each_string_is_embedded_once():
    table, embed = table_with(ENTRIES)
    strings = [s for call in embed.calls for s in call]
    assert sorted(strings) == sorted(set(strings))
    assert table.vocabulary_size == len(set(strings)) == 7
    table.add([("p5", "e5", [("spin", "bottle", "label", True)])])  # payload tuples, all known strings
    assert len(embed.calls) == 1 and len(table) == 5


def test_missing_discard_and_points_never_change():
    table, _ = table_with(ENTRIES)
    assert table.missing(["p1", "px", "p2", "py"]) == ["px", "py"]
    table.add([("p1", "other", [U("zoom", "", "", True)])])  # an id's units never change: ignored
    assert table.pack(["p1"])[1] == ["e1"]
    table.discard(["p1", "nope"])
    assert "p1" not in table and table.missing(["p1"]) == ["p1"]
    with pytest.raises(KeyError):
        table.pack(["p1"])


def test_grows_past_its_initial_arrays_and_load_marks_loaded():
    embed = CountingEmbed()
    table = UnitTable(embed, DIM)

    def point(i: int) -> tuple[str, dict]:
        return f"p{i}", {"_key": f"t/e{i}", "units": [[f"verb{i}", f"noun{i % 7}", "", True]] * 3}

    pages = [[point(i) for i in range(j, j + 500)] for j in range(0, 2000, 500)]
    assert not table.loaded.is_set()
    assert table.load(iter(pages), "_key") == 2000
    assert table.loaded.is_set() and len(table) == 2000 and table.vocabulary_size == 2007
    packed, ids = table.pack(["p1999", "p0"])
    assert ids == ["e1999", "e0"] and packed.mot.shape == (6, DIM)
    verb = embed(["verb1999"])[0]
    np.testing.assert_allclose(packed.mot[0], verb / np.linalg.norm(verb), atol=1e-6)


def test_concurrent_adds_and_packs():
    table, _ = table_with(ENTRIES)
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(300):
                table.add([(f"w{k}-{i}", f"e{i}", [U(f"move{i % 50}", f"thing{k}", "", True)])])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(300):
                packed, _ = table.pack(["p1", "p3"])
                assert packed.mot.shape == (4, DIM)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(table) == 4 + 900
    assert table.vocabulary_size == 7 + 50 + 3


def test_vectors_answer_a_query_cache_before_the_encoder():
    table, embed = table_with(ENTRIES)
    known = table.vectors(["spin", "dog", "bottle", ""])
    assert set(known) == {"spin", "bottle"}
    want = embed(["spin"])[0]
    np.testing.assert_allclose(known["spin"], want / np.linalg.norm(want), atol=1e-6)
    assert not known["spin"].flags.writeable

    cache = UnitEmbeddingCache(embed, known=table.vectors)
    before = len(embed.calls)
    rows = cache.embed(["spin", "dog", "bottle", "dog"])
    assert embed.calls[before:] == [["dog"]]  # only the string the table lacks is encoded
    np.testing.assert_allclose(rows[0], known["spin"])
    np.testing.assert_allclose(rows[2], known["bottle"])
    np.testing.assert_array_equal(rows[1], rows[3])
    cache.embed(["spin", "dog"])
    assert len(embed.calls) == before + 1  # and then everything is cached
