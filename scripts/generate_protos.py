"""Regenerate ledger/v1 from protos/ (the one command; CI checks the result is fresh).

Uses grpcio-tools' bundled protoc so the output only depends on pinned Python
packages, plus mypy-protobuf for the .pyi stubs that keep `mypy --strict` useful.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "ledger" / "v1"
HEADER = '"""Generated from protos/ledger/v1 by scripts/generate_protos.py; do not edit."""\n'


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    (OUT / "__init__.py").write_text(HEADER)
    well_known = resources.files("grpc_tools") / "_proto"
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    bin_dir = Path(sys.executable).parent
    args = [
        "protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        f"--mypy_out={ROOT}",
        f"--mypy_grpc_out={ROOT}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}", file=sys.stderr)
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
