"""Text encoder latency: ours (ONNX Runtime, int8 and fp32) against sentence-transformers on PyTorch.

Same process, same ~22-token advertiser sentences, batch 1 and batch 32, torch and ORT on the same number
of threads. The systems are timed round-robin (one call each per round, order rotating), so background
load on a shared machine hits all of them alike; medians and p99 over the rounds after a warm-up. Also
the cosine of our vectors to sentence-transformers' on the same sentences.

    python bench/encoder.py [--threads 2] [--runs 300] [--runs32 40]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnxruntime as ort  # noqa: E402
import sentence_transformers  # noqa: E402
import torch  # noqa: E402

from kdcvg.text.encoder import TextEncoder, default_model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Advertiser-style product sentences of about 22 tokens each (the mean is printed).
SENTENCES = [
    "This lightweight running shoe with a breathable mesh upper keeps your feet cool on long summer runs.",
    "Our waterproof smartwatch tracks your heart rate, sleep and daily steps, and lasts a full week per charge.",
    "Fresh organic coffee beans, roasted in small batches and delivered to your door every single week.",
    "The cordless blender crushes ice in seconds, fits in your bag and cleans itself with one button.",
    "Noise-cancelling headphones that let you focus on the music, not the commute, now 30% off today.",
    "A model turns slowly so the camera can show the linen summer dress from every side.",
    "The sonic toothbrush vibrates forty thousand times a minute for a deeper clean than manual brushing.",
    "Pour the sparkling lemonade over crushed ice and watch the bubbles rise to the top of the glass.",
    "This travel backpack has a padded laptop sleeve, a hidden pocket and a built-in USB charging port.",
    "The robot vacuum maps your whole home and avoids socks, cables and pet bowls on its own.",
    "Slip on these wireless earbuds and get eight hours of playback, plus twenty more from the case.",
    "A chef slices a ripe tomato with our ceramic knife in one clean stroke, no pressure needed.",
    "A rich moisturiser with hyaluronic acid that absorbs fast and leaves no greasy shine on your skin.",
    "The family camping tent pops up in under a minute and stays dry through heavy summer storms.",
    "Kids build a rocket from our magnetic blocks and launch it across the living room floor.",
    "The air fryer makes golden crispy fries with eighty percent less oil than a deep fryer.",
]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed_round_robin(systems: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, np.ndarray]:
    """Per system, the milliseconds of each of `runs` calls, timed one call per system per round."""
    names = list(systems)
    for _ in range(warmup):
        for name in names:
            systems[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            started = time.perf_counter()
            systems[name]()
            times[name].append((time.perf_counter() - started) * 1e3)
    return {name: np.asarray(ms) for name, ms in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and ORT threads")
    parser.add_argument("--runs", type=int, default=300, help="timed rounds at batch 1")
    parser.add_argument("--runs32", type=int, default=40, help="timed rounds at batch 32")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "models")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    st = sentence_transformers.SentenceTransformer(str(default_model_dir()), device="cpu")
    ours = {p: TextEncoder.load(args.cache_dir, precision=p, threads=args.threads) for p in ("int8", "fp32")}
    tokens = [len(e.ids) for e in ours["fp32"]._tokenizer.encode_batch(SENTENCES)]

    def st_encode(texts: list[str]) -> np.ndarray:
        return st.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False)

    reference = st_encode(SENTENCES)
    cosines = {name: (enc.encode(SENTENCES) * reference).sum(axis=1) for name, enc in ours.items()}

    batch32 = (SENTENCES * 2)[:32]
    counter = iter(range(10**9))

    def one() -> list[str]:  # a different sentence per call, the same sequence for every system
        return [SENTENCES[next(counter) % len(SENTENCES)]]

    b1 = timed_round_robin(
        {
            "sentence-transformers (PyTorch)": lambda: st_encode(one()),
            "ours int8 (ORT)": lambda: ours["int8"].encode(one()),
            "ours fp32 (ORT)": lambda: ours["fp32"].encode(one()),
        },
        args.runs,
        warmup=30,
    )
    b32 = timed_round_robin(
        {
            "sentence-transformers (PyTorch)": lambda: st_encode(batch32),
            "ours int8 (ORT)": lambda: ours["int8"].encode(batch32),
            "ours fp32 (ORT)": lambda: ours["fp32"].encode(batch32),
        },
        args.runs32,
        warmup=5,
    )

    print(f"# Text encoder: all-MiniLM-L6-v2, {datetime.date.today()}")
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores; "
        f"torch threads {torch.get_num_threads()}, ORT intra-op threads {args.threads}; "
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print(
        f"torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}, "
        f"onnxruntime {ort.__version__}; {len(SENTENCES)} sentences, "
        f"{np.mean(tokens):.1f} tokens mean ({min(tokens)}-{max(tokens)}, with [CLS] and [SEP])"
    )
    print(f"batch 1: {args.runs} timed rounds; batch 32: {args.runs32}; round-robin after warm-up\n")
    print("| encoder | batch | median ms | p99 ms | speed-up (median) | min cosine | mean cosine |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for batch, results in ((1, b1), (32, b32)):
        base = float(np.median(results["sentence-transformers (PyTorch)"]))
        for name, ms in results.items():
            median, p99 = float(np.median(ms)), float(np.percentile(ms, 99))
            key = "int8" if "int8" in name else "fp32" if "fp32" in name else None
            cos = f"{cosines[key].min():.4f} | {cosines[key].mean():.4f}" if key else "1 | 1"
            print(f"| {name} | {batch} | {median:.2f} | {p99:.2f} | {base / median:.2f}x | {cos} |")


if __name__ == "__main__":
    main()
