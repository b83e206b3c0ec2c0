"""In-process baselines for the server's benchmark figures.

* :func:`ceiling`: the model in this process with the server's own code —
  :func:`lookalike_server.preprocess.preprocess` and
  :class:`lookalike_server.models.OnnxModel` (same session options, same
  normalisation) — no gRPC, no queue, no threads of ours. One point per batch
  size; the best images/s is the ceiling a server on this machine could reach,
  and batch 1's latency is the least a single-image request could cost.
* :func:`original_pipeline`: what the notebook this project grew from did for
  every image: build a **new** ``InferenceSession``, Keras-style
  ``load_img(target_size=(224, 224))`` (a straight NEAREST resize, no crop),
  ``preprocess_input`` in caffe mode (BGR, ImageNet means subtracted, no
  scaling), run, sequentially. It runs the same ONNX file, so the difference is
  the per-image session build and the pipeline, not the network.

Both return a *series* in the same shape as ``lookalike bench`` writes, so the
report puts them side by side with the server's sweeps. Run as a script for a
quick look: ``python benchmarks/baselines.py --model mobilenet_v2``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.bench import latency_summary

REPO = Path(__file__).resolve().parents[1]
# The server's preprocessing decodes and resizes; the limits are the server's
# defaults and never bite on benchmark photos.
MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 50_000_000
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def load_model(
    name: str,
    registry: str | Path | None = None,
    threads: int = 0,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> Any:
    """The server's ``OnnxModel`` for a registry entry, warmed.

    Args:
        name: Model name in the registry.
        registry: ``models.toml`` (default: the repo's).
        threads: ORT intra-op threads; 0 = ORT's default, as the server.
        providers: Execution providers, in priority order.
    """
    from lookalike_server.config import BatchingConfig
    from lookalike_server.models import OnnxModel
    from lookalike_server.registry_reader import load_registry

    registry = registry or REPO / "models" / "models.toml"
    (spec,) = load_registry(registry, BatchingConfig(max_batch_size=64), only=[name])
    model = OnnxModel(spec, list(providers), intra_op_threads=threads)
    model.warmup()
    return model


def _point(label: str, batch: int, calls: list[float], window_s: float, images: int) -> dict[str, Any]:
    return {
        "label": label,
        "mode": "in-process",
        "concurrency": None,
        "rate": None,
        "batch_size": batch,
        "window_s": round(window_s, 3),
        "requests": len(calls),
        "completed": len(calls),
        "ok": len(calls),
        "errors": 0,
        "throughput_rps": len(calls) / window_s,
        "images_per_s": images / window_s,
        "latency_ms": latency_summary(calls),
        "status": {"OK": len(calls)},
        "error_samples": {},
        "server_timing_ms": None,
        "server": None,
    }


def ceiling(
    model: Any,
    images: Sequence[bytes],
    batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
    seconds: float = 3.0,
    warmup_s: float = 0.5,
) -> dict[str, Any]:
    """Preprocess + inference in this process, sequentially, per batch size.

    Each call decodes ``b`` photos with the server's preprocessing, stacks them
    and runs one ``OnnxModel.embed_batch`` (inference + L2 normalisation). The
    latency of a point is one such call.

    Returns:
        A series named ``ceiling`` with one point per batch size and
        ``best`` = the point with the most images/s.
    """
    from lookalike_server.preprocess import preprocess

    spec = model.spec.preprocess

    def call(i: int, b: int) -> None:
        tensors = [
            preprocess(images[(i * b + j) % len(images)], spec, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
            for j in range(b)
        ]
        model.embed_batch(tensors)

    points = []
    for b in batch_sizes:
        end = time.perf_counter() + warmup_s
        i = 0
        while time.perf_counter() < end:
            call(i, b)
            i += 1
        lat: list[float] = []
        start = time.perf_counter()
        end = start + seconds
        while True:
            t0 = time.perf_counter()
            call(i, b)
            t1 = time.perf_counter()
            lat.append(t1 - t0)
            i += 1
            if t1 >= end:
                break
        points.append(_point(f"b={b}", b, lat, t1 - start, b * len(lat)))
    best = max(points, key=lambda p: p["images_per_s"])
    return {
        "name": "ceiling (in-process)",
        "kind": "ceiling",
        "model": model.spec.name,
        "providers": list(model.providers),
        "points": points,
        "best": {"label": best["label"], "batch_size": best["batch_size"], "images_per_s": best["images_per_s"]},
    }


def keras_caffe_input(data: bytes, size: tuple[int, int] = (224, 224), layout: str = "NCHW") -> np.ndarray:
    """Keras ``load_img(target_size=size)`` + ``preprocess_input(mode="caffe")``.

    ``load_img`` opens, converts to RGB and resizes straight to the target with
    NEAREST (its default); caffe mode flips to BGR and subtracts the ImageNet
    means without scaling. The result is transposed to ``layout`` because the
    ONNX file takes NCHW where the notebook's Keras model took NHWC.
    """
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    if img.mode != "RGB":
        img = img.convert("RGB")
    img = img.resize((size[1], size[0]), Image.Resampling.NEAREST)
    x = np.asarray(img, dtype=np.float32)[..., ::-1] - CAFFE_MEAN_BGR
    x = x[None]
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def original_pipeline(
    onnx_path: str | Path,
    images: Sequence[bytes],
    seconds: float = 10.0,
    max_images: int = 40,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> dict[str, Any]:
    """The notebook's loop: a new session per image, Keras-style input, sequential.

    Stops after ``max_images`` images or ``seconds``, whichever comes first.

    Returns:
        A series named ``original pipeline`` with one point.
    """
    import onnxruntime as ort

    lat: list[float] = []
    start = time.perf_counter()
    for i in range(max_images):
        t0 = time.perf_counter()
        session = ort.InferenceSession(str(onnx_path), providers=list(providers))
        name = session.get_inputs()[0].name
        session.run(None, {name: keras_caffe_input(images[i % len(images)])})
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        del session
        if t1 - start >= seconds:
            break
    window = time.perf_counter() - start
    return {
        "name": "original pipeline",
        "kind": "original",
        "points": [_point("seq", 1, lat, window, len(lat))],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Prints both baselines as JSON."""
    from lookalike.bench import find_image_dir, load_images

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--images", default=None)
    parser.add_argument("--image-size", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    images = load_images(find_image_dir(args.images), args.image_size)
    model = load_model(args.model)
    out = {
        "ceiling": ceiling(model, images, seconds=args.seconds),
        "original": original_pipeline(model.spec.path, images, seconds=args.seconds * 3),
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
