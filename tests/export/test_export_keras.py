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

from benchmarks.fidelity import make_photos
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


@pytest.fixture(scope="module")
def fidelity_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed test photos, two camera-size JPEGs, two EXIF-rotated photos and a transparent cut-out."""
    folder = tmp_path_factory.mktemp("fidelity") / "photos"
    make_photos(folder)
    (folder / "chelsea_cutout.png").write_bytes(
        (ROOT / "tests" / "data" / "export" / "chelsea_cutout.png").read_bytes()
    )
    return folder


def _export(tmp_path: Path, photos: Path, decode: str, capsys: pytest.CaptureFixture[str]) -> tuple[Path, list[str]]:
    reg = tmp_path / "models.toml"
    args = ["keras", "vgg16", "--weights", "random", "--pooling", "max", "--out", str(tmp_path), "--decode", decode]
    assert main([*args, "--photos", str(photos), "--registry", str(reg), "--python", str(TF_PYTHON)]) == 0
    return reg, capsys.readouterr().out.splitlines()


def _row(lines: list[str], photo: str) -> str:
    (row,) = [ln for ln in lines if ln.strip().startswith(f"{photo}:")]
    return row


@pytest.mark.skipif(TF_PYTHON is None, reason="no Python with tensorflow + tf2onnx (.venv-keras) on this machine")
def test_keras_export_with_default_decoding_explains_its_departures_from_keras(
    tmp_path: Path, fidelity_photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reg, lines = _export(tmp_path, fidelity_photos, "fast", capsys)
    out = "\n".join(lines)
    # Parity (ONNX Runtime vs Keras on the server's tensors) is enforced; fidelity is reported.
    assert "parity n=12" in out
    assert "fidelity vs Keras (decode fast): 7/12 photos match" in out
    for photo in ("daffodil.jpg", "giraffe.jpg", "lionfish.png", "pineapple.jpg"):
        assert _row(lines, photo).endswith("— matches")
    assert "EXIF orientation 6 applied by the server; Keras ignores it; set exif_orientation = false" in _row(
        lines, "horse_exif_rot90.jpg"
    )
    assert "EXIF orientation 8 applied by the server" in _row(lines, "giraffe_exif_rot270.jpg")
    assert "JPEG decoded at 1/2 size by the server (jpeg_draft = true)" in _row(lines, "large_1920x1080.jpg")
    assert "JPEG decoded at 1/4 size by the server (jpeg_draft = true)" in _row(lines, "large_5640x3172.jpg")
    assert "Keras drops the alpha channel" in _row(lines, "chelsea_cutout.png")
    entry = entry_from_registry(reg, "keras_vgg16")
    assert (entry.dim, entry.preset, entry.layout, entry.color_order) == (512, "caffe", "NHWC", "BGR")
    assert entry.resize_shorter == 0 and entry.interpolation == "nearest"
    assert (entry.decode, entry.jpeg_draft, entry.exif_orientation) == ("fast", True, True)


@pytest.mark.skipif(TF_PYTHON is None, reason="no Python with tensorflow + tf2onnx (.venv-keras) on this machine")
def test_keras_export_with_exact_decoding_matches_keras_on_large_and_rotated_photos(
    tmp_path: Path, fidelity_photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """decode = "exact": the server's vectors are Keras' own, camera-size and EXIF-rotated photos included."""
    reg, lines = _export(tmp_path, fidelity_photos, "exact", capsys)
    assert "fidelity vs Keras (decode exact): 11/12 photos match" in "\n".join(lines)
    rows = [ln.strip() for ln in lines if ln.startswith("  ") and ": cosine " in ln]
    assert len(rows) == 12
    for row in rows:
        if row.startswith("chelsea_cutout.png"):  # transparency: no setting makes the server drop alpha
            assert "differs: transparency composited onto white" in row
            continue
        cosine = float(row.split(": cosine ")[1].split(",")[0])
        assert cosine >= 0.99999 and row.endswith("max |tensor diff| 0 — matches"), row
    entry = entry_from_registry(reg, "keras_vgg16")
    assert (entry.decode, entry.jpeg_draft, entry.exif_orientation) == ("exact", False, False)
    assert 'decode = "exact"' in reg.read_text()


@pytest.mark.skipif(TF_PYTHON is None, reason="no Python with tensorflow + tf2onnx (.venv-keras) on this machine")
def test_keras_weights_that_do_not_fit_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not an hdf5 file")
    args = ["keras", "resnet50", "--weights", str(bad), "--out", str(tmp_path), "--python", str(TF_PYTHON)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lookalike-export: error: resnet50: weights bad.weights.h5 do not fit Keras ResNet50")
    assert "\n" not in err
