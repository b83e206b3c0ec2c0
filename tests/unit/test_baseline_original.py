"""The notebook's original pipeline (benchmarks/baselines.py) on any layout and normalisation.

The real exports (torch and Keras) run in tests/export/test_baseline_exports.py;
here the shipped MobileNetV2 (a torch export, NCHW) runs end to end, and the
input of a Keras export's entry (caffe, NHWC) is checked value by value.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike_server.config import BatchingConfig
from lookalike_server.preprocess import PreprocessSpec
from lookalike_server.registry_reader import load_registry

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import baselines  # noqa: E402

PHOTOS = ROOT / "tests" / "data" / "export"
# A Keras export's entry (lookalike_export.keras_export.keras_entry): caffe, NHWC, straight resize.
KERAS_SPEC = PreprocessSpec(
    height=224,
    width=224,
    resize_shorter=0,
    interpolation="nearest",
    color_order="BGR",
    layout="NHWC",
    scale=1.0,
    mean=(103.939, 116.779, 123.68),
    std=(1.0, 1.0, 1.0),
    preset="caffe",
)


def reference_caffe(path: Path) -> np.ndarray:
    """What Keras documents for load_img + preprocess_input(mode="caffe"), written out."""
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB").resize((224, 224), Image.Resampling.NEAREST), dtype=np.float32)
    return (rgb[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32))[None]


def test_modes_are_recognised_from_the_entry() -> None:
    assert baselines.keras_mode(KERAS_SPEC) == "caffe"
    (mobilenet,) = load_registry(ROOT / "models" / "models.toml", BatchingConfig(), only=["mobilenet_v2"])
    assert baselines.keras_mode(mobilenet.preprocess) == "torch"
    custom = PreprocessSpec(scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert baselines.keras_mode(custom) is None


@pytest.mark.parametrize("use_keras", [False, True])
def test_keras_export_input_is_caffe_nhwc_from_the_file_as_it_is(use_keras: bool) -> None:
    keras = baselines.keras_tools() if use_keras else None
    if use_keras and keras is None:
        pytest.skip("Keras is not importable here (the dev extra installs it)")
    path = PHOTOS / "chelsea_cutout.png"  # RGBA on disk: load_img converts it
    x = baselines.notebook_input(path, KERAS_SPEC, keras)
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, reference_caffe(path), atol=1e-4)


def test_nchw_entry_gets_its_layout_and_normalisation() -> None:
    (spec,) = load_registry(ROOT / "models" / "models.toml", BatchingConfig(), only=["mobilenet_v2"])
    x = baselines.notebook_input(PHOTOS / "chelsea.jpg", spec.preprocess, None)
    assert x.shape == (1, 3, 224, 224)
    with Image.open(PHOTOS / "chelsea.jpg") as img:
        rgb = np.asarray(img.convert("RGB").resize((224, 224), Image.Resampling.NEAREST), dtype=np.float32)
    want = ((rgb / 255 - np.array(spec.preprocess.mean)) / np.array(spec.preprocess.std)).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(x, want, atol=1e-5)


def test_original_pipeline_runs_the_shipped_torch_export() -> None:
    (spec,) = load_registry(ROOT / "models" / "models.toml", BatchingConfig(), only=["mobilenet_v2"])
    paths = baselines.image_paths(PHOTOS)
    assert len(paths) >= 3
    series = baselines.original_pipeline(spec, paths, max_images=2)
    (point,) = series["points"]
    assert point["completed"] == 2 and point["images_per_s"] > 0
    assert series["model"] == "mobilenet_v2" and "preprocess_input(mode='torch')" in series["preprocessing"]


def test_original_pipeline_needs_images() -> None:
    (spec,) = load_registry(ROOT / "models" / "models.toml", BatchingConfig(), only=["mobilenet_v2"])
    with pytest.raises(ValueError, match="no image files"):
        baselines.original_pipeline(spec, [])


def test_the_ceilings_onnx_runtime_threads_spin_as_a_plain_onnx_runtime_loop_does() -> None:
    # The server turns spinning off for its batch sessions; a sequential loop
    # keeps ORT's default, or its second thread sleeps between sections and
    # the ceiling runs slower than ORT can (about 1 ms a lone image on 2 cores).
    def spins(model: object) -> str:
        return model.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")  # type: ignore[attr-defined]

    assert spins(baselines.load_model("mobilenet_v2", threads=2)) == "1"
    assert spins(baselines.load_model("mobilenet_v2", threads=2, spin=False)) == "0"


def test_the_paired_ceilings_threads_spin_within_a_run_and_stop_after_it() -> None:
    # Measured call by call beside a server, a ceiling whose threads spin on
    # after each run holds the cores through the server's next call.
    lone = baselines.load_lone_model("mobilenet_v2", threads=2)
    options = lone.wide_session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
