"""Compile ``proto/**/*.proto`` into this package with grpcio-tools (run by ``make proto``)."""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = Path(__file__).resolve().parent


def generate() -> int:
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-Imediasearch/_proto={ROOT / 'proto'}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *[f"mediasearch/_proto/{p}" for p in protos],
    ]
    code = protoc.main(args)
    for folder in {(PACKAGE / p).parent for p in protos}:
        while folder != PACKAGE:
            (folder / "__init__.py").touch()
            folder = folder.parent
    return int(code)


if __name__ == "__main__":
    sys.exit(generate())
