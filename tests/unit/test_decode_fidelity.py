"""Per-model decode settings (issue 12): jpeg_draft, exif_orientation, the decode preset.

Each setting is checked on real bytes: an EXIF-rotated JPEG written by Pillow
and a large JPEG, through the server's preprocessing, the registry reader and
writer, admission's pixel accounting and the exporter's fidelity report.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike_server.admission import Admission
from lookalike_server.config import BatchingConfig, LimitsConfig
from lookalike_server.errors import ConfigError
from lookalike_server.preprocess import PreprocessSpec, decode_image, plan_decodes, preprocess, probe_image
from lookalike_server.registry import ModelEntry, resolve_decode
from lookalike_server.registry_reader import load_registry

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "tests" / "data" / "photos"
LIMITS = {"max_bytes": 1 << 30, "max_pixels": 1 << 30}
FAST = PreprocessSpec(**{"resize_shorter": 0, "interpolation": "nearest"})
EXACT = PreprocessSpec(resize_shorter=0, interpolation="nearest", jpeg_draft=False, exif_orientation=False)


def jpeg(img: Image.Image, orientation: int = 0, quality: int = 90) -> bytes:
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, exif=exif.tobytes())
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(PHOTOS / "giraffe.jpg") as im:  # 194x224, no EXIF
        return im.convert("RGB")


@pytest.fixture(scope="module")
def rotated(photo: Image.Image) -> bytes:
    """The giraffe stored on its side with EXIF orientation 6 ("turn 90° clockwise to show")."""
    return jpeg(photo.transpose(Image.Transpose.ROTATE_90), orientation=6)


@pytest.fixture(scope="module")
def large(photo: Image.Image) -> bytes:
    """A 1920x1080 JPEG: the server's draft decodes it at 1/2 scale for a 224 model."""
    return jpeg(photo.resize((1920, 1080), Image.Resampling.LANCZOS))


def keras_like(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    """What keras.utils.load_img + caffe-less normalisation sees: full decode, no EXIF, NEAREST."""
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((spec.width, spec.height), Image.Resampling.NEAREST)
    a, b = spec.affine
    return (np.asarray(img, np.float32) * a - b).transpose(2, 0, 1)


# ----------------------------------------------------------- preprocessing --


def test_exif_orientation_on_turns_the_photo_upright_and_off_keeps_stored_pixels(photo, rotated):
    upright = decode_image(rotated, **LIMITS)
    stored = decode_image(rotated, **LIMITS, exif_orientation=False)
    assert upright.size == photo.size == (194, 224)
    assert stored.size == (224, 194)  # as stored: on its side
    # Upright pixels are the original photo's (up to JPEG's loss); stored ones are not.
    err_upright = np.abs(np.asarray(upright, np.int16) - np.asarray(photo, np.int16)).mean()
    assert err_upright < 4
    assert np.array_equal(np.asarray(stored), np.asarray(Image.open(io.BytesIO(rotated)).convert("RGB")))


def test_preprocess_follows_each_models_exif_setting(rotated):
    assert np.array_equal(preprocess(rotated, EXACT, **LIMITS), keras_like(rotated, EXACT))
    fast = preprocess(rotated, FAST, **LIMITS)
    assert not np.allclose(fast, keras_like(rotated, EXACT), atol=1)


def test_large_jpeg_draft_on_decodes_small_and_off_decodes_every_pixel(large):
    assert decode_image(large, **LIMITS, draft_size=FAST.draft_size).size == (960, 540)  # 1/2 scale
    assert EXACT.draft_size is None
    assert decode_image(large, **LIMITS, draft_size=EXACT.draft_size).size == (1920, 1080)
    assert np.array_equal(preprocess(large, EXACT, **LIMITS), keras_like(large, EXACT))
    # Draft + NEAREST picks other source pixels: differences of tens of grey levels (x 1/255/std here).
    assert np.abs(preprocess(large, FAST, **LIMITS) - keras_like(large, EXACT)).max() > 0.1


def test_small_photos_are_the_same_under_both_presets():
    data = (PHOTOS / "daffodil.jpg").read_bytes()  # 399x400: no draft possible, no EXIF tag
    assert np.array_equal(preprocess(data, FAST, **LIMITS), preprocess(data, EXACT, **LIMITS))


def test_decode_name_follows_the_flags():
    assert (FAST.decode, EXACT.decode) == ("fast", "exact")
    assert PreprocessSpec(jpeg_draft=False).decode == "custom"
    with pytest.raises(ValueError, match="jpeg_draft 'no' must be true or false"):
        PreprocessSpec(jpeg_draft="no")  # type: ignore[arg-type]


def test_models_share_a_decode_only_when_their_settings_agree():
    specs = {"a": FAST, "b": PreprocessSpec(resize_shorter=320, height=288, width=288), "c": EXACT}
    plans = plan_decodes(specs)
    assert [(p.models, p.draft_size, p.exif_orientation) for p in plans] == [
        (("a", "b"), (320, 320), True),  # the larger need wins the shared draft
        (("c",), None, False),
    ]
    assert len(plan_decodes({"a": FAST, "b": FAST})) == 1


# --------------------------------------------------------------- admission --


def test_admission_counts_pixels_at_the_decode_each_model_makes(large):
    adm = Admission(LimitsConfig(), {"fast": 8, "exact": 8, "bare": 8}, {"fast": FAST, "exact": EXACT})
    header = probe_image(large, **LIMITS)
    drafted, full = header.pixels_at(FAST.draft_size), 1920 * 1080
    assert drafted == 960 * 540
    for models, pixels in (
        (["fast"], drafted),
        (["exact"], full),  # draft off: pixels count at full size
        (["fast", "exact"], drafted + full),  # two decodes of the same bytes
        (["bare"], full),  # a model admission knows nothing about counts at full size
    ):
        permit = adm.admit([large], models)
        assert permit.pixels == pixels, models
        permit.release()


# ---------------------------------------------------------------- registry --


def _registry(tmp_path: Path, **keys: object) -> Path:
    lines = [
        "[[models]]",
        'name = "m"',
        f'path = "{ROOT / "models" / "mobilenet_v2.onnx"}"',
        "dim = 1280",
        'preset = "caffe"',
    ]
    lines += [f"{k} = {v}" for k, v in keys.items()]
    p = tmp_path / "models.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize(
    ("keys", "flags"),
    [
        ({}, (True, True, "fast")),  # today's behaviour is the default
        ({"decode": '"fast"'}, (True, True, "fast")),
        ({"decode": '"exact"'}, (False, False, "exact")),
        ({"decode": '"exact"', "jpeg_draft": "false"}, (False, False, "exact")),  # agreeing is fine
        ({"exif_orientation": "false"}, (True, False, "custom")),
        ({"jpeg_draft": "false", "exif_orientation": "false"}, (False, False, "exact")),
    ],
)
def test_registry_decode_settings(tmp_path, keys, flags):
    (spec,) = load_registry(_registry(tmp_path, **keys), BatchingConfig())
    pre = spec.preprocess
    assert (pre.jpeg_draft, pre.exif_orientation, pre.decode) == flags


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"decode": '"precise"'}, "decode = 'precise' is not one of ['exact', 'fast']"),
        (
            {"decode": '"exact"', "jpeg_draft": "true"},
            'decode = "exact" means jpeg_draft = false, but the entry says true',
        ),
        ({"decode": '"fast"', "exif_orientation": "false"}, "remove exif_orientation, or remove decode"),
        ({"jpeg_draft": '"false"'}, "jpeg_draft = 'false' must be true or false (a TOML boolean, unquoted)"),
    ],
)
def test_registry_refuses_bad_decode_settings_naming_model_and_fix(tmp_path, keys, message):
    with pytest.raises(ConfigError) as info:
        load_registry(_registry(tmp_path, **keys), BatchingConfig())
    assert "model 'm'" in str(info.value) and message in str(info.value)


def test_exporter_writes_what_the_reader_reads(tmp_path):
    for decode, flags in (("exact", (False, False)), ("fast", (True, True))):
        entry = ModelEntry.from_preset(
            "caffe", name="m", path=str(ROOT / "models" / "mobilenet_v2.onnx"), dim=1280, decode=decode
        )
        text = entry.to_toml()
        assert f'decode = "{decode}"' in text
        (tmp_path / "r.toml").write_text(text)
        (spec,) = load_registry(tmp_path / "r.toml", BatchingConfig())
        assert (spec.preprocess.jpeg_draft, spec.preprocess.exif_orientation) == flags
    # Mixed flags are written without a decode line, so the file never contradicts itself.
    entry.exif_orientation = False
    assert "decode =" not in entry.to_toml() and "exif_orientation = false" in entry.to_toml()
    with pytest.raises(ConfigError, match="not one of"):
        resolve_decode({"decode": "turbo"})
