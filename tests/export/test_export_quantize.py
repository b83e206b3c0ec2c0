"""int8 variants of the real MobileNetV2: written with a registry entry, loadable, and quality-gated."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike_export.quantize import quantize_model
from lookalike_server.config import BatchingConfig
from lookalike_server.errors import ModelLoadError
from lookalike_server.models import OnnxModel
from lookalike_server.registry_reader import load_registry

ROOT = Path(__file__).resolve().parents[2]
CALIBRATION = sorted((ROOT / "tests" / "data" / "export").glob("*.jpg"))

pytestmark = pytest.mark.export


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The shipped fp32 model and its registry entry, plus a small labelled set.

    Each real test photo is a class of two: the photo and a crop of it, so P@1
    is well defined and high for a good model.
    """
    d = tmp_path_factory.mktemp("quant")
    shutil.copy(ROOT / "models" / "mobilenet_v2.onnx", d / "mobilenet_v2.onnx")
    text = (ROOT / "models" / "models.toml").read_text()
    first = text.index("\n[[models]]")
    second = text.index("\n[[models]]", first + 1)
    (d / "models.toml").write_text(text[first:second].lstrip())  # the mobilenet_v2 entry only
    for photo in sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg")):
        cls = d / "eval" / photo.stem
        cls.mkdir(parents=True)
        img = Image.open(photo).convert("RGB")
        img.save(cls / "a.png")
        w, h = img.size
        img.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(cls / "b.png")
    return d


def test_int8_static_variant_is_written_registered_and_serves(workdir):
    result = quantize_model(
        workdir / "mobilenet_v2.onnx",
        mode="int8-static",
        calibration=CALIBRATION,
        eval_dir=workdir / "eval",
        max_p1_drop=0.5,
    )
    assert result.path.is_file() and result.path.parent == workdir
    assert result.p1_fp32 is not None and result.p1_fp32 >= 0.8  # the real model finds each crop's twin
    assert result.min_cosine is not None and result.min_cosine > 0.8
    assert result.entry.name.startswith("mobilenet_v2_") and result.entry.dim == 1280
    assert result.entry.sha256 and not result.warning

    # The variant loads through the server's registry code and embeds like the original.
    reg = workdir / "variant.toml"
    reg.write_text(_variant_registry(workdir, result))
    (spec,) = load_registry(reg, BatchingConfig(max_batch_size=2))
    model = OnnxModel(spec, ("CPUExecutionProvider",))
    model.warmup()
    (fp32_spec,) = load_registry(workdir / "models.toml", BatchingConfig(max_batch_size=2))
    fp32 = OnnxModel(fp32_spec, ("CPUExecutionProvider",))
    x = [np.random.default_rng(1).standard_normal((3, 224, 224)).astype(np.float32)]
    assert float(np.dot(model.embed_batch(x)[0], fp32.embed_batch(x)[0])) > 0.8


def _variant_registry(workdir: Path, result) -> str:
    base = (workdir / "models.toml").read_text()
    lines = []
    for line in base.splitlines():
        if line.startswith("name ="):
            line = f'name = "{result.entry.name}"'
        elif line.startswith("path ="):
            line = f'path = "{result.path.name}"'
        elif line.startswith("sha256 ="):
            line = f'sha256 = "{result.entry.sha256}"'
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_quality_gate_refuses_then_force_keeps_with_a_warning(workdir):
    out = workdir / "gated.onnx"
    # A gate no variant can pass (a drop must be below -1): the export refuses.
    with pytest.raises(ModelLoadError, match="refusing"):
        quantize_model(
            workdir / "mobilenet_v2.onnx",
            mode="int8-static",
            out=out,
            calibration=CALIBRATION,
            eval_dir=workdir / "eval",
            max_p1_drop=-1.0,
        )
    assert not out.exists() and not list(workdir.glob(".gated*"))
    forced = quantize_model(
        workdir / "mobilenet_v2.onnx",
        mode="int8-static",
        out=out,
        calibration=CALIBRATION,
        eval_dir=workdir / "eval",
        max_p1_drop=-1.0,
        force=True,
    )
    assert out.is_file() and "drops P@1" in forced.warning
