"""Per-model decode settings served for real: one ONNX file under a "fast" and an "exact" entry.

The same MobileNetV2 file is registered twice; only the decode settings
differ. A large JPEG and an EXIF-rotated photo then embed differently under
the two names, each exactly as ONNX Runtime embeds that model's own
``lookalike_server.preprocess`` output, and ListModels says which is which.
"""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from lookalike_server.config import BatchingConfig, LimitsConfig, ModelsConfig
from lookalike_server.domain import RequestContext
from lookalike_server.embedder import Embedder
from lookalike_server.models import OnnxModel
from lookalike_server.preprocess import preprocess
from lookalike_server.registry_reader import load_registry
from tests.conftest import ROOT, start_server

ONNX = ROOT / "models" / "mobilenet_v2.onnx"
PHOTOS = ROOT / "tests" / "data" / "photos"
LIMITS = {"max_bytes": 1 << 30, "max_pixels": 1 << 30}


def _registry(folder: Path) -> Path:
    body = ""
    for name, decode in (("fastnet", "fast"), ("exactnet", "exact")):
        body += (
            f'[[models]]\nname = "{name}"\npath = "{ONNX}"\ndim = 1280\npreset = "imagenet"\ndecode = "{decode}"\n\n'
        )
    reg = folder / "models.toml"
    reg.write_text(body)
    return reg


def _photos() -> dict[str, bytes]:
    with Image.open(PHOTOS / "crowned_crane.jpg") as im:
        rgb = im.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    out = {}
    for name, img, kw in (
        ("large", rgb.resize((1920, 1080), Image.Resampling.LANCZOS), {}),
        ("rotated", rgb.transpose(Image.Transpose.ROTATE_90), {"exif": exif.tobytes()}),
    ):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90, **kw)
        out[name] = buf.getvalue()
    out["small"] = (PHOTOS / "daffodil.jpg").read_bytes()
    return out


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _registry(tmp_path_factory.mktemp("decode"))


def _reference(registry: Path, name: str, data: bytes) -> np.ndarray:
    (spec,) = [s for s in load_registry(registry, BatchingConfig()) if s.name == name]
    sess = ort.InferenceSession(str(spec.path), providers=["CPUExecutionProvider"])
    v = sess.run(None, {"input": preprocess(data, spec.preprocess, **LIMITS)[None]})[0][0]
    return np.asarray(v / np.linalg.norm(v), np.float32)


def test_each_entry_serves_its_own_decoding(registry: Path) -> None:
    live = start_server(stores=False, models=ModelsConfig(registry=str(registry)))
    try:
        stub = pb_grpc.LookalikeStub(grpc.insecure_channel(live.target))
        models = {m.name: m.preprocessing for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
        assert (models["fastnet"].decode, models["fastnet"].jpeg_draft, models["fastnet"].exif_orientation) == (
            "fast",
            True,
            True,
        )
        assert (models["exactnet"].decode, models["exactnet"].jpeg_draft, models["exactnet"].exif_orientation) == (
            "exact",
            False,
            False,
        )
        for photo, data in _photos().items():
            got = {}
            for name in ("fastnet", "exactnet"):
                resp = stub.Embed(pb.EmbedRequest(model=name, images=[data]), timeout=60)
                got[name] = np.array(resp.embeddings[0].values, np.float32)
                np.testing.assert_allclose(got[name], _reference(registry, name, data), atol=1e-5)
            cos = float(got["fastnet"] @ got["exactnet"])
            if photo == "small":
                assert cos > 0.99999  # 400 px, no EXIF tag: nothing to decode differently
            else:
                assert cos < 0.9999, photo  # draft / EXIF made the two entries see other pixels (large: 0.99980)
    finally:
        live.server.stop(0)  # type: ignore[attr-defined]


def test_one_request_under_both_entries_decodes_once_per_setting(registry: Path) -> None:
    specs = load_registry(registry, BatchingConfig(max_batch_size=2))
    embedder = Embedder({s.name: OnnxModel(s, ("CPUExecutionProvider",)) for s in specs}, LimitsConfig(), 2)
    try:
        photos = _photos()
        images = [photos["large"], photos["rotated"]]
        out, _ = embedder.embed(images, ["fastnet", "exactnet"], RequestContext(60))
        for name in ("fastnet", "exactnet"):
            for i, data in enumerate(images):
                np.testing.assert_allclose(out[name][i], _reference(registry, name, data), atol=1e-5)
        permit = embedder.admission.admit(images[:1], ["fastnet", "exactnet"])
        assert permit.pixels == 960 * 540 + 1920 * 1080  # one drafted decode, one full one
        permit.release()
    finally:
        embedder.close()
