"""Keras (TensorFlow) → ONNX export of ResNet50 and VGG16, as the original system built them.

The original system used ``keras.applications.ResNet50(include_top=False,
pooling='max')`` (2048-d) and VGG16 (512-d) and failed to convert them with
``keras2onnx`` (``'KerasTensor' object has no attribute 'graph'``: keras2onnx
is dead since TF 2.4 / Keras 3). What works today is Keras 3's own
``model.export(path, format="onnx")``, which drives ``tf2onnx`` on a traced
``tf.function``; this module uses that and then renames the graph's input and
output to the registry's ``input``/``embedding``.

TensorFlow pins numpy and protobuf, so it usually lives in its own virtual
environment (``.venv-keras``). The export therefore runs in two halves: a
*worker* (this module run as a script by that environment's Python, or
in-process when TensorFlow imports here) builds the model, writes the ONNX
file and the Keras outputs for the parity photos; the *driver* (in the
project's environment) renames, checks, compares with ONNX Runtime and writes
the registry entry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import lookalike_server
from lookalike_export.fidelity import FidelityReport, check_fidelity, fidelity_report
from lookalike_export.parity import compare, photo_batch
from lookalike_export.result import ExportResult
from lookalike_server.errors import ConfigError, ModelLoadError
from lookalike_server.registry import ModelEntry, file_sha256

KERAS_ARCHS: dict[str, tuple[str, int, str]] = {
    # name: (keras.applications attribute, dim, description)
    "resnet50": ("ResNet50", 2048, "Keras ResNet50"),
    "vgg16": ("VGG16", 512, "Keras VGG16"),
}
OPSET = 17
# The folders holding this package and lookalike_server (the same folder once installed).
_IMPORT_DIRS = tuple(
    dict.fromkeys(str(Path(f).resolve().parents[1]) for f in (__file__, lookalike_server.__file__ or ""))
)


def keras_python() -> str | None:
    """Finds a Python that can import TensorFlow for the worker.

    Order: ``$LOOKALIKE_KERAS_PYTHON``; this interpreter if TensorFlow
    imports here; ``.venv-keras/bin/python`` in the current directory.
    """
    env = os.environ.get("LOOKALIKE_KERAS_PYTHON")
    if env:
        return env
    import importlib.util

    if importlib.util.find_spec("tensorflow") is not None:
        return sys.executable
    local = Path(".venv-keras/bin/python")
    # absolute(), not resolve(): resolving the venv symlink would leave the venv.
    return str(local.absolute()) if local.exists() else None


def keras_entry(
    arch: str, name: str, onnx_file: str, pooling: str, weights_label: str, decode: str = "fast"
) -> ModelEntry:
    """Registry entry for a Keras export: Keras' "caffe" preprocessing, NHWC.

    ``decode = "exact"`` makes the server decode as ``keras.utils.load_img``
    does (every JPEG pixel, EXIF tag ignored); the caffe preset already has its
    straight NEAREST resize.
    """
    _, dim, desc = KERAS_ARCHS[arch]
    return ModelEntry.from_preset(
        "caffe",
        name=name,
        path=onnx_file,
        dim=dim,
        description=f"{desc} (include_top=False, pooling='{pooling}'), {weights_label} "
        "(exported from Keras by lookalike-export)",
        height=224,
        width=224,
        pooling="none",  # Keras' pooling= is inside the graph
        decode=decode,
    )


# ---------------------------------------------------------------------------
# Worker: runs where TensorFlow imports
# ---------------------------------------------------------------------------


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    """Builds the Keras model, exports ONNX, and computes Keras' outputs.

    Args:
        job: ``arch``, ``pooling``, ``weights`` ("imagenet", "random" or a
            path), ``seed``, ``onnx`` (output path), ``batch`` (.npy path of
            preprocessed photos, may be ""), ``photos`` (paths for Keras' own
            preprocessing), ``out_dir`` (for .npy results).

    Returns:
        Paths of the reference outputs and versions, for the driver.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    arch, pooling, weights = job["arch"], job["pooling"], job["weights"]
    attr, _, _ = KERAS_ARCHS[arch]
    keras.utils.set_random_seed(int(job["seed"]))
    ctor = getattr(keras.applications, attr)
    kw = {"include_top": False, "pooling": pooling, "input_shape": (224, 224, 3)}
    if weights == "imagenet":
        try:
            model = ctor(weights="imagenet", **kw)
        except Exception as exc:  # offline: an URL/HTTP error from keras' get_file
            raise ModelLoadError(
                f"{arch}: Keras ImageNet weights cannot be downloaded here ({type(exc).__name__}); "
                "pass --weights FILE.h5 (keras' *_weights_tf_dim_ordering_tf_kernels_notop.h5)"
            ) from exc
    else:
        model = ctor(weights=None, **kw)
        if weights != "random":
            path = Path(weights)
            if not path.is_file():
                raise ModelLoadError(f"{arch}: weights file {path} does not exist")
            try:
                model.load_weights(str(path))
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelLoadError(f"{arch}: weights {path.name} do not fit Keras {attr}: {first}") from exc
    model(np.zeros((1, 224, 224, 3), np.float32))  # Keras refuses to export a never-called model
    spec = [tf.TensorSpec((None, 224, 224, 3), tf.float32, name="input")]
    model.export(job["onnx"], format="onnx", verbose=False, input_signature=spec, opset_version=OPSET)

    out: dict[str, Any] = {"keras": keras.__version__, "tensorflow": tf.__version__}
    try:
        import tf2onnx

        out["tf2onnx"] = tf2onnx.__version__
    except ImportError:  # pragma: no cover - keras' ONNX export needs it
        pass
    if job["batch"]:
        batch = np.load(job["batch"])
        ref = model.predict(batch, batch_size=8, verbose=0)
        out["ref"] = str(Path(job["out_dir"]) / "ref.npy")
        np.save(out["ref"], ref.astype(np.float32))
    if job["photos"]:
        # Keras' own path for the same photos: load_img (full decode, no EXIF
        # transpose, convert("RGB"), straight NEAREST resize) + preprocess_input
        # ("caffe"), then the model. The driver compares tensors and vectors with
        # the server's (lookalike_server.preprocess + ONNX Runtime).
        module = keras.applications.resnet50 if arch == "resnet50" else keras.applications.vgg16
        arrays = [keras.utils.img_to_array(keras.utils.load_img(p, target_size=(224, 224))) for p in job["photos"]]
        native = np.asarray(module.preprocess_input(np.stack(arrays)), np.float32)
        out["native"] = str(Path(job["out_dir"]) / "native.npy")
        np.save(out["native"], native)
        out["native_ref"] = str(Path(job["out_dir"]) / "native_ref.npy")
        np.save(out["native_ref"], model.predict(native, batch_size=8, verbose=0).astype(np.float32))
    return out


# ---------------------------------------------------------------------------
# Driver: runs in the project's environment
# ---------------------------------------------------------------------------


def _rename_io(path: Path, seconds_props: dict[str, str]) -> None:
    """Renames the graph's single input/output to ``input``/``embedding``, batch axis to ``batch``."""
    import onnx

    model = onnx.load(str(path))
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise ModelLoadError(f"{path.stem}: expected one input and one output from tf2onnx")
    renames = {model.graph.input[0].name: "input", model.graph.output[0].name: "embedding"}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.name = renames[vi.name]
        vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    for k, v in seconds_props.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def export_keras(
    arch: str,
    *,
    weights: str,
    out_dir: Path,
    name: str | None = None,
    pooling: str = "max",
    photos: list[Path] | None = None,
    seed: int = 0,
    atol: float = 1e-4,
    python: str | None = None,
    timeout_s: float = 900,
    decode: str = "fast",
) -> tuple[ExportResult, FidelityReport | None]:
    """Exports a Keras application to ONNX, checks parity, returns its entry.

    Args:
        arch: ``resnet50`` or ``vgg16``.
        weights: ``imagenet``, ``random`` or a ``.h5``/``.weights.h5`` path.
        out_dir: Output folder.
        name: Model name (file stem); defaults to ``keras_<arch>``.
        pooling: ``max`` (the original system) or ``avg``.
        photos: Real photos for parity (ONNX vs Keras on the server's
            tensors) and fidelity (the server's vectors vs Keras' own
            ``load_img`` + ``preprocess_input`` + model).
        seed: Seed of random weights.
        atol: Parity tolerance.
        python: Interpreter with TensorFlow; found by :func:`keras_python` if None.
        timeout_s: Limit for the worker.
        decode: The entry's decode preset: ``fast`` (the server's default) or
            ``exact`` (decode as Keras' ``load_img`` does).

    Returns:
        The export result (its ``parity`` is ONNX vs Keras) and the fidelity
        report (the server's vector of each photo vs Keras' own path, known
        departures explained), or None without photos.

    Raises:
        ModelLoadError: One line naming the model and the problem: ONNX
            differs from Keras, or a photo's server preprocessing differs from
            Keras' for no known reason.
        ConfigError: No TensorFlow environment found.
    """
    t0 = time.perf_counter()
    if arch not in KERAS_ARCHS:
        raise ModelLoadError(f"{name or arch}: unknown Keras architecture {arch!r} (known: resnet50, vgg16)")
    if pooling not in ("max", "avg"):
        raise ConfigError(f"{name or arch}: pooling must be max or avg for Keras, got {pooling!r}")
    name = name or f"keras_{arch}"
    python = python or keras_python()
    if python is None:
        raise ConfigError(
            f"{name}: no Python with TensorFlow found; create one with "
            "'python -m venv .venv-keras && .venv-keras/bin/pip install tensorflow-cpu tf2onnx pillow' "
            "or set LOOKALIKE_KERAS_PYTHON"
        )
    weights_label = (
        f"random weights (seed {seed}; TEST ONLY, embeddings are meaningless)"
        if weights == "random"
        else "Keras ImageNet weights"
        if weights == "imagenet"
        else f"weights {Path(weights).name} (sha256 {file_sha256(Path(weights))[:16]})"
        if Path(weights).is_file()
        else f"weights {weights}"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}.onnx"
    entry = keras_entry(arch, name, final.name, pooling, weights_label, decode)
    with tempfile.TemporaryDirectory(prefix="lookalike-keras-") as td:
        work = Path(td)
        batch_path = ""
        batch = None
        if photos:
            batch = photo_batch(photos, entry)
            batch_path = str(work / "batch.npy")
            np.save(batch_path, batch)
        job = {
            "arch": arch,
            "pooling": pooling,
            "weights": str(Path(weights).resolve()) if weights not in ("imagenet", "random") else weights,
            "seed": seed,
            "onnx": str(work / "model.onnx"),
            "batch": batch_path,
            "photos": [str(p) for p in photos or []],
            "out_dir": str(work),
        }
        info = _run_worker(python, job, name, timeout_s)
        tmp_onnx = work / "model.onnx"
        _rename_io(
            tmp_onnx,
            {
                "lookalike.arch": f"keras.{KERAS_ARCHS[arch][0]}",
                "lookalike.pooling": pooling,
                "lookalike.weights": Path(weights).name if weights not in ("imagenet", "random") else weights,
                "lookalike.exporter": f"keras {info.get('keras')} tf {info.get('tensorflow')} "
                f"tf2onnx {info.get('tf2onnx')} opset {OPSET}",
            },
        )
        report = fidelity = None
        if batch is not None and photos:
            from lookalike_export.parity import run_onnx

            ref = np.load(info["ref"])
            got = run_onnx(tmp_onnx, batch)
            if got.shape != ref.shape:
                raise ModelLoadError(f"{name}: ONNX output shape {got.shape} differs from Keras' {ref.shape}")
            report = compare(ref, got)
            if not report.ok(atol):
                raise ModelLoadError(f"{name}: ONNX output differs from Keras beyond {atol}: {report}")
            fidelity = check_fidelity(
                fidelity_report(
                    photos,
                    entry.preprocess_spec(),
                    server_tensors=batch,
                    framework_tensors=np.load(info["native"]),
                    server_vectors=got,
                    framework_vectors=np.load(info["native_ref"]),
                ),
                name=name,
            )
        _copy(tmp_onnx, final)  # the temp dir may be on another file system
    entry.sha256 = file_sha256(final)
    return ExportResult(final, entry, report, time.perf_counter() - t0), fidelity


def _copy(src: Path, dst: Path) -> None:
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)


def _run_worker(python: str, job: dict[str, Any], name: str, timeout_s: float) -> dict[str, Any]:
    """Runs :func:`_worker` in ``python`` and returns its JSON answer."""
    env = dict(os.environ)
    # The worker imports lookalike_export and lookalike_server from this checkout without installing them.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*_IMPORT_DIRS, env.get("PYTHONPATH", "")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.setdefault("CUDA_VISIBLE_DEVICES", "")  # the export is a CPU job; don't grab a GPU
    try:
        proc = subprocess.run(
            [python, "-m", "lookalike_export.keras_export", json.dumps(job)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelLoadError(f"{name}: Keras worker ({python}) failed to run: {exc}") from exc
    answer = [ln for ln in proc.stdout.splitlines() if ln.startswith("LOOKALIKE_RESULT ")]
    errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("LOOKALIKE_ERROR ")]
    if errors:
        raise ModelLoadError(errors[-1].removeprefix("LOOKALIKE_ERROR "))
    if proc.returncode != 0 or not answer:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelLoadError(f"{name}: Keras worker exited {proc.returncode}: {tail}")
    return dict(json.loads(answer[-1].removeprefix("LOOKALIKE_RESULT ")))


def _main(argv: list[str]) -> int:
    """Worker entry: ``python -m lookalike_export.keras_export '<job json>'``."""
    try:
        print("LOOKALIKE_RESULT " + json.dumps(_worker(json.loads(argv[0]))), flush=True)
    except (ModelLoadError, ConfigError) as exc:
        print(f"LOOKALIKE_ERROR {exc}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
