"""Keras → ONNX export (ResNet50/VGG16, include_top=False), run where TensorFlow is available.

TensorFlow pins numpy/protobuf, so it lives in its own environment: the test
runs when ``$LOOKALIKE_KERAS_PYTHON``, this interpreter or ``.venv-keras``
can import it (CI: ``python -m venv .venv-keras && .venv-keras/bin/pip install
tensorflow-cpu tf2onnx pillow``, about a minute), and is skipped, saying so, otherwise.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")

from lookalike_export.cli import main
from lookalike_export.keras_export import keras_python
from lookalike_export.quantize import entry_from_registry

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.export, pytest.mark.slow]


def _tf_python() -> str | None:
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        py = keras_python()
    finally:
        os.chdir(cwd)
    if py is None:
        return None
    ok = subprocess.run([py, "-c", "import tensorflow, tf2onnx"], capture_output=True, check=False)
    return py if ok.returncode == 0 else None


TF_PYTHON = _tf_python()


@pytest.mark.skipif(TF_PYTHON is None, reason="no Python with tensorflow + tf2onnx (.venv-keras) on this machine")
def test_keras_vgg16_random_exports_with_parity_and_caffe_preprocessing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg = tmp_path / "models.toml"
    args = ["keras", "vgg16", "--weights", "random", "--pooling", "max", "--out", str(tmp_path)]
    assert main([*args, "--registry", str(reg), "--python", str(TF_PYTHON)]) == 0
    out = capsys.readouterr().out
    # Parity (ONNX Runtime vs Keras) and preprocessing (registry vs keras'
    # load_img + preprocess_input) are both enforced by the export; check the report.
    assert "parity n=5" in out and "preprocessing vs keras preprocess_input n=4" in out
    entry = entry_from_registry(reg, "keras_vgg16")
    assert (entry.dim, entry.preset, entry.layout, entry.color_order) == (512, "caffe", "NHWC", "BGR")
    assert entry.resize_shorter == 0 and entry.interpolation == "nearest"


@pytest.mark.skipif(TF_PYTHON is None, reason="no Python with tensorflow + tf2onnx (.venv-keras) on this machine")
def test_keras_weights_that_do_not_fit_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not an hdf5 file")
    args = ["keras", "resnet50", "--weights", str(bad), "--out", str(tmp_path), "--python", str(TF_PYTHON)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lookalike-export: error: resnet50: weights bad.weights.h5 do not fit Keras ResNet50")
    assert "\n" not in err
