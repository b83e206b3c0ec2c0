"""Registry writing and the reference preprocessing (no torch needed)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from lookalike_export.entry import upsert_entry
from lookalike_export.fidelity import check_fidelity, fidelity_report, known_departures
from lookalike_export.parity import compare, find_photos, photo_batch, preprocess_image
from lookalike_server.errors import ConfigError, ModelLoadError
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


@pytest.mark.parametrize("decode", ["fast", "exact"])
@pytest.mark.parametrize("preset", ["imagenet", "caffe", "tf"])
def test_parity_inputs_are_the_servers_own_preprocessing(tmp_path: Path, preset: str, decode: str) -> None:
    """The exporter's parity inputs are exactly what the server feeds the model, decode settings included."""
    from PIL import Image

    from lookalike_server.preprocess import preprocess

    entry = _entry("p", preset=preset, decode=decode)
    spec = entry.preprocess_spec()
    assert spec.decode == decode and spec.preset == preset
    big = tmp_path / "big.jpg"  # large enough for the server's draft decode under "fast"
    with Image.open(PHOTOS / "chelsea.jpg") as im:
        im.convert("RGB").resize((1920, 1280)).save(big, quality=90)
    photos = [*find_photos(PHOTOS), big]
    batch = photo_batch(photos, entry)
    for p, mine in zip(photos, batch, strict=True):
        theirs = preprocess(p.read_bytes(), spec, max_bytes=10**8, max_pixels=10**8)
        assert np.array_equal(theirs, mine), p.name


def _exif_and_large_photos(folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir()
    with Image.open(PHOTOS / "coffee.jpg") as im:
        rgb = im.convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", exif=exif.tobytes())
    rgb.resize((5640, 3172)).save(folder / "large.jpg", quality=90)
    (folder / "cutout.png").write_bytes((PHOTOS / "chelsea_cutout.png").read_bytes())
    (folder / "plain.jpg").write_bytes((PHOTOS / "coffee.jpg").read_bytes())
    return find_photos(folder)


def test_known_departures_name_the_setting_that_removes_them(tmp_path: Path) -> None:
    photos = {p.name: p.read_bytes() for p in _exif_and_large_photos(tmp_path / "ph")}
    fast = _entry("k", preset="caffe").preprocess_spec()
    exact = _entry("k", preset="caffe", decode="exact").preprocess_spec()
    (large,) = known_departures(photos["large.jpg"], fast)
    assert large.startswith("JPEG decoded at 1/4 size by the server") and "set jpeg_draft = false" in large
    (rotated,) = known_departures(photos["rotated.jpg"], fast)
    assert rotated == (
        "EXIF orientation 6 applied by the server; Keras ignores it; "
        'set exif_orientation = false (or decode = "exact") to match'
    )
    assert known_departures(photos["plain.jpg"], fast) == []
    assert known_departures(photos["large.jpg"], exact) == known_departures(photos["rotated.jpg"], exact) == []
    # Transparency has no setting: the server composites onto white whatever decode says.
    (alpha,) = known_departures(photos["cutout.png"], exact)
    assert "drops the alpha channel" in alpha


def test_fidelity_passes_explained_departures_and_fails_unexplained_ones(tmp_path: Path) -> None:
    photos = _exif_and_large_photos(tmp_path / "ph")
    spec = _entry("k", preset="caffe").preprocess_spec()
    rng = np.random.default_rng(0)
    tensors = rng.normal(size=(len(photos), 4)).astype(np.float32)
    vectors = rng.normal(size=(len(photos), 8)).astype(np.float32)
    same = fidelity_report(
        photos,
        spec,
        server_tensors=tensors,
        framework_tensors=tensors,
        server_vectors=vectors,
        framework_vectors=vectors,
    )
    assert all(p.matches for p in same.photos) and check_fidelity(same, name="k") is same
    # Every photo differs: three have a known reason, plain.jpg has none.
    other = fidelity_report(
        photos,
        spec,
        server_tensors=tensors,
        framework_tensors=tensors + 1,
        server_vectors=vectors,
        framework_vectors=-vectors,
    )
    assert [p.name for p in other.unexplained] == ["plain.jpg"]
    text = str(other)
    assert text.startswith("fidelity vs Keras (decode fast): 0/4 photos match, min cosine -1.0000000")
    assert "rotated.jpg: cosine -1.0000000, max |tensor diff| 1 — differs: EXIF orientation 6 applied" in text
    with pytest.raises(ModelLoadError, match="k: the server's preprocessing differs from Keras's for no known"):
        check_fidelity(other, name="k")


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
