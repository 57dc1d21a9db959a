"""The ONNX text encoder against sentence-transformers, its export cache, and the asyncio micro-batcher."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kdcvg.text import encoder as enc
from kdcvg.text.batcher import MicroBatcher
from kdcvg.text.encoder import TextEncoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SELLING_POINTS = [
    "50% off today",
    "spins to show every angle",
    "free shipping",
    "buy one get one free",
    "waterproof to 50 m",
    "lasts all day",
    "only $19.99",
    "limited edition",
    "new flavour",
    "zero sugar",
    "100% organic cotton",
    "ships in 24 h",
    "2-year warranty",
    "fits in your pocket",
    "charges in 15 minutes",
    "made in Italy",
    "now with 2x battery",
    "vegan & cruelty-free",
    "folds flat for storage",
    "dishwasher safe",
    "SALE ENDS SUNDAY",
    "hands-free cleaning",
    "glows in the dark",
    "unboxing in 10 seconds",
    "slow-motion pour",
]
PRODUCT_SENTENCES = [
    "This lightweight running shoe with a breathable mesh upper keeps your feet cool on long summer runs.",
    "Our waterproof smartwatch tracks your heart rate, sleep and steps all day long.",
    "Fresh organic coffee beans, roasted in small batches and delivered to your door every week.",
    "A golden retriever chases a red ball across the green park lawn on a sunny afternoon.",
    "The blender crushes ice in seconds and cleans itself with one button.",
    "Noise-cancelling headphones that let you focus on the music, not the commute.",
    "A model turns slowly so the camera can show the dress from every side.",
    "The electric toothbrush vibrates 40,000 times a minute for a deeper clean.",
    "Pour the sparkling lemonade over ice and watch the bubbles rise.",
    "This backpack has a padded laptop sleeve, a hidden pocket and a USB charging port.",
    "The robot vacuum maps your home and avoids socks, cables and pet bowls.",
    "Slip on these wireless earbuds and get eight hours of playback per charge.",
    "A chef slices a ripe tomato with our ceramic knife in one clean stroke.",
    "Moisturiser with hyaluronic acid that absorbs fast and leaves no greasy shine.",
    "The camping tent pops up in under a minute and survives heavy rain.",
    "Kids build a rocket from our magnetic blocks and launch it across the room.",
    "The sofa bed unfolds into a queen-size mattress for surprise guests.",
    "Stream 4K movies on the new 65-inch OLED TV with deep blacks and bright colours.",
    "A cyclist races downhill wearing the aerodynamic helmet.",
    "Our meal kit brings three healthy dinners to your door each week.",
    "The air fryer makes crispy fries with 80% less oil.",
    "Sunscreen SPF 50 that stays on through swimming and sweat.",
    "The smart lock opens with your fingerprint, your phone or a code.",
    "A barista draws a heart in the latte foam.",
    "The yoga mat grips the floor and cushions your knees.",
    "is chasing the ball",
    "the phone is dropped on concrete and survives",
    "watch the paint dry in minutes, not hours",
    "the car drives through the desert at sunset",
    "a woman lifts the kettle and pours tea",
]
UNICODE = [
    "Café crème brûlée — naïve façade",
    "日本語の広告テキスト：今日だけ半額！",
    "新品上市，限时八折",
    "Скидка 30% на всё",
    "عرض خاص لفترة محدودة",
    "🔥🔥 HOT DEAL 🔥🔥",
    "Großartige Qualität für wenig Geld",
    "Ñandú piñata señorita",
    "emoji only 😀😃😄",
    "mixed: price €49,99 / £42 / ¥6000",
    "tab\tseparated\ttext",
    "line one\nline two",
    "  leading and trailing spaces  ",
    "ÅÄÖ åäö ØÆ",
    "한국어 광고 문구",
]
EMPTYISH = ["", " ", "a", "!", "?", "ok", "...", "42", "#ad", "\u200b"]
_VACUUM = (
    "Introducing the all-new UltraClean Pro vacuum, engineered with a cyclone system that never loses "
    "suction, a washable HEPA filter that traps 99.97% of dust and allergens, a sixty-minute battery that "
    "swaps in seconds, and an LED light that reveals hidden dust under the sofa, all wrapped in a "
    "lightweight body that converts into a handheld for stairs, cars and curtains. "
)
LONG = [
    _VACUUM,
    _VACUUM * 4,  # over 256 tokens: truncated
    " ".join(["Save big on every item in the store this weekend only"] * 12),
    "Our story began in a small garage where two friends wanted a better way to carry coffee on their bike; "
    "after 200 prototypes, a crowdfunding campaign and thousands of happy riders, the mug that never spills "
    "is now available in six colours, with a lifetime warranty and free returns.",
    "word " * 400,
]
COMBINED = [f"{p}, {s.lower().rstrip('.')}" for p, s in zip(SELLING_POINTS, PRODUCT_SENTENCES, strict=False)]
SENTENCES = SELLING_POINTS + PRODUCT_SENTENCES + UNICODE + EMPTYISH + LONG + COMBINED[:15]
assert len(SENTENCES) == 100


# ---------------------------------------------------------------------------------------------------------
# Fixtures: one cache dir, one export per precision, one sentence-transformers run for the whole file.


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("encoder-cache")


@pytest.fixture(scope="session")
def fp32(cache_dir) -> TextEncoder:
    return TextEncoder.load(cache_dir, precision="fp32", threads=2)


@pytest.fixture(scope="session")
def int8(cache_dir, fp32) -> TextEncoder:  # after fp32: int8 is quantised from the cached fp32 graph
    return TextEncoder.load(cache_dir, precision="int8", threads=2)


@pytest.fixture(scope="session")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(enc.default_model_dir()), device="cpu")
    return model.encode(SENTENCES, batch_size=32, convert_to_numpy=True, show_progress_bar=False)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------------------------------------------------
# Parity and shapes


def test_fp32_matches_sentence_transformers(fp32, reference):
    cos = _cosines(fp32.encode(SENTENCES), reference)
    worst = int(cos.argmin())
    assert cos.min() > 0.999, f"{cos.min():.5f} on {SENTENCES[worst]!r}"


def test_int8_close_to_sentence_transformers(int8, reference):
    cos = _cosines(int8.encode(SENTENCES), reference)
    worst = int(cos.argmin())
    assert cos.min() >= 0.99, f"{cos.min():.5f} on {SENTENCES[worst]!r}"
    assert cos.mean() >= 0.995


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_shapes_order_and_normalisation(precision, request):
    encoder: TextEncoder = request.getfixturevalue(precision)
    assert encoder.dim == 384
    vectors = encoder.encode(SENTENCES)
    assert vectors.shape == (100, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Batched (sorted by length, padded) and one at a time give the same vectors, in the caller's order.
    # int8 only nearly: its dynamic activation scales are per tensor, so they depend on the batch-mates.
    picks = [0, 27, 60, 75, 82, 99]
    one_by_one = np.stack([encoder.encode([SENTENCES[i]])[0] for i in picks])
    assert _cosines(one_by_one, vectors[picks]).min() > (0.99999 if precision == "fp32" else 0.99)
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("a single string")


def test_small_batches_match_one_big_batch(fp32):
    small = TextEncoder(fp32._session, fp32._tokenizer, precision="fp32", model_path=fp32.model_path, batch_size=7)
    runs = small.runs
    np.testing.assert_allclose(small.encode(SENTENCES[:40]), fp32.encode(SENTENCES[:40]), atol=2e-5)
    assert small.runs - runs == 6  # ceil(40 / 7)


def test_token_states(fp32):
    texts = ["50% off today", "", _VACUUM * 4, "spins to show every angle"]
    hidden, mask = fp32.encode_tokens(texts)
    assert hidden.dtype == np.float32 and mask.dtype == bool
    assert hidden.shape == (4, 256, 384) and mask.shape == (4, 256)  # truncated at the model's 256
    assert mask.sum(axis=1).tolist() == [6, 2, 256, 7]  # [CLS] ... [SEP]
    assert not hidden[~mask].any()  # padding is zero
    # Mean-pooling the states reproduces encode().
    pooled = (hidden * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(pooled, fp32.encode(texts), atol=1e-5)
    empty_hidden, empty_mask = fp32.encode_tokens([])
    assert empty_hidden.shape == (0, 0, 384) and empty_mask.shape == (0, 0)


# ---------------------------------------------------------------------------------------------------------
# Cache


def test_second_load_reuses_the_cache(cache_dir, fp32, int8):
    assert fp32.exported and int8.exported
    stats = {p: p.stat().st_mtime_ns for p in (fp32.model_path, int8.model_path)}
    for precision in ("fp32", "int8"):
        again = TextEncoder.load(cache_dir, precision=precision)
        assert not again.exported
    assert {p: p.stat().st_mtime_ns for p in stats} == stats
    assert sorted(p.name for p in cache_dir.glob("*.onnx")) == sorted(p.name for p in stats)
    assert not list(cache_dir.glob(".*.tmp"))  # no temp file left behind


def _copy_cache(src: Path, dst: Path) -> None:
    for path in src.glob("*.onnx"):
        shutil.copy2(path, dst / path.name)
        shutil.copy2(path.with_suffix(".json"), dst / path.with_suffix(".json").name)


@pytest.mark.parametrize("damage", ["flip", "truncate", "no-manifest"])
def test_corrupt_cached_model_is_rebuilt(cache_dir, int8, tmp_path, damage):
    _copy_cache(cache_dir, tmp_path)
    victim = tmp_path / int8.model_path.name
    if damage == "flip":
        data = bytearray(victim.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # inside a weight: still parses
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:1000])
    else:
        victim.with_suffix(".json").unlink()
    rebuilt = TextEncoder.load(tmp_path, precision="int8")
    assert rebuilt.exported
    assert victim.read_bytes() == int8.model_path.read_bytes()
    np.testing.assert_array_equal(rebuilt.encode(SENTENCES[:5]), int8.encode(SENTENCES[:5]))


def test_concurrent_builds_build_once(cache_dir, fp32, tmp_path):
    _copy_cache(cache_dir, tmp_path)
    for path in tmp_path.glob("*-int8-*"):
        path.unlink()
    results: list[tuple[Path, bool]] = []
    threads = [threading.Thread(target=lambda: results.append(enc.ensure_model(tmp_path, "int8"))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(built for _, built in results) == [False, False, True]
    assert len({path for path, _ in results}) == 1


def test_cache_key_covers_model_files_and_precision(tmp_path):
    model_dir = enc.default_model_dir()
    copy = tmp_path / "model"
    for path in model_dir.rglob("*"):
        if path.is_file():
            target = copy / path.relative_to(model_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    assert enc.cache_key(copy, "int8") == enc.cache_key(model_dir, "int8")
    assert enc.cache_key(model_dir, "int8") != enc.cache_key(model_dir, "fp32")
    (copy / "config.json").unlink()
    (copy / "config.json").write_text((model_dir / "config.json").read_text().replace("0.1", "0.2"))
    assert enc.cache_key(copy, "int8") != enc.cache_key(model_dir, "int8")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="TensorrtExecutionProvider.*available"):
        TextEncoder.load(tmp_path, providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"])
    with pytest.raises(ValueError, match="precision"):
        TextEncoder.load(tmp_path, precision="fp16")  # type: ignore[arg-type]
    assert enc.resolve_providers([]) == ["CPUExecutionProvider"]
    assert enc.resolve_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert not list(tmp_path.glob("*.onnx"))


# ---------------------------------------------------------------------------------------------------------
# Micro-batcher (on fp32, whose vectors do not depend on the batch, so "the same vectors" is exact)


class SlowEncoder:
    """Wraps an encoder: counts calls and can hold each call for a while or fail it."""

    def __init__(self, inner: TextEncoder, delay: float = 0.0) -> None:
        self.inner, self.delay, self.calls, self.fail = inner, delay, [], False
        self.started = threading.Event()

    def encode(self, texts):
        self.calls.append(list(texts))
        self.started.set()
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("encoder broke")
        return self.inner.encode(texts)


async def test_concurrent_encodes_are_batched(fp32):
    texts = SENTENCES[:50]
    direct = fp32.encode(texts)
    runs = fp32.runs
    batcher = MicroBatcher(fp32, max_batch=32, max_wait_ms=2)
    vectors = await asyncio.gather(*(batcher.encode(t) for t in texts))
    await batcher.close()
    assert _cosines(np.stack(vectors), direct).min() > 0.99999
    assert fp32.runs - runs < 50
    assert batcher.batches_run < 50 and batcher.items == 50
    assert batcher.mean_batch_size == 50 / batcher.batches_run > 1


async def test_encode_many_is_one_batch(fp32):
    spy = SlowEncoder(fp32)
    async with MicroBatcher(spy, max_batch=8) as batcher:
        many = await batcher.encode_many(SENTENCES[:20])  # bigger than max_batch: still one call
        assert (await batcher.encode_many([])).shape == (0, 384)
    assert many.shape == (20, 384)
    assert len(spy.calls) == 2 and spy.calls[0] == SENTENCES[:20]
    assert _cosines(many, fp32.encode(SENTENCES[:20])).min() > 0.99999


async def test_cancelled_callers_leave_the_rest_correct(fp32):
    spy = SlowEncoder(fp32, delay=0.05)
    batcher = MicroBatcher(spy, max_batch=4, max_wait_ms=1)
    texts = SENTENCES[:24]
    tasks = [asyncio.create_task(batcher.encode(t)) for t in texts]
    await asyncio.to_thread(spy.started.wait, 5)  # the first batch is in the encoder
    cancelled = set(range(0, 24, 3))  # in flight and still queued alike
    for i in cancelled:
        tasks[i].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    direct = fp32.encode(texts)
    for i, result in enumerate(results):
        if i in cancelled:
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert _cosines(result[None], direct[i : i + 1])[0] > 0.99999, texts[i]
    encoded = [t for call in spy.calls for t in call]
    assert len(encoded) < len(texts)  # the cancelled ones still queued were skipped
    assert (await batcher.encode("after the cancellations")).shape == (384,)
    await batcher.close()


async def test_encoder_errors_reach_the_callers_and_the_batcher_goes_on(fp32):
    spy = SlowEncoder(fp32)
    batcher = MicroBatcher(spy)
    spy.fail = True
    results = await asyncio.gather(*(batcher.encode(t) for t in SENTENCES[:5]), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "encoder broke" in str(r) for r in results)
    spy.fail = False
    assert (await batcher.encode("works again")).shape == (384,)
    # A bad argument fails its own call, not the batch it would have joined.
    good = asyncio.create_task(batcher.encode("50% off today"))
    with pytest.raises(TypeError):
        await batcher.encode(None)  # type: ignore[arg-type]
    assert (await good).shape == (384,)
    await batcher.close()


async def test_event_loop_keeps_running_during_a_batch(fp32):
    spy = SlowEncoder(fp32, delay=0.3)
    batcher = MicroBatcher(spy)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    await batcher.encode("50% off today")
    tick_task.cancel()
    await batcher.close()
    assert ticks >= 10


async def test_close_finishes_queued_jobs_then_refuses(fp32):
    spy = SlowEncoder(fp32, delay=0.05)
    batcher = MicroBatcher(spy, max_batch=2)
    tasks = [asyncio.create_task(batcher.encode(t)) for t in SENTENCES[:6]]
    await asyncio.sleep(0)
    await batcher.close()
    assert all(t.done() and t.result().shape == (384,) for t in tasks)
    with pytest.raises(RuntimeError, match="closed"):
        await batcher.encode("too late")


def test_with_threads_opens_another_session_on_the_same_graph(int8):
    from kdcvg.app import solo_encoder
    from kdcvg.config import Settings

    solo = solo_encoder(Settings(), int8)  # the server's default: 2 threads for a Search alone on the CPU
    assert solo is not None and solo._session is not int8._session
    assert solo.model_path == int8.model_path and solo.providers == int8.providers and solo.precision == "int8"
    assert _cosines(solo.encode(SENTENCES), int8.encode(SENTENCES)).min() > 0.9999
    assert solo_encoder(Settings(encoder_solo_threads=0), int8) is None
    assert solo_encoder(Settings(encoder_solo_threads=1), int8) is None  # no more than encoder_threads
    assert solo_encoder(Settings(encoder_threads=None), int8) is None  # already one thread per core


async def test_a_claimed_call_alone_runs_on_the_solo_encoder(fp32):
    main, solo = SlowEncoder(fp32), SlowEncoder(fp32)
    batcher = MicroBatcher(main, solo=solo)
    claim = batcher.try_claim()
    alone = await asyncio.to_thread(batcher.encode_claimed, claim, ["free shipping"], alone=True)
    assert solo.calls == [["free shipping"]] and main.calls == [] and batcher.solo_runs == 1
    claim = batcher.try_claim()
    assert claim is not None  # given back by the call alone
    beside = await asyncio.to_thread(batcher.encode_claimed, claim, ["free shipping"])
    assert main.calls == [["free shipping"]] and batcher.solo_runs == 1
    np.testing.assert_allclose(alone, beside, atol=1e-6)
    await batcher.encode("batches never use the solo encoder")
    assert len(solo.calls) == 1 and len(main.calls) == 2
    await batcher.close()
    plain = MicroBatcher(main)  # no solo encoder: a call alone runs on the one there is
    vectors = await asyncio.to_thread(plain.encode_claimed, plain.try_claim(), ["free shipping"], alone=True)
    assert len(main.calls) == 3 and plain.solo_runs == 0
    np.testing.assert_allclose(vectors, alone, atol=1e-6)
    await plain.close()


def test_prepare_tokenizes_first_then_runs_the_model(fp32):
    """encode in two steps gives the same vectors; the model runs only in the second."""
    texts = ["free shipping", "a bottle spins slowly on a marble table", "50% off"]
    runs = fp32.runs
    run = fp32.prepare(texts)
    assert fp32.runs == runs  # tokenized only
    np.testing.assert_array_equal(run(), fp32.encode(texts))
    assert fp32.prepare([])().shape == (0, 384)
    with pytest.raises(TypeError):
        fp32.prepare("one string")


async def test_a_claimed_call_signals_ready_between_tokenizing_and_the_run(fp32):
    events: list[str] = []
    runs_at_ready: list[int] = []
    batcher = MicroBatcher(fp32)

    def ready() -> None:
        events.append("ready")
        runs_at_ready.append(fp32.runs)

    runs = fp32.runs
    vectors = await asyncio.to_thread(batcher.encode_claimed, batcher.try_claim(), ["free shipping"], ready=ready)
    assert events == ["ready"] and runs_at_ready == [runs] and fp32.runs == runs + 1
    np.testing.assert_array_equal(vectors, fp32.encode(["free shipping"]))
    # An encoder without prepare (any object with encode): ready comes before the call.
    spy = SlowEncoder(fp32)
    plain = MicroBatcher(spy)
    claim = plain.try_claim()
    await asyncio.to_thread(plain.encode_claimed, claim, ["free shipping"], ready=lambda: events.append(len(spy.calls)))
    assert events == ["ready", 0] and len(spy.calls) == 1
    await batcher.close()
    await plain.close()


async def test_an_idle_encoder_can_be_claimed_for_one_call(fp32):
    spy = SlowEncoder(fp32, delay=0.2)
    batcher = MicroBatcher(spy)
    claim = batcher.try_claim()
    assert claim is not None
    assert batcher.try_claim() is None  # one claim at a time
    # Others still get their vectors, by the batcher, while the claim is held.
    queued = asyncio.create_task(batcher.encode("50% off today"))
    claimed = await asyncio.to_thread(batcher.encode_claimed, claim, ["free shipping"])
    assert _cosines(claimed, fp32.encode(["free shipping"]))[0] > 0.99999
    assert (await queued).shape == (384,)
    # No claim while a batch runs; encode_claimed gave its claim back.
    running = asyncio.create_task(batcher.encode("bottle spins"))
    await asyncio.to_thread(spy.started.wait, 5)
    await asyncio.sleep(0.05)
    assert batcher.try_claim() is None
    await running
    second = batcher.try_claim()
    assert second is not None
    batcher.release(claim)  # giving back a claim twice must not free the one held now
    assert batcher.try_claim() is None
    batcher.release(second)  # its caller was cancelled before using it
    third = batcher.try_claim()
    assert third is not None
    batcher.release(third)
    await batcher.close()
    assert batcher.try_claim() is None
    assert batcher.items == 3
