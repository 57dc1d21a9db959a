"""The atomizer on full captions: does a caption's core unit name the motion its clip shows?

Procedural captions ("A yellow jar of honey hovers in mid-air against a soft blue backdrop, with the words
"SALE" shown.") are whole sentences, the case spaCy's small model parses best, yet it reads many of their
verbs in -s as nouns ("honey hovers"). For each caption this counts whether any unit, and whether the core
unit, carries one of the verbs the generator used for the clip's motion (kdcvg.data.creatives.MOTION_VERBS).

    python bench/atomizer_captions.py --captions 3000
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from kdcvg.data.creatives import MOTION_VERBS, describe, sample_spec
from kdcvg.text.atomizer import VERSION, Atomizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=3000)
    parser.add_argument("--seed0", type=int, default=1_000_000, help="the benchmark corpora's first seed")
    args = parser.parse_args()
    atomizer = Atomizer()
    specs = [sample_spec(args.seed0 + i) for i in range(args.captions)]
    captions = [describe(s)[0] for s in specs]
    t0 = time.perf_counter()
    per_caption = atomizer.atomize_many(captions)
    seconds = time.perf_counter() - t0
    any_unit: Counter[str] = Counter()
    core_unit: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for spec, units in zip(specs, per_caption, strict=True):
        verbs = set(MOTION_VERBS[spec.motion])
        total[spec.motion] += 1
        any_unit[spec.motion] += any(u.motion.split(" ")[0] in verbs for u in units)
        core_unit[spec.motion] += any(u.core and u.motion.split(" ")[0] in verbs for u in units)
    n = sum(total.values())
    print(f"atomizer version {VERSION}, {n} captions, {seconds * 1e3 / n:.2f} ms per caption (batched)")
    print("| motion | captions | a unit names the motion | the core names it |")
    print("| --- | --- | --- | --- |")
    for motion in sorted(total):
        print(
            f"| {motion} | {total[motion]} | {any_unit[motion] / total[motion]:.3f} | "
            f"{core_unit[motion] / total[motion]:.3f} |"
        )
    print(f"| all | {n} | {sum(any_unit.values()) / n:.3f} | {sum(core_unit.values()) / n:.3f} |")


if __name__ == "__main__":
    main()
