"""A faster CPU forward pass for spaCy's small CNN pipelines (en_core_web_sm) on short texts.

A selling point is 3-10 tokens. At that size spaCy's cost is not arithmetic but the way it is done: thinc
runs the tok2vec as ~70 nested layer calls, and its BLIS products with 8-30 rows are slow (a 15 x 288 by
288 x 288 product takes 56 us in BLIS and 16 us in PyTorch's CPU GEMM). ``accelerate`` keeps spaCy's
pipeline and weights and changes four things:

- the tok2vec (hash embeddings -> maxout -> layer norm -> 4 residual window layers) is computed after
  spaCy's own hashing as one ONNX Runtime graph (``OrtTok2Vec``), or, where that cannot run, by one numpy
  function that makes the same thinc calls in the same order (``Tok2VecForward``), without the layer
  wrappers either way;
- float32 matrix products of the tagger and parser layers (and of the numpy tok2vec) go through ``torch.mm``;
- the attribute ruler finds its rules through a dict keyed by token values read as one array, instead of
  running its Matcher over every rule at every token (``RuleMatcher``);
- the rule lemmatizer keeps every answer by (word, POS, morphology) (``CachedLemmatizer``).

The products round differently in the last bits (tok2vec outputs differ by ~1e-6), so ``accelerate``
checks its own output against spaCy's on probe sentences and installs nothing when they disagree (another
architecture, or a thinc that changed its layers). The test suite compares whole parses too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from spacy.attrs import intify_attr
from spacy.language import Language
from spacy.strings import get_string_id
from spacy.tokens import Doc
from thinc.api import Model, NumpyOps

log = logging.getLogger("kdcvg.text")

_PROBES = (
    "A glass bottle spins slowly on a marble table.",
    "zoom in on the label",
    "50% OFF today only!",
    "It slides left to reveal the new sneaker.",
)
_TOLERANCE = 1e-4


class TorchGemmOps(NumpyOps):
    """NumpyOps whose float32 ``gemm`` is PyTorch's CPU GEMM (much faster than BLIS at a few rows)."""

    name = "numpy"  # thinc looks ops up by name; these are NumpyOps in every other respect

    def gemm(self, x, y, out=None, trans1: bool = False, trans2: bool = False):  # noqa: ANN001, ANN201
        if x.dtype != np.float32 or y.dtype != np.float32 or not _fits(out):
            return super().gemm(x, y, out=out, trans1=trans1, trans2=trans2)
        a, b = torch.from_numpy(_writable(x)), torch.from_numpy(_writable(y))
        a, b = (a.T if trans1 else a), (b.T if trans2 else b)
        if out is None:
            return torch.mm(a, b).numpy()
        torch.mm(a, b, out=torch.from_numpy(out))
        return out


@dataclass(frozen=True)
class _Maxout:
    weight_t: torch.Tensor  # (nI, nO * nP), contiguous
    bias: np.ndarray  # (nO * nP,)
    n_out: int
    n_pieces: int
    gain: np.ndarray  # layer norm
    shift: np.ndarray

    def __call__(self, ops: NumpyOps, x: np.ndarray) -> np.ndarray:
        y = torch.mm(torch.from_numpy(_writable(x)), self.weight_t).numpy()
        y += self.bias
        best, _ = ops.maxout(y.reshape(y.shape[0], self.n_out, self.n_pieces))
        # thinc's LayerNorm, operation for operation.
        mu = best.mean(axis=1, keepdims=True)
        var = best.var(axis=1, keepdims=True) + 1e-08
        out = (best - mu) * var ** (-1.0 / 2.0) * self.gain
        out += self.shift
        return out


class Tok2VecForward:
    """The tok2vec of spaCy's CNN pipelines (MultiHashEmbed + MaxoutWindowEncoder) as one function."""

    def __init__(self, model: Model) -> None:
        nodes = list(model.walk())
        names = [n.name for n in nodes]
        features = [n for n in nodes if n.name == "extract_features"]
        embeds = [n for n in nodes if n.name == "hashembed"]
        maxouts = [n for n in nodes if n.name == "maxout"]
        norms = [n for n in nodes if n.name == "layernorm"]
        windows = [n for n in nodes if n.name == "expand_window"]
        padded = [n for n in nodes if n.name.startswith("with_array(residual")]
        if (
            len(features) != 1
            or not embeds
            or len(maxouts) != len(norms)
            or len(windows) != len(maxouts) - 1
            or any(w.attrs.get("window_size") != 1 for w in windows)
            or len(padded) != 1
            or names.count("residual(expand_window>>maxout>>layernorm>>dropout)") != len(windows)
        ):
            raise ValueError(f"not a MultiHashEmbed + MaxoutWindowEncoder tok2vec: {model.name}")
        self.ops = NumpyOps()
        self.columns = [intify_attr(c) for c in features[0].attrs["columns"]]
        self.embeds = [(n.get_param("E"), int(n.attrs["seed"]), int(n.attrs["column"])) for n in embeds]
        self.pad = int(padded[0].attrs["pad"])
        self.layers = []
        for mo, ln in zip(maxouts, norms, strict=True):
            w = mo.get_param("W")
            n_out, n_pieces, n_in = w.shape
            self.layers.append(
                _Maxout(
                    torch.from_numpy(np.ascontiguousarray(w.reshape(n_out * n_pieces, n_in).T)),
                    mo.get_param("b").reshape(n_out * n_pieces),
                    n_out,
                    n_pieces,
                    ln.get_param("G"),
                    ln.get_param("b"),
                )
            )

    def rows(self, docs: Sequence[Doc]) -> list[np.ndarray]:
        """Per hash embedding, the table rows of every token of ``docs`` (tokens x 4), spaCy's hashing."""
        ops = self.ops
        width = len(self.columns)
        feats = np.concatenate([d.to_array(self.columns).reshape(len(d), width) for d in docs])
        feats = ops.asarray2i(feats, dtype="uint64")
        return [ops.hash(ops.as_contig(feats[:, column]), seed) % table.shape[0] for table, seed, column in self.embeds]

    def empty(self, docs: Sequence[Doc]) -> list[np.ndarray] | None:
        """The output when ``docs`` hold no tokens at all, else None."""
        if any(len(d) for d in docs):
            return None
        return [np.zeros((0, self.layers[-1].n_out), dtype=np.float32) for _ in docs]

    def __call__(self, docs: Sequence[Doc]) -> list[np.ndarray]:
        ops = self.ops
        if (out := self.empty(docs)) is not None:
            return out
        lengths = ops.asarray1i([len(d) for d in docs])
        parts = [ops.gather_add(table, ids) for (table, _, _), ids in zip(self.embeds, self.rows(docs), strict=True)]
        x = self.layers[0](ops, np.hstack(parts))
        flat = ops.flatten(ops.unflatten(x, lengths), pad=self.pad)
        for layer in self.layers[1:]:
            flat = flat + layer(ops, ops.seq2col(flat, 1))
        return ops.unflatten(flat, lengths, pad=self.pad)


class OrtTok2Vec:
    """Tok2VecForward's layers as one ONNX Runtime graph: the five products, maxouts and layer norms run
    without Python between them (a third less time for a batch of a few phrases) and without the GIL, so
    the encoder and a search's thread keep running beside a parse. The hashing stays spaCy's."""

    def __init__(self, forward: Tok2VecForward) -> None:
        import onnxruntime as ort

        self.forward = forward
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # runs in the calling thread, as the numpy path does
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            _tok2vec_graph(forward).SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, docs: Sequence[Doc]) -> list[np.ndarray]:
        if (out := self.forward.empty(docs)) is not None:
            return out
        feeds = {f"rows{k}": ids.astype(np.int64) for k, ids in enumerate(self.forward.rows(docs))}
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        n, pad = int(lengths.sum()), self.forward.pad
        # spaCy runs the window layers over all texts at once, `pad` zero rows before, between and after them.
        tokens = np.arange(n, dtype=np.int64) + pad * (np.repeat(np.arange(len(docs)), lengths) + 1)
        padded = np.full(n + pad * (len(docs) + 1), n, dtype=np.int64)  # row n: zeros
        padded[tokens] = np.arange(n, dtype=np.int64)
        feeds["padded"], feeds["tokens"] = padded, tokens
        (out,) = self._session.run(None, feeds)
        return np.split(out, np.cumsum(lengths)[:-1])


def _tok2vec_graph(forward: Tok2VecForward):  # noqa: ANN202 - onnx.ModelProto
    """The ONNX graph of ``forward`` after the hashing. Inputs: rows{k} (tokens x 4) per hash embedding;
    padded (the token row, or the zero row, of each row of spaCy's padded batch); tokens (each token's row
    in that batch). Output: tokens x width."""
    from onnx import TensorProto, checker, helper, numpy_helper

    nodes, weights = [], []

    def const(name: str, value: np.ndarray) -> str:
        weights.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    first = forward.layers[0]
    const("sum_axis", np.array([1], dtype=np.int64))
    const("piece_axis", np.array([2], dtype=np.int64))
    const("pieces", np.array([0, first.n_out, first.n_pieces], dtype=np.int64))
    const("zero_row", np.zeros((1, first.n_out), dtype=np.float32))
    const("start", np.array([0], dtype=np.int64))
    const("second", np.array([1], dtype=np.int64))
    const("last", np.array([-1], dtype=np.int64))
    const("end", np.array([np.iinfo(np.int64).max], dtype=np.int64))

    def maxout_norm(i: int, x: str, layer: _Maxout) -> str:
        y = node("MatMul", [x, const(f"W{i}", layer.weight_t.numpy())], f"mm{i}")
        y = node("Add", [y, const(f"b{i}", layer.bias.astype(np.float32))], f"affine{i}")
        y = node("Reshape", [y, "pieces"], f"split{i}")
        y = node("ReduceMax", [y, "piece_axis"], f"maxout{i}", keepdims=0)
        gain, shift = const(f"G{i}", layer.gain.astype(np.float32)), const(f"B{i}", layer.shift.astype(np.float32))
        return node("LayerNormalization", [y, gain, shift], f"norm{i}", axis=-1, epsilon=1e-8)

    parts = []
    for k, (table, _, _) in enumerate(forward.embeds):
        rows = node("Gather", [const(f"E{k}", table.astype(np.float32)), f"rows{k}"], f"gathered{k}", axis=0)
        parts.append(node("ReduceSum", [rows, "sum_axis"], f"embedded{k}", keepdims=0))
    x = maxout_norm(0, node("Concat", parts, "embedded", axis=1), first)
    flat = node("Gather", [node("Concat", [x, "zero_row"], "with_zero", axis=0), "padded"], "flat0", axis=0)
    for i, layer in enumerate(forward.layers[1:], 1):
        before = node(
            "Concat", ["zero_row", node("Slice", [flat, "start", "last", "start"], f"head{i}")], f"prev{i}", axis=0
        )
        after = node(
            "Concat", [node("Slice", [flat, "second", "end", "start"], f"tail{i}"), "zero_row"], f"next{i}", axis=0
        )
        window = node("Concat", [before, flat, after], f"window{i}", axis=1)  # thinc's seq2col, window 1
        flat = node("Add", [flat, maxout_norm(i, window, layer)], f"flat{i}")
    node("Gather", [flat, "tokens"], "out", axis=0)

    inputs = [helper.make_tensor_value_info(f"rows{k}", TensorProto.INT64, ["n", "hashes"]) for k in range(len(parts))]
    inputs += [
        helper.make_tensor_value_info("padded", TensorProto.INT64, ["m"]),
        helper.make_tensor_value_info("tokens", TensorProto.INT64, ["n"]),
    ]
    output = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", first.n_out])
    graph = helper.make_graph(nodes, "spacy_tok2vec", inputs, [output], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    checker.check_model(model)
    return model


class RuleMatcher:
    """The AttributeRuler's matching (its Matcher) for rules whose token patterns test TAG, LOWER, DEP or
    IS_SPACE by equality, IN, NOT_IN or REGEX, which covers every rule of en_core_web_sm. The Matcher tries
    every rule at every token; here a rule is found through its first token's value, and tokens are read
    as one array of string ids (no Token objects).

    Used as ``AttributeRuler.match``: the same matches, in the same order (by rule number)."""

    _COLUMNS = ("TAG", "LOWER", "DEP", "IS_SPACE")
    _FILING = ("LOWER", "TAG", "DEP", "IS_SPACE")  # a rule is filed under the first of these it pins down

    def __init__(self, ruler) -> None:  # noqa: ANN001 - spacy.pipeline.AttributeRuler
        self._strings = ruler.vocab.strings
        self._ids = [intify_attr(c) for c in self._COLUMNS]
        self._label = [self._strings.add(str(i)) for i in range(len(ruler.attrs))]
        self._index: dict[tuple[int, int], list[tuple[int, list]]] = {}
        self._anywhere: list[tuple[int, list]] = []  # rules whose first token pins nothing down (REGEX...)
        for i, rule in enumerate(ruler.patterns):
            for pattern in rule["patterns"]:
                if not pattern:
                    raise ValueError("an empty pattern")
                spec = [[self._condition(attr, value) for attr, value in token.items()] for token in pattern]
                keys = self._keys(pattern[0])
                if keys is None:
                    self._anywhere.append((i, spec))
                for key in keys or ():
                    self._index.setdefault(key, []).append((i, spec))
        self._columns = sorted({column for column, _ in self._index})
        self._text: dict[int, str] = {}  # string id -> string, for REGEX conditions
        self._first: dict[tuple[int, ...], list[tuple[int, list]]] = {}

    @classmethod
    def _keys(cls, token: dict) -> list[tuple[int, int]] | None:
        for attr in cls._FILING:
            column = cls._COLUMNS.index(attr)
            value = token.get(attr)
            if value is None:
                continue
            if not isinstance(value, dict):
                return [(column, cls._id(value))]
            if set(value) == {"IN"}:
                return [(column, cls._id(v)) for v in value["IN"]]
        return None

    @staticmethod
    def _id(value: object) -> int:
        """A pattern value as the token array holds it: a string's id, a flag's 0 / 1."""
        return int(value) if isinstance(value, bool) else get_string_id(value)

    @classmethod
    def _condition(cls, attr: str, value: object) -> tuple:
        if attr not in cls._COLUMNS:
            raise ValueError(f"a pattern tests {attr}")
        column = cls._COLUMNS.index(attr)
        if not isinstance(value, dict):
            return (column, "==", cls._id(value))
        if len(value) != 1:
            raise ValueError(f"a pattern combines {sorted(value)}")
        op, arg = next(iter(value.items()))
        if op in ("IN", "NOT_IN"):
            return (column, op, frozenset(cls._id(v) for v in arg))
        if op == "REGEX":
            if attr == "IS_SPACE":
                raise ValueError("a pattern tests IS_SPACE by REGEX")
            return (column, op, re.compile(arg))
        raise ValueError(f"a pattern uses {op}")

    def _holds(self, row: tuple[int, ...], conditions: list[tuple]) -> bool:
        for column, op, want in conditions:
            value = row[column]
            if op == "==":
                ok = value == want
            elif op == "IN":
                ok = value in want
            elif op == "NOT_IN":
                ok = value not in want
            else:
                text = self._text.get(value)
                if text is None:
                    text = self._text[value] = self._strings[value]
                ok = want.search(text) is not None
            if not ok:
                return False
        return True

    def _starting(self, row: tuple[int, ...]) -> list[tuple[int, list]]:
        """The rules whose first token ``row`` satisfies (memoised: it depends on the row alone)."""
        found = self._first.get(row)
        if found is None:
            candidates = [r for column in self._columns for r in self._index.get((column, row[column]), ())]
            found = [(rule, spec) for rule, spec in candidates + self._anywhere if self._holds(row, spec[0])]
            if len(self._first) >= 100_000:
                self._first.clear()
            self._first[row] = found
        return found

    def __call__(self, doc: Doc) -> list[tuple[int, int, int, int]]:
        rows = [tuple(r) for r in doc.to_array(self._ids).reshape(len(doc), len(self._ids)).tolist()]
        found = set()
        n = len(rows)
        holds = self._holds
        for start, row in enumerate(rows):
            for rule, spec in self._starting(row):
                end = start + len(spec)
                if end <= n and all(holds(rows[start + k], spec[k]) for k in range(1, len(spec))):
                    found.add((rule, self._label[rule], start, end))
        return sorted(found)


class CachedLemmatizer:
    """spaCy's rule lemmatizer with every answer kept by (word, POS, morphology), which is all a rule
    lemma depends on. spaCy keeps only the answers of its slowest path and runs the rest per token
    (a third of a short phrase's lemmatizing); this also reads and writes the tokens as arrays.

    Used as the lemmatizer component's ``__call__`` replacement; ``lemmatizer.lemmatize`` still decides."""

    def __init__(self, lemmatizer, maxsize: int = 200_000) -> None:  # noqa: ANN001 - spacy Lemmatizer
        if lemmatizer.mode != "rule":
            raise ValueError(f"a {lemmatizer.mode} lemmatizer")
        self._lemmatizer = lemmatizer
        self._strings = lemmatizer.vocab.strings
        self._cache: dict[tuple[int, int, int], int] = {}
        self._maxsize = maxsize
        self._columns = [intify_attr(c) for c in ("ORTH", "POS", "MORPH", "LEMMA")]

    def __call__(self, doc: Doc) -> Doc:
        if not len(doc):
            return doc
        arr = doc.to_array(self._columns)
        lemmas = arr[:, 3].copy()
        overwrite = self._lemmatizer.overwrite
        cache = self._cache
        changed = False
        for i, (orth, pos, morph, lemma) in enumerate(arr.tolist()):
            if lemma and not overwrite:
                continue
            key = (orth, pos, morph)
            found = cache.get(key)
            if found is None:
                found = self._strings.add(self._lemmatizer.lemmatize(doc[i])[0])
                if len(cache) >= self._maxsize:
                    cache.clear()
                cache[key] = found
            if found != lemma:
                lemmas[i] = found
                changed = True
        if changed:
            doc.from_array([self._columns[3]], lemmas.reshape(-1, 1))
        return doc

    def clear(self) -> None:
        self._cache.clear()


def accelerate(nlp: Language) -> bool:
    """Installs the faster forward on ``nlp`` in place when it reproduces spaCy's output; returns whether
    it did. Idempotent."""
    if getattr(nlp, "_kdcvg_accelerated", False):
        return True
    if "tok2vec" not in nlp.pipe_names:
        return False
    tok2vec = nlp.get_pipe("tok2vec")
    try:
        forward = Tok2VecForward(tok2vec.model)
    except (ValueError, KeyError) as exc:
        log.info("spaCy pipeline left as it is", extra={"reason": str(exc)})
        return False
    probes = [nlp.make_doc(t) for t in _PROBES]
    expected = tok2vec.model.predict(probes)
    try:
        candidates = [OrtTok2Vec(forward), forward]
    except Exception as exc:  # noqa: BLE001 - an onnxruntime that cannot run the graph: the numpy path
        log.info("tok2vec stays on numpy", extra={"reason": str(exc)})
        candidates = [forward]
    for candidate in candidates:
        try:
            got = candidate(probes)
        except Exception as exc:  # noqa: BLE001 - e.g. a layer shape the graph does not expect
            log.info(
                "tok2vec variant failed on the probes", extra={"kind": type(candidate).__name__, "reason": str(exc)}
            )
            continue
        diff = max(float(np.abs(a - b).max()) for a, b in zip(expected, got, strict=True))
        if diff <= _TOLERANCE:
            break
        log.warning("fast tok2vec disagrees with spaCy", extra={"max_abs_diff": diff, "kind": type(candidate).__name__})
    else:
        return False
    tok2vec.predict = candidate  # the component's own predict is looked up per call
    if "attribute_ruler" in nlp.pipe_names:
        _speed_up_ruler(nlp, probes)
    if "lemmatizer" in nlp.pipe_names:
        _speed_up_lemmatizer(nlp)
    ops = TorchGemmOps()
    for name, proc in nlp.pipeline:
        model = getattr(proc, "model", None)
        if name != "tok2vec" and isinstance(model, Model):
            for node in model.walk():
                node.ops = ops
    nlp._kdcvg_accelerated = True
    return True


def _speed_up_ruler(nlp: Language, probes: list[Doc]) -> None:
    ruler = nlp.get_pipe("attribute_ruler")
    try:
        matcher = RuleMatcher(ruler)
    except ValueError as exc:
        log.info("attribute ruler left as it is", extra={"reason": str(exc)})
        return
    for doc in nlp.pipe([d.text for d in probes], disable=["attribute_ruler", "lemmatizer"]):
        if matcher(doc) != ruler.match(doc):
            log.warning("fast attribute ruler disagrees with spaCy's; not installed")
            return
    ruler.match = matcher


def _speed_up_lemmatizer(nlp: Language) -> None:
    lemmatizer = nlp.get_pipe("lemmatizer")
    try:
        fast = CachedLemmatizer(lemmatizer)
    except ValueError as exc:
        log.info("lemmatizer left as it is", extra={"reason": str(exc)})
        return
    for doc in nlp.pipe(_PROBES, disable=["lemmatizer"]):
        want = [lemmatizer.lemmatize(t)[0] if (lemmatizer.overwrite or not t.lemma) else t.lemma_ for t in doc]
        if [t.lemma_ for t in fast(doc)] != want:
            log.warning("cached lemmatizer disagrees with spaCy's; not installed")
            return
    fast.clear()
    # A component is called through its type (Language runs `proc(doc)`), so the instance gets a subclass
    # whose __call__ is the cached one; everything else about the component stays spaCy's.
    lemmatizer._kdcvg_fast = fast
    lemmatizer.__class__ = type(f"Cached{type(lemmatizer).__name__}", (type(lemmatizer),), {"__call__": _cached_call})


def _cached_call(self, doc: Doc) -> Doc:  # noqa: ANN001
    return self._kdcvg_fast(doc)


def _fits(out: np.ndarray | None) -> bool:
    return out is None or (out.dtype == np.float32 and out.flags.c_contiguous and out.flags.writeable)


def _writable(a: np.ndarray) -> np.ndarray:
    """torch.from_numpy warns on read-only arrays; copy those (weights and fresh outputs are writable)."""
    return a if a.flags.writeable else np.array(a)


__all__ = ["CachedLemmatizer", "OrtTok2Vec", "RuleMatcher", "Tok2VecForward", "TorchGemmOps", "accelerate"]
