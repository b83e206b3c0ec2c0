"""The shipped models/ folder: registry, files, checksums, shapes (no torch needed)."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import numpy as np
import pytest

from lookalike_export.parity import find_photos, photo_batch
from lookalike_export.quantize import entry_from_registry
from lookalike_server.registry import read_entries

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
REGISTRY = MODELS / "models.toml"
SHIPPED = {"mobilenet_v2": 1280, "efficientnet_lite0": 1280}


def test_registry_lists_the_two_shipped_models() -> None:
    entries = {e["name"]: e for e in read_entries(REGISTRY)}
    assert set(SHIPPED) <= set(entries)
    for name, dim in SHIPPED.items():
        e = entries[name]
        assert e["dim"] == dim and e["optional"] is False
        assert e["input"] == "input" and e["output"] == "embedding" and e["pooling"] == "none"
        assert (MODELS / e["path"]).is_file()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_sha256_in_registry_and_manifest_match_the_file(name: str) -> None:
    e = next(e for e in read_entries(REGISTRY) if e["name"] == name)
    digest = hashlib.sha256((MODELS / e["path"]).read_bytes()).hexdigest()
    assert e["sha256"] == digest
    assert digest in (MODELS / "MANIFEST.md").read_text()


def test_the_servers_loader_accepts_the_registry() -> None:
    models = pytest.importorskip("lookalike_server.registry_reader", reason="server registry loader not importable")
    config = pytest.importorskip("lookalike_server.config")
    specs = {s.name: s for s in models.load_registry(REGISTRY, config.BatchingConfig())}
    assert {n: specs[n].dim for n in SHIPPED} == SHIPPED
    assert specs["efficientnet_lite0"].preprocess.mean == (0.5, 0.5, 0.5)
    assert specs["efficientnet_lite0"].preprocess.interpolation == "bicubic"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_model_runs_with_a_dynamic_batch(name: str) -> None:
    import onnxruntime as ort

    entry = entry_from_registry(REGISTRY, name)
    sess = ort.InferenceSession(str(MODELS / entry.path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("input", "embedding")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 224, 224]
    photos = find_photos(ROOT / "tests" / "data" / "export")[:3]
    batch = photo_batch(photos, entry)
    y3 = sess.run(None, {"input": batch})[0]
    y1 = sess.run(None, {"input": batch[:1]})[0]
    assert y3.shape == (3, SHIPPED[name]) and np.isfinite(y3).all()
    assert np.allclose(y1[0], y3[0], atol=1e-4)
    # Real features: different photos give clearly different embeddings.
    n = y3 / np.linalg.norm(y3, axis=1, keepdims=True)
    assert float(n[0] @ n[1]) < 0.9


def test_registry_file_header_documents_the_schema() -> None:
    text = REGISTRY.read_text()
    assert text.startswith("#") and "resize_shorter" in text
    tomllib.loads(text)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_see_the_whole_image_not_a_centre_crop(name: str) -> None:
    """v2 fits the whole photo into 224 x 224 (benchmarks/fit_modes.py); a centre crop would cut its sides."""
    from PIL import Image

    reader = pytest.importorskip("lookalike_server.registry_reader")
    config = pytest.importorskip("lookalike_server.config")
    from lookalike_server.preprocess import resize_and_crop

    (spec,) = reader.load_registry(REGISTRY, config.BatchingConfig(), only=[name])
    assert spec.version == "2"
    wide = Image.new("RGB", (400, 200), (255, 255, 255))
    wide.paste((255, 0, 0), (0, 0, 40, 200))  # a red band on the left tenth
    fitted = np.asarray(resize_and_crop(wide, spec.preprocess))
    assert fitted.shape == (224, 224, 3)
    assert (fitted[:, :10] == (255, 0, 0)).all(axis=-1).mean() > 0.9  # the band is still there
    assert (fitted[:, 40:] == 255).all()
