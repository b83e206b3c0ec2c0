"""In-process baselines for the server's benchmark figures.

* :func:`ceiling`: the model in this process with the server's own code —
  :func:`lookalike_server.preprocess.preprocess` and
  :class:`lookalike_server.models.OnnxModel` (same session options, same
  normalisation) — no gRPC, no queue, no threads of ours. One point per batch
  size; the best images/s is the ceiling a server on this machine could reach,
  and batch 1's latency is the least a single-image request could cost.
* :func:`original_pipeline`: what the notebook this project grew from did for
  every image: build a **new** ``InferenceSession``, read the file from disk,
  Keras' own ``load_img(target_size=…)`` (a straight NEAREST resize, no crop)
  and ``preprocess_input`` (caffe mode for a Keras export: BGR, ImageNet
  means subtracted, no scaling), run, sequentially. Any registered model
  works: size, layout and normalisation come from its entry. Without Keras
  the same steps are imitated with Pillow and NumPy (a note says so). It runs
  the same ONNX file, so the difference is the per-image session build and
  the pipeline, not the network.

Both return a *series* in the same shape as ``lookalike bench`` writes, so the
report puts them side by side with the server's sweeps. Run as a script for a
quick look: ``python benchmarks/baselines.py --model mobilenet_v2``.
"""

from __future__ import annotations

import argparse
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
    spin: bool = True,
) -> Any:
    """The server's ``OnnxModel`` for a registry entry, warmed, set up as a plain ORT loop would be.

    Args:
        name: Model name in the registry.
        registry: ``models.toml`` (default: the repo's).
        threads: ORT intra-op threads; 0 = ORT's default, as the server.
        providers: Execution providers, in priority order.
        spin: Let ORT's intra-op threads busy-wait between parallel sections,
            ORT's own default. The server turns it off for its batch sessions
            (under load spinning takes cores from decoding), but a sequential
            loop has nothing else to run, and on the 2-core EPYC VM two
            threads that sleep between sections ran a lone MobileNetV2 image
            about 0.5-1 ms slower than two that spin (docs/performance.md,
            ninth session): a ceiling without it flattered the server.
            Irrelevant at one thread (no pool).
    """
    from lookalike_server.config import BatchingConfig
    from lookalike_server.models import OnnxModel
    from lookalike_server.registry_reader import load_registry

    registry = registry or REPO / "models" / "models.toml"
    (spec,) = load_registry(registry, BatchingConfig(max_batch_size=64), only=[name])
    model = OnnxModel(spec, list(providers), intra_op_threads=threads, spin_wait=spin)
    model.warmup(timed_runs=0)  # shapes only: the ceiling measures each batch size itself
    return model


def load_lone_model(
    name: str,
    registry: str | Path | None = None,
    threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> Any:
    """The server's ``OnnxModel`` with its lone-image session as the server runs it (``embed_batch(..., wide=True)``).

    For a ceiling measured call by call between a server's calls
    (``ceiling_ab.py``'s paired reading). Its ``threads`` intra-op threads
    spin within a run, as :func:`load_model`'s do, but stop when the run
    ends, as the server's wide session's do: left spinning, they held the
    cores for 15-35 ms after every run, in the middle of the server's next
    call (the server then answered a lone image in 22-30 ms, not 12).
    """
    from lookalike_server.config import BatchingConfig
    from lookalike_server.models import OnnxModel
    from lookalike_server.registry_reader import load_registry

    registry = registry or REPO / "models" / "models.toml"
    (spec,) = load_registry(registry, BatchingConfig(max_batch_size=1), only=[name])
    model = OnnxModel(
        spec,
        list(providers),
        intra_op_threads=1,
        wide_intra_op_threads=max(threads, 1),
        wide_session="on",
        wide_spin_wait=True,
    )
    model.warmup(timed_runs=0)
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


# Keras' preprocess_input modes and the registry normalisation each one is
# (colour order, scale, mean, std), to find which mode an entry uses.
KERAS_MODES: dict[str, tuple[str, float, tuple[float, ...], tuple[float, ...]]] = {
    "caffe": ("BGR", 1.0, tuple(float(v) for v in CAFFE_MEAN_BGR), (1.0, 1.0, 1.0)),
    "torch": ("RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf": ("RGB", 1 / 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)),
}


def keras_tools() -> Any:
    """Keras' ``utils`` and ``applications.imagenet_utils`` modules, or None (with a printed note).

    Only ``load_img``, ``img_to_array`` and ``preprocess_input`` are used; they
    do the same on every Keras backend. Keras 3 defaults to TensorFlow, which
    the dev environment keeps in ``.venv-keras``: where ``KERAS_BACKEND`` is
    unset and TensorFlow missing, the first installed of torch, jax and numpy
    (which needs scipy) is named instead.
    """
    import importlib.util
    import os

    named = False
    unset = "keras" not in sys.modules and "KERAS_BACKEND" not in os.environ
    if unset and importlib.util.find_spec("tensorflow") is None:
        usable = [b for b in ("torch", "jax", "scipy") if importlib.util.find_spec(b) is not None]
        if usable:
            os.environ["KERAS_BACKEND"] = {"scipy": "numpy"}.get(usable[0], usable[0])
            named = True
    try:
        import keras
        from keras.applications import imagenet_utils
    except Exception as exc:  # ImportError, or a backend that fails to load
        print(
            f"original pipeline: Keras is not importable here ({type(exc).__name__}: {exc}); "
            "imitating load_img + preprocess_input with Pillow and NumPy",
            file=sys.stderr,
        )
        return None
    finally:
        # Keras read it at import; child processes (a TensorFlow worker) must not inherit it.
        if named:
            del os.environ["KERAS_BACKEND"]
    return keras.utils, imagenet_utils


def keras_mode(spec: Any) -> str | None:
    """The ``preprocess_input`` mode equal to the registry entry's normalisation, or None."""
    for mode, (order, scale, mean, std) in KERAS_MODES.items():
        if (
            spec.color_order == order
            and np.isclose(spec.scale, scale)
            and np.allclose(spec.mean, mean, atol=1e-4)
            and np.allclose(spec.std, std, atol=1e-4)
        ):
            return mode
    return None


def registry_normalise(x: np.ndarray, spec: Any) -> np.ndarray:
    """The registry's normalisation of an RGB (…, H, W, 3) array of 0..255 floats."""
    if spec.color_order == "BGR":
        x = x[..., ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return ((x * np.float32(spec.scale) - mean) / std).astype(np.float32)


def notebook_input(path: str | Path, spec: Any, keras: Any = None) -> np.ndarray:
    """One image as the notebook made it: ``load_img(target_size)`` + ``preprocess_input``.

    ``load_img`` reads the file, converts it to RGB and resizes it straight to
    the model's input size with NEAREST (its default; no aspect ratio kept, no
    crop). ``preprocess_input`` runs in the mode that equals the entry's
    normalisation ("caffe" for Keras exports, "torch" for the ImageNet preset,
    "tf"); an entry matching no mode gets its own normalisation. Without Keras
    (``keras`` None), Pillow and NumPy do the same steps.

    Args:
        path: The image file, read as it is on disk.
        spec: The model's :class:`~lookalike_server.preprocess.PreprocessSpec`.
        keras: :func:`keras_tools`' result, or None.

    Returns:
        A (1, …) float32 batch in the entry's layout.
    """
    size = (spec.height, spec.width)
    mode = keras_mode(spec)
    if keras is not None:
        utils, imagenet_utils = keras
        x = utils.img_to_array(utils.load_img(str(path), target_size=size), dtype="float32")[None]
        if mode is not None:
            x = imagenet_utils.preprocess_input(x, mode=mode, data_format="channels_last")
        else:
            x = registry_normalise(x, spec)
    else:
        from PIL import Image

        with Image.open(path) as opened:
            img = opened if opened.mode == "RGB" else opened.convert("RGB")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.NEAREST)
            x = registry_normalise(np.asarray(img, dtype=np.float32)[None], spec)
    if spec.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def image_paths(directory: str | Path, limit: int = 256) -> list[Path]:
    """The photo files under ``directory`` (as ``lookalike bench`` picks them), sorted."""
    from lookalike.images import IMAGE_SUFFIXES

    return sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]


def original_pipeline(
    model: Any,
    paths: Sequence[str | Path],
    seconds: float = 10.0,
    max_images: int = 40,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> dict[str, Any]:
    """The notebook's loop: per image a new session, ``load_img`` + ``preprocess_input``, one run.

    Runs on any registered model and layout: the ONNX file, input size,
    layout and normalisation come from its registry entry (see
    :func:`notebook_input`). Files are read from disk as they are, not
    re-encoded. Stops after ``max_images`` images or ``seconds``, whichever
    comes first.

    Args:
        model: The model's registry entry (:class:`~lookalike_server.registry_reader.ModelSpec`).
        paths: Image files.
        seconds: Time budget.
        max_images: Image budget.
        providers: Execution providers for each new session.

    Returns:
        A series named ``original pipeline`` with one point; ``preprocessing``
        says whose code made the input ("keras <version> preprocess_input(mode=…)"
        or the Pillow imitation).
    """
    import onnxruntime as ort

    if not paths:
        raise ValueError("original pipeline: no image files")
    keras = keras_tools()
    mode = keras_mode(model.preprocess)
    if keras is None:
        how = "Pillow imitation of keras load_img + " + (f"preprocess_input(mode={mode!r})" if mode else "registry")
    else:
        import keras as keras_module

        how = f"keras {keras_module.__version__} load_img + " + (
            f"preprocess_input(mode={mode!r})" if mode else "registry normalisation"
        )
    lat: list[float] = []
    start = time.perf_counter()
    for i in range(max_images):
        t0 = time.perf_counter()
        session = ort.InferenceSession(str(model.path), providers=list(providers))
        name = model.input or session.get_inputs()[0].name
        session.run(None, {name: notebook_input(paths[i % len(paths)], model.preprocess, keras)})
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        del session
        if t1 - start >= seconds:
            break
    window = time.perf_counter() - start
    return {
        "name": "original pipeline",
        "kind": "original",
        "model": model.name,
        "preprocessing": how,
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
    parser.add_argument("--registry", default=None, help="model registry TOML (default: the repo's)")
    args = parser.parse_args(argv)
    folder = find_image_dir(args.images)
    images = load_images(folder, args.image_size)
    model = load_model(args.model, registry=args.registry)
    out = {
        "ceiling": ceiling(model, images, seconds=args.seconds),
        "original": original_pipeline(model.spec, image_paths(folder), seconds=args.seconds * 3),
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
