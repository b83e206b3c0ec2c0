#!/usr/bin/env python3
"""Regenerates the committed protobuf/gRPC code from ``protos/``.

Writes ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` under ``client/`` so
that ``import lookalike.v1.lookalike_pb2`` works. The output is committed;
``tests/unit/test_proto_drift.py`` fails when it no longer matches the proto.

Usage: ``python scripts/gen_protos.py [--out DIR]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DEFAULT_OUT = ROOT / "client"


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc (from grpcio-tools) over every proto under ``protos/``.

    Args:
        out_dir: Folder that receives the package tree (``lookalike/v1/...``).

    Returns:
        The generated files.

    Raises:
        RuntimeError: protoc reported an error.
    """
    import grpc_tools
    from grpc_tools import protoc  # dev dependency only

    protos = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    generated = []
    for proto in protos:
        stem = out_dir / proto[: -len(".proto")]
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            generated.append(Path(str(stem) + suffix))
    return generated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output root (default: client/)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out) if path.is_relative_to(args.out) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
