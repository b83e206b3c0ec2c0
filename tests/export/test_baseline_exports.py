"""The notebook's original pipeline (benchmarks/baselines.py) on a fresh torch export and a fresh Keras export.

Before, the baseline fed every model an NCHW caffe tensor, so a Keras export
(NHWC) failed with "Got invalid dimensions for input". Each export here is
made as tests/export makes them (random weights), and the pipeline runs two
images on it, as the benchmark runs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")

from lookalike_export.cli import main as export_main
from lookalike_server.config import BatchingConfig
from lookalike_server.registry_reader import load_registry
from tests.export.test_export_keras import TF_PYTHON

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import baselines  # noqa: E402

PHOTOS = ROOT / "tests" / "data" / "export"
pytestmark = [pytest.mark.export, pytest.mark.slow]


def run_two(registry: Path, name: str) -> dict:
    (spec,) = load_registry(registry, BatchingConfig(), only=[name])
    series = baselines.original_pipeline(spec, baselines.image_paths(PHOTOS), max_images=2)
    (point,) = series["points"]
    assert point["completed"] == 2 and point["errors"] == 0
    return series


def test_original_pipeline_runs_a_torch_export(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the export extra (torch) is not installed")
    reg = tmp_path / "models.toml"
    assert export_main(["torch", "mobilenet_v2", "--random", "--out", str(tmp_path), "--registry", str(reg)]) == 0
    series = run_two(reg, "mobilenet_v2")
    assert "mode='torch'" in series["preprocessing"]  # the ImageNet preset is Keras' torch mode


@pytest.mark.skipif(TF_PYTHON is None, reason="no Python with tensorflow + tf2onnx (.venv-keras) on this machine")
def test_original_pipeline_runs_a_keras_export_in_nhwc(tmp_path: Path) -> None:
    reg = tmp_path / "models.toml"
    args = ["keras", "resnet50", "--weights", "random", "--out", str(tmp_path), "--registry", str(reg)]
    assert export_main([*args, "--python", str(TF_PYTHON)]) == 0
    (spec,) = load_registry(reg, BatchingConfig(), only=["keras_resnet50"])
    assert spec.preprocess.layout == "NHWC"
    series = run_two(reg, "keras_resnet50")
    assert "mode='caffe'" in series["preprocessing"]
