"""Text encoder latency: ours (ONNX Runtime, int8 and fp32) against sentence-transformers on PyTorch.

Same process, same ~22-token advertiser sentences, batch 1 and batch 32, torch and ORT on the same number
of threads. Each system is timed in 5 blocks, the systems taking turns, so slow phases of a shared
machine hit all of them alike; medians and p99 over all timed calls. Also the cosine of our vectors to
sentence-transformers' on the same sentences.

    python bench/encoder.py [--threads 2] [--runs 300] [--runs32 40]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
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


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far, from /proc/stat (Linux)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle, sum(fields[:8])


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_blocks(
    systems: dict[str, Callable[[], object]], runs: int, rounds: int = 5, warmup: int = 5
) -> dict[str, np.ndarray]:
    """Per system, the milliseconds of `runs` calls, taken in `rounds` blocks per system in turn.

    Blocks, not call-by-call alternation: right after a call torch's OpenMP threads and ORT's pool keep
    spinning, and on two cores alternating calls would time each library against the other's spinning.
    Several rounds spread slow phases of a shared machine over all systems alike.
    """
    times: dict[str, list[float]] = {name: [] for name in systems}
    per_block = max(1, runs // rounds)
    for _ in range(rounds):
        for name, call in systems.items():
            time.sleep(0.3)  # let the previous system's threads go idle
            for _ in range(warmup):
                call()
            for _ in range(per_block):
                started = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - started) * 1e3)
    return {name: np.asarray(ms) for name, ms in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and ORT threads")
    parser.add_argument("--runs", type=int, default=300, help="timed rounds at batch 1")
    parser.add_argument("--runs32", type=int, default=40, help="timed rounds at batch 32")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "models")
    args = parser.parse_args()

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

    busy0, total0 = machine_busy_ticks()
    own0, wall0 = own_cpu_seconds(), time.perf_counter()
    b1 = timed_blocks(
        {
            "sentence-transformers (PyTorch)": lambda: st_encode(one()),
            "ours int8 (ORT)": lambda: ours["int8"].encode(one()),
            "ours fp32 (ORT)": lambda: ours["fp32"].encode(one()),
        },
        args.runs,
        warmup=20,
    )
    b32 = timed_blocks(
        {
            "sentence-transformers (PyTorch)": lambda: st_encode(batch32),
            "ours int8 (ORT)": lambda: ours["int8"].encode(batch32),
            "ours fp32 (ORT)": lambda: ours["fp32"].encode(batch32),
        },
        args.runs32,
        warmup=2,
    )

    busy1, total1 = machine_busy_ticks()
    own1, wall1 = own_cpu_seconds(), time.perf_counter()
    cores = os.cpu_count() or 1
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    others = ((busy1 - busy0) / ticks_per_s - (own1 - own0)) / ((wall1 - wall0) * cores)
    print(f"# Text encoder: all-MiniLM-L6-v2, {datetime.date.today()}")
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores; "
        f"torch threads {torch.get_num_threads()}, ORT intra-op threads {args.threads}; "
        f"other processes used {max(others, 0):.0%} of the machine while timing"
    )
    print(
        f"torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}, "
        f"onnxruntime {ort.__version__}; {len(SENTENCES)} sentences, "
        f"{np.mean(tokens):.1f} tokens mean ({min(tokens)}-{max(tokens)}, with [CLS] and [SEP])"
    )
    print(f"batch 1: {args.runs} timed calls per encoder; batch 32: {args.runs32}; in 5 blocks each, after warm-up\n")
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
