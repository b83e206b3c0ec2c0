"""Registry writing and the reference preprocessing (no torch needed)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from lookalike_export.entry import upsert_entry
from lookalike_export.parity import compare, find_photos, load_rgb, preprocess_image
from lookalike_server.errors import ConfigError
from lookalike_server.registry import ModelEntry, read_entries

PHOTOS = Path(__file__).resolve().parents[1] / "data" / "export"


def _entry(name: str, **kw: object) -> ModelEntry:
    return ModelEntry.from_preset(str(kw.pop("preset", "imagenet")), name=name, path=f"{name}.onnx", dim=8, **kw)


def test_upsert_appends_and_replaces_keeping_other_entries_text(tmp_path: Path) -> None:
    reg = tmp_path / "models.toml"
    hand = '# my registry\n\n[[models]]\n# hand-written, keep me\nname = "mine"\npath = "m.onnx"\ndim = 4\n'
    hand += "[models.batching]\nmax_batch_size = 8\n\n"
    reg.write_text(hand)
    assert upsert_entry(reg, _entry("a")) == "added"
    assert upsert_entry(reg, _entry("b", preset="caffe")) == "added"
    assert upsert_entry(reg, _entry("a", description="new")) == "replaced"
    text = reg.read_text()
    assert text.startswith(hand)  # header, comments and the sub-table survive byte for byte
    entries = read_entries(reg)
    assert [e["name"] for e in entries] == ["mine", "a", "b"]
    assert entries[0]["batching"] == {"max_batch_size": 8}
    assert entries[1]["description"] == "new"
    assert entries[2]["color_order"] == "BGR" and entries[2]["layout"] == "NHWC"
    assert entries[2]["mean"] == [103.939, 116.779, 123.68]


def test_upsert_refuses_a_broken_file_and_leaves_it_alone(tmp_path: Path) -> None:
    reg = tmp_path / "models.toml"
    reg.write_text("[[models]\nname = 'x'\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        upsert_entry(reg, _entry("a"))
    assert reg.read_text() == "[[models]\nname = 'x'\n"


def test_written_entry_round_trips_every_field(tmp_path: Path) -> None:
    reg = tmp_path / "r.toml"
    e = _entry("q", description='quote " and \\ back', batching={"max_batch_size": 16, "max_delay_ms": 2.5})
    upsert_entry(reg, e)
    (got,) = tomllib.loads(reg.read_text())["models"]
    assert got["description"] == e.description
    assert got["scale"] == e.scale == 1 / 255
    assert got["batching"] == {"max_batch_size": 16, "max_delay_ms": 2.5}


def test_bad_names_and_presets_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="must match"):
        _entry("Bad-Name")
    with pytest.raises(ConfigError, match="unknown preset"):
        _entry("ok", preset="pytorch")


@pytest.mark.parametrize("preset", ["imagenet", "caffe", "tf"])
def test_reference_preprocessing_equals_the_servers(preset: str) -> None:
    """The exporter's parity inputs are exactly what the server feeds the model."""
    server = pytest.importorskip("lookalike_server.preprocess", reason="server preprocessing not importable")
    entry = _entry("p", preset=preset)
    spec = server.PreprocessSpec(**{**server.PRESETS[preset], "height": 224, "width": 224})
    photos = find_photos(PHOTOS)
    assert len(photos) >= 4
    for p in photos:
        data = p.read_bytes()
        theirs = server.preprocess(data, spec, max_bytes=10**8, max_pixels=10**8)
        mine = preprocess_image(load_rgb(p), entry)
        assert theirs.shape == mine.shape
        # Same arithmetic, different association: float32 rounding only.
        assert float(np.max(np.abs(theirs - mine))) < 1e-4, p.name


def test_preprocessing_follows_torchvision_resize_and_crop_arithmetic() -> None:
    from PIL import Image

    # 300x200 → shorter side 256: long side int(256 * 300 / 200) = 384; crop
    # offsets round((384 - 224) / 2) = 80, round((256 - 224) / 2) = 16.
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    entry = _entry("t", interpolation="nearest")
    got = preprocess_image(img, entry)
    resized = np.asarray(img.resize((384, 256), Image.Resampling.NEAREST), np.float32)[16:240, 80:304]
    want = ((resized / 255 - np.array(entry.mean)) / np.array(entry.std)).transpose(2, 0, 1)
    assert np.allclose(got, want, atol=1e-5)


def test_compare_reports_normalised_and_raw_differences() -> None:
    a = np.array([[3.0, 4.0], [1.0, 0.0]], np.float32)
    r = compare(a, a * 2)
    assert r.max_abs_diff == pytest.approx(4.0)
    assert r.max_abs_diff_normalised == pytest.approx(0.0, abs=1e-12)
    assert r.cosine_min == pytest.approx(1.0)
    assert not r.ok() and compare(a, a + 1e-6).ok()
