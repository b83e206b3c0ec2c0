"""What a model asks of preprocessing: :class:`PreprocessSpec`, its presets, and decode plans.

Kept apart from :mod:`lookalike_server.preprocess` (which does the work) so
that the registry's reader and writer, admission and the exporter share one
definition of every setting without the decoding code.

Decoding fidelity is a per-model choice (``jpeg_draft``, ``exif_orientation``,
or the ``decode`` preset naming both): the defaults (``"fast"``) suit search,
``"exact"`` feeds the model the pixels its framework's own loader would (see
docs/models.md, "Decoding fidelity").
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

PRESETS: dict[str, dict[str, object]] = {
    # torchvision's ImageNet recipe: Resize(256) + CenterCrop(224) + Normalize.
    "imagenet": {
        "resize_shorter": 256,
        "interpolation": "bilinear",
        "color_order": "RGB",
        "layout": "NCHW",
        "scale": 1 / 255,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    },
    # Keras applications' "caffe" mode (ResNet50, VGG16): load_img(target_size)
    # resizes straight with NEAREST, then BGR with the ImageNet means subtracted.
    "caffe": {
        "resize_shorter": 0,
        "interpolation": "nearest",
        "color_order": "BGR",
        "layout": "NHWC",
        "scale": 1.0,
        "mean": (103.939, 116.779, 123.68),
        "std": (1.0, 1.0, 1.0),
    },
    # Keras "tf" mode (MobileNet, Inception): scale to [-1, 1].
    "tf": {
        "resize_shorter": 0,
        "interpolation": "bilinear",
        "color_order": "RGB",
        "layout": "NHWC",
        "scale": 1 / 127.5,
        "mean": (1.0, 1.0, 1.0),
        "std": (1.0, 1.0, 1.0),
    },
}


#: Graph input types a model may take, with ONNX Runtime's name for each.
INPUT_DTYPES: dict[str, str] = {"float32": "tensor(float)", "uint8": "tensor(uint8)"}


@dataclass(frozen=True)
class PreprocessSpec:
    """How one model wants its input. See the README's model-registry section.

    Attributes:
        height: Input height in pixels.
        width: Input width in pixels.
        resize_shorter: Shorter side is resized to this before a centre crop;
            0 resizes straight to ``height`` x ``width``.
        interpolation: Pillow filter name.
        color_order: ``"RGB"`` or ``"BGR"``.
        layout: ``"NCHW"`` or ``"NHWC"`` (the tensor has no batch axis here).
        scale: Pixels (0..255) are multiplied by this first.
        mean: Subtracted per channel (in ``color_order``) after scaling.
        std: Divides per channel after the mean.
        preset: Name of the preset the spec came from, for display.
        jpeg_draft: Let libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 scale
            (Pillow ``draft``) when the image is far larger than the model
            needs: several times faster, but not the pixels a framework
            decoding at full size sees (see docs/models.md, "Decoding fidelity").
        exif_orientation: Turn the image upright per its EXIF orientation tag
            before resizing, as a viewer shows it; Keras' ``load_img`` and
            torchvision's loader ignore the tag.
        input_dtype: What the graph takes. ``"float32"``: the host
            normalises (``scale``, ``mean``, ``std``, ``color_order``,
            ``layout``) and feeds float32. ``"uint8"``: the graph does that
            arithmetic itself (``lookalike-export uint8`` prepends it), and
            the host feeds the resized RGB pixels as uint8 ``(H, W, 3)``: a
            quarter of the bytes to copy, and the cast and normalisation run
            on the model's device. The normalisation keys still describe the
            model (the graph was built from them).
    """

    height: int = 224
    width: int = 224
    resize_shorter: int = 256
    interpolation: str = "bilinear"
    color_order: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    preset: str = ""
    jpeg_draft: bool = True
    exif_orientation: bool = True
    input_dtype: str = "float32"

    def __post_init__(self) -> None:
        problems = []
        if not (1 <= self.height <= 4096 and 1 <= self.width <= 4096):
            problems.append(f"input size {self.height}x{self.width} out of 1..4096")
        if self.resize_shorter and self.resize_shorter < min(self.height, self.width):
            problems.append(f"resize_shorter {self.resize_shorter} is smaller than the crop")
        if self.interpolation not in FILTERS:
            problems.append(f"interpolation {self.interpolation!r} not in {sorted(FILTERS)}")
        if self.color_order not in ("RGB", "BGR"):
            problems.append(f"color_order {self.color_order!r} must be RGB or BGR")
        if self.layout not in ("NCHW", "NHWC"):
            problems.append(f"layout {self.layout!r} must be NCHW or NHWC")
        if len(self.mean) != 3 or len(self.std) != 3:
            problems.append("mean and std need 3 values each")
        elif any(s == 0 for s in self.std):
            problems.append("std values must be non-zero")
        if self.input_dtype not in INPUT_DTYPES:
            problems.append(f"input_dtype {self.input_dtype!r} must be one of {list(INPUT_DTYPES)}")
        for flag in ("jpeg_draft", "exif_orientation"):
            if not isinstance(getattr(self, flag), bool):
                problems.append(f"{flag} {getattr(self, flag)!r} must be true or false")
        if problems:
            raise ValueError("; ".join(problems))

    @functools.cached_property
    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(a, b)`` with ``x * a - b == (x * scale - mean) / std``, computed once per model."""
        std = np.asarray(self.std, dtype=np.float32)
        return np.float32(self.scale) / std, np.asarray(self.mean, dtype=np.float32) / std

    @functools.cached_property
    def affine_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """:attr:`affine` repeated along one row of ``width`` pixels ``(W * 3,)``, for NHWC input."""
        a, b = self.affine
        return np.tile(a, self.width), np.tile(b, self.width)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of the tensor fed to the graph, without the batch axis.

        A uint8-input graph always takes ``(H, W, 3)`` RGB pixels; its own
        transpose makes the model's :attr:`layout`.
        """
        if self.layout == "NCHW" and self.input_dtype == "float32":
            return (3, self.height, self.width)
        return (self.height, self.width, 3)

    @property
    def dtype(self) -> type[np.generic]:
        """numpy dtype of the tensor fed to the graph."""
        return np.uint8 if self.input_dtype == "uint8" else np.float32

    @property
    def onnx_type(self) -> str:
        """The graph input's type as ONNX Runtime names it (``NodeArg.type``)."""
        return INPUT_DTYPES[self.input_dtype]

    @property
    def decode(self) -> str:
        """The :data:`DECODE_PRESETS` name these decode settings equal, or ``"custom"``."""
        mine = {"jpeg_draft": self.jpeg_draft, "exif_orientation": self.exif_orientation}
        return next((name for name, flags in DECODE_PRESETS.items() if flags == mine), "custom")

    @property
    def draft_size(self) -> tuple[int, int] | None:
        """The JPEG draft hint for this model: :attr:`decode_size`, or None to decode at full size."""
        return self.decode_size if self.jpeg_draft else None

    @property
    def decode_size(self) -> tuple[int, int]:
        """The smallest (width, height) the image is resized to before any crop."""
        side = self.resize_shorter or max(self.height, self.width)
        return (side, side)


#: Named decode settings, the registry's ``decode`` key. ``fast`` is the
#: default: reduced-size JPEG decoding and EXIF orientation applied. ``exact``
#: decodes as Keras' ``load_img`` and torchvision's ``ImageFolder`` loader do:
#: every pixel at full size, the EXIF tag ignored; with the model's own resize
#: filter (``interpolation``) the tensor is the framework's.
DECODE_PRESETS: dict[str, dict[str, bool]] = {
    "fast": {"jpeg_draft": True, "exif_orientation": True},
    "exact": {"jpeg_draft": False, "exif_orientation": False},
}
#: The keys a ``decode`` preset sets.
DECODE_KEYS: tuple[str, ...] = ("jpeg_draft", "exif_orientation")


@dataclass(frozen=True)
class DecodePlan:
    """One decode of an image, shared by the models that want the same pixels.

    Attributes:
        draft_size: JPEG draft hint (the largest any of these models needs),
            or None for a full-size decode.
        exif_orientation: Whether the EXIF orientation is applied.
        models: The models fed from this decode, in request order.
    """

    draft_size: tuple[int, int] | None
    exif_orientation: bool
    models: tuple[str, ...]


def plan_decodes(specs: Mapping[str, PreprocessSpec]) -> list[DecodePlan]:
    """Groups models by decode settings: an image is decoded once per group.

    Models that all keep the defaults share one decode (the common case); a
    model with ``jpeg_draft = false`` or ``exif_orientation = false`` beside
    them costs a second decode of the same bytes, and admission counts it.

    Args:
        specs: Each requested model's preprocessing.

    Returns:
        One plan per distinct ``(jpeg_draft, exif_orientation)``, in first-seen order.
    """
    groups: dict[tuple[bool, bool], list[str]] = {}
    for name, spec in specs.items():
        groups.setdefault((spec.jpeg_draft, spec.exif_orientation), []).append(name)
    return [
        DecodePlan(
            max(specs[n].decode_size for n in names) if draft else None,
            exif,
            tuple(names),
        )
        for (draft, exif), names in groups.items()
    ]
