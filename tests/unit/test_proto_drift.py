"""The committed generated code must be exactly what the proto generates."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_protos"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_the_proto(tmp_path):
    gen = load_generator()
    fresh = gen.generate(tmp_path)
    assert fresh, "the generator produced nothing"
    stale = []
    for path in fresh:
        committed = ROOT / "client" / path.relative_to(tmp_path)
        if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
            stale.append(str(committed.relative_to(ROOT)))
    assert not stale, f"regenerate with `python scripts/gen_protos.py` and commit: {stale}"


def test_drift_is_detected(tmp_path):
    # The check above must be able to fail: a changed proto yields different code.
    gen = load_generator()
    proto_root = tmp_path / "protos"
    src = ROOT / "protos" / "lookalike" / "v1" / "lookalike.proto"
    (proto_root / "lookalike" / "v1").mkdir(parents=True)
    (proto_root / "lookalike" / "v1" / "lookalike.proto").write_text(
        src.read_text().replace("message ListModelsRequest {}", "message ListModelsRequest { bool verbose = 1; }")
    )
    out = tmp_path / "out"
    out.mkdir()
    original = gen.PROTO_ROOT
    gen.PROTO_ROOT = proto_root
    try:
        fresh = gen.generate(out)
    finally:
        gen.PROTO_ROOT = original
    pb2 = next(p for p in fresh if p.name == "lookalike_pb2.py")
    assert not filecmp.cmp(pb2, ROOT / "client" / "lookalike" / "v1" / "lookalike_pb2.py", shallow=False)


@pytest.mark.parametrize("name", ["lookalike_pb2", "lookalike_pb2_grpc"])
def test_generated_modules_import(name):
    module = importlib.import_module(f"lookalike.v1.{name}")
    assert module is not None
