"""Write the bundled sample knowledge base: 60 procedural creatives as MP4s plus a manifest.jsonl."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdcvg.data import CATEGORIES, MOTIONS, make_creative
from kdcvg.media import encode_mp4

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "server" / "kdcvg" / "sample"
FIRST_SEED = 1000
COUNT = 60  # 6 per motion, 10 per category


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.mp4"):
        old.unlink()

    categories = tuple(CATEGORIES)
    lines = []
    for i in range(COUNT):
        seed = FIRST_SEED + i
        # Pin motion and category per seed so every motion and category is covered evenly;
        # make_creative(seed, motions=[motion], categories=[category]) reproduces a clip.
        motion, category = MOTIONS[i % len(MOTIONS)], categories[i % len(categories)]
        creative = make_creative(seed, motions=[motion], categories=[category], frames=16, size=64)
        name = f"{seed}.mp4"
        (args.out / name).write_bytes(encode_mp4(creative.frames, fps=creative.spec.fps))
        record = {
            "file": name,
            "seed": seed,
            "category": creative.category,
            "caption": creative.caption,
            "selling_points": creative.selling_points,
            "motion": creative.motion,
            "product": creative.product,
            "shape": creative.spec.shape,
            "color": creative.spec.color,
            "overlay": creative.spec.overlay,
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    (args.out / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {COUNT} creatives to {args.out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
