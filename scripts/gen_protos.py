"""Generate the Python protobuf/gRPC code under server/kdcvg/v1 from protos/.

Run: python scripts/gen_protos.py            (writes the files)
     python scripts/gen_protos.py --check    (exit 1 if the committed files are stale)
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "server"
PACKAGE = Path("kdcvg") / "v1"


def generate(out_dir: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_dir / PACKAGE / "__init__.py").write_text(
        '"""Generated from protos/kdcvg/v1 by scripts/gen_protos.py; do not edit."""\n'
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the generated code is out of date")
    args = parser.parse_args()
    if not args.check:
        target = OUT / PACKAGE
        if target.exists():
            shutil.rmtree(target)
        generate(OUT)
        print(f"generated {target.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh, committed = Path(tmp) / PACKAGE, OUT / PACKAGE
        names = sorted(p.name for p in fresh.iterdir() if p.is_file())
        stale = [
            n for n in names if not (committed / n).exists() or not filecmp.cmp(fresh / n, committed / n, shallow=False)
        ]
        if stale:
            print("generated code is stale, run `python scripts/gen_protos.py`:", ", ".join(stale))
            return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
