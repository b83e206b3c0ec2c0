"""uint8-input graphs: the normalisation in the graph equals the host's, and the server feeds them uint8."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from lookalike_export.cli import main
from lookalike_export.parity import onnx_session
from lookalike_export.uint8_input import prepend_uint8_input
from lookalike_server.config import BatchingConfig, LimitsConfig
from lookalike_server.domain import RequestContext
from lookalike_server.embedder import Embedder
from lookalike_server.errors import ConfigError, ModelLoadError
from lookalike_server.models import OnnxModel
from lookalike_server.preprocess import PRESETS, PreprocessSpec, normalise, resize_and_crop
from lookalike_server.registry_reader import load_registry

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = sorted(p for p in (ROOT / "tests" / "data" / "photos").iterdir() if p.suffix in (".jpg", ".png"))

pytestmark = pytest.mark.export


def _passthrough(spec: PreprocessSpec) -> onnx.ModelProto:
    """A graph whose output is its float input times one: shows exactly what the prepended nodes compute."""
    shape: list[str | int | None] = ["n", *spec.shape]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "one"], ["embedding"])],
        "passthrough",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, shape)],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("preset", ["imagenet", "caffe", "tf"])
def test_the_graph_computes_the_hosts_normalisation(tmp_path: Path, preset: str) -> None:
    """For every preset (NCHW RGB, NHWC BGR with caffe means, NHWC [-1, 1]) the graph's tensor is the host's."""
    values = {**PRESETS[preset], "height": 64, "width": 48, "resize_shorter": 0}
    spec = PreprocessSpec(**values)  # type: ignore[arg-type]
    u8_spec = PreprocessSpec(**values, input_dtype="uint8")  # type: ignore[arg-type]
    path = tmp_path / "u8.onnx"
    onnx.save(prepend_uint8_input(_passthrough(spec), spec, "input"), str(path))
    sess = onnx_session(path)
    imgs = [resize_and_crop(Image.open(p).convert("RGB"), spec) for p in PHOTOS[:3]]
    host = np.stack([normalise(img, spec) for img in imgs])
    fed = np.stack([normalise(img, u8_spec) for img in imgs])
    assert fed.dtype == np.uint8 and fed.shape == (3, 64, 48, 3)
    (got,) = sess.run(["embedding"], {"input": fed})  # type: ignore[attr-defined]
    assert got.shape == host.shape
    np.testing.assert_allclose(got, host, rtol=0, atol=1e-5)


def test_wrapping_refuses_what_it_cannot_wrap() -> None:
    spec = PreprocessSpec()
    with pytest.raises(ConfigError, match="no input 'pixels'"):
        prepend_uint8_input(_passthrough(spec), spec, "pixels")
    with pytest.raises(ConfigError, match="already"):
        prepend_uint8_input(_passthrough(spec), PreprocessSpec(input_dtype="uint8"), "input")
    with pytest.raises(ValueError, match="input_dtype"):
        PreprocessSpec(input_dtype="float16")


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped MobileNetV2 and its uint8 variant, made by the CLI, in one registry."""
    d = tmp_path_factory.mktemp("u8")
    shutil.copy(ROOT / "models" / "mobilenet_v2.onnx", d / "mobilenet_v2.onnx")
    text = (ROOT / "models" / "models.toml").read_text()
    first = text.index("\n[[models]]")
    second = text.index("\n[[models]]", first + 1)
    (d / "models.toml").write_text(text[first:second].lstrip())
    assert main(["uint8", str(d / "mobilenet_v2.onnx")]) == 0
    return d / "models.toml"


def test_the_server_feeds_the_uint8_graph_and_gets_the_float_paths_vectors(wrapped: Path) -> None:
    """Same photos through the server's decode path: float entry vs uint8 entry."""
    specs = {s.name: s for s in load_registry(wrapped, BatchingConfig(max_batch_size=4))}
    assert specs["mobilenet_v2_u8"].preprocess.input_dtype == "uint8"
    assert specs["mobilenet_v2_u8"].preprocess.shape == (224, 224, 3)
    models = {name: OnnxModel(s, ("CPUExecutionProvider",), intra_op_threads=1) for name, s in specs.items()}
    embedder = Embedder(models, LimitsConfig(), 2)
    try:
        images = [p.read_bytes() for p in PHOTOS]
        out, _ = embedder.embed(images, ["mobilenet_v2", "mobilenet_v2_u8"], RequestContext(120))
    finally:
        embedder.close()
    cosines = np.sum(out["mobilenet_v2"] * out["mobilenet_v2_u8"], axis=1)
    assert cosines.min() >= 0.99999, cosines


def test_an_entry_that_disagrees_with_the_graphs_input_type_is_refused(wrapped: Path, tmp_path: Path) -> None:
    text = wrapped.read_text()
    (tmp_path / "models.toml").write_text(
        text.replace('input_dtype = "uint8"', 'input_dtype = "float32"').replace(
            'path = "mobilenet_v2_u8.onnx"', f'path = "{wrapped.parent / "mobilenet_v2_u8.onnx"}"'
        )
    )
    spec = next(s for s in load_registry(tmp_path / "models.toml", BatchingConfig()) if s.name == "mobilenet_v2_u8")
    with pytest.raises(ModelLoadError, match=r"is tensor\(uint8\).*set input_dtype"):
        OnnxModel(spec, ("CPUExecutionProvider",))


def test_an_fp16_variant_of_a_uint8_graph_keeps_the_normalisation_in_fp32_and_loads(wrapped: Path) -> None:
    """The fp16 converter alone retypes the uint8 graph's cast and breaks it; quantize keeps those nodes fp32."""
    from lookalike_export.quantize import quantize_model
    from lookalike_export.uint8_input import PREFIX

    result = quantize_model(wrapped.parent / "mobilenet_v2_u8.onnx", mode="fp16", registry=wrapped)
    graph = onnx.load(str(result.path)).graph
    cast = next(n for n in graph.node if n.name == PREFIX + "cast")
    assert next(a.i for a in cast.attribute if a.name == "to") == TensorProto.FLOAT
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    fp16 = onnx_session(result.path)
    u8 = onnx_session(wrapped.parent / "mobilenet_v2_u8.onnx")
    spec = PreprocessSpec(input_dtype="uint8")
    x = np.stack([normalise(resize_and_crop(Image.open(p).convert("RGB"), spec), spec) for p in PHOTOS[:4]])
    a, b = (s.run(["embedding"], {"input": x})[0] for s in (fp16, u8))  # type: ignore[attr-defined]
    cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999, cos
