"""The model registry and ONNX Runtime sessions.

The registry is a TOML file with one ``[[models]]`` table per model (see
``models/models.toml`` and the README). :func:`load_registry` turns it into
validated :class:`ModelSpec` objects; :class:`OnnxModel` owns one
``InferenceSession`` per model, created with the providers asked for in
priority order, and records the providers ONNX Runtime actually gave it: an
onnxruntime-gpu build lists CUDA as *available* even on a machine without a
GPU, and then silently runs on the CPU, so only ``session.get_providers()``
tells the truth.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from lookalike_server.config import BatchingConfig
from lookalike_server.errors import ConfigError, ModelLoadError
from lookalike_server.preprocess import PRESETS, PreprocessSpec
from lookalike_server.registry import ENTRY_KEYS, NAME_RE, NAME_RULE, file_sha256
from lookalike_server.validation import MAX_DIM

log = logging.getLogger(__name__)

_PREPROCESS_KEYS = {f.name for f in dataclasses.fields(PreprocessSpec)}
# Every preprocessing setting must be a registry key, or an entry could not set it.
assert _PREPROCESS_KEYS <= ENTRY_KEYS, "registry schema lacks a PreprocessSpec field"


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry, validated.

    Attributes:
        name: Name used in requests.
        version: Version of the weights/export (collection and cache keys).
        path: Absolute path of the ONNX file.
        sha256: Expected hex digest of the file, or "" to skip the check.
        description: Free text.
        dim: Embedding dimension after pooling.
        input: Input tensor name, "" = the first input.
        output: Output tensor name, "" = the first output.
        optional: A load failure is logged and the model skipped.
        preprocess: How images become the input tensor.
        pooling: "none", "avg" or "max" over a 4-D output's spatial axes.
        output_layout: Layout of a 4-D output ("NCHW"/"NHWC").
        batching: Micro-batching settings for this model.
    """

    name: str
    version: str
    path: Path
    sha256: str
    description: str
    dim: int
    input: str
    output: str
    optional: bool
    preprocess: PreprocessSpec
    pooling: str
    output_layout: str
    batching: BatchingConfig

    @property
    def key(self) -> str:
        """``name@version``: identifies the exact embedding space (cache keys)."""
        return f"{self.name}@{self.version}"


def _entry_error(registry: Path, index: int, name: str, message: str) -> ConfigError:
    label = f"model {name!r}" if name else f"model #{index + 1}"
    return ConfigError(f"{registry}: {label}: {message}")


def parse_entry(entry: dict[str, Any], registry: Path, index: int, defaults: BatchingConfig) -> ModelSpec:
    """Validates one ``[[models]]`` table.

    Args:
        entry: The TOML table.
        registry: The registry file (relative paths resolve against its folder).
        index: Position in the file, for messages.
        defaults: Server-wide batching settings the entry may override.

    Returns:
        The spec.

    Raises:
        ConfigError: Naming the model and the problem.
    """
    name = str(entry.get("name", ""))
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise _entry_error(registry, index, name, f"unknown key(s) {sorted(unknown)}")
    if not NAME_RE.match(name):
        raise _entry_error(registry, index, name, f"name {NAME_RULE}")
    for required in ("path", "dim"):
        if required not in entry:
            raise _entry_error(registry, index, name, f"missing required key {required!r}")

    preset = str(entry.get("preset", ""))
    if preset and preset not in PRESETS:
        raise _entry_error(registry, index, name, f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    pre: dict[str, Any] = dict(PRESETS.get(preset, {}))
    pre.update({k: entry[k] for k in _PREPROCESS_KEYS if k in entry})
    pre["preset"] = preset
    for k in ("mean", "std"):
        if k in pre:
            pre[k] = tuple(float(v) for v in pre[k])
    try:
        spec = PreprocessSpec(**pre)
    except (TypeError, ValueError) as exc:
        raise _entry_error(registry, index, name, f"preprocessing: {exc}") from None

    pooling = str(entry.get("pooling", "none"))
    if pooling not in ("none", "avg", "max"):
        raise _entry_error(registry, index, name, f"pooling {pooling!r} must be none, avg or max")
    output_layout = str(entry.get("output_layout", "")) or spec.layout
    if output_layout not in ("NCHW", "NHWC"):
        raise _entry_error(registry, index, name, f"output_layout {output_layout!r} must be NCHW or NHWC")
    dim = entry["dim"]
    if not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
        raise _entry_error(registry, index, name, f"dim {dim!r} must be an integer in 1..{MAX_DIM} (Milvus' limit)")
    overrides = entry.get("batching", {})
    try:
        batching = dataclasses.replace(defaults, **overrides)
    except (TypeError, ConfigError) as exc:
        raise _entry_error(registry, index, name, f"batching: {exc}") from None

    path = Path(str(entry["path"]))
    if not path.is_absolute():
        path = (registry.parent / path).resolve()
    return ModelSpec(
        name=name,
        version=str(entry.get("version", "1")),
        path=path,
        sha256=str(entry.get("sha256", "")).lower(),
        description=str(entry.get("description", "")),
        dim=dim,
        input=str(entry.get("input", "")),
        output=str(entry.get("output", "")),
        optional=bool(entry.get("optional", False)),
        preprocess=spec,
        pooling=pooling,
        output_layout=output_layout,
        batching=batching,
    )


def load_registry(path: str | Path, defaults: BatchingConfig, only: Sequence[str] = ()) -> list[ModelSpec]:
    """Reads and validates the registry.

    Args:
        path: The TOML file.
        defaults: Batching defaults for entries without overrides.
        only: If given, keep just these model names (each must exist).

    Returns:
        The specs, in file order.

    Raises:
        ConfigError: Unreadable file, bad entry, duplicate or unknown name.
    """
    registry = Path(path).resolve()
    try:
        data = tomllib.loads(registry.read_text())
    except FileNotFoundError:
        raise ConfigError(f"model registry {registry} does not exist (set --models-registry)") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read model registry {registry}: {exc}") from None
    entries = data.get("models", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"model registry {registry} has no [[models]] entries")
    specs = [parse_entry(e, registry, i, defaults) for i, e in enumerate(entries)]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"model registry {registry}: duplicate model name(s) {dupes}")
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise ConfigError(f"models.only names {missing}, not in {registry} (has {names})")
        specs = [s for s in specs if s.name in only]
    return specs


def _provider_options(provider: str, spec: ModelSpec, buckets: Sequence[int], cache_dir: Path | None) -> dict:
    """Options per execution provider. TensorRT needs the shape range up front."""
    if provider == "TensorrtExecutionProvider":
        inp = spec.input or "input"
        shape = "x".join(str(d) for d in spec.preprocess.shape)
        opts: dict[str, Any] = {
            "trt_profile_min_shapes": f"{inp}:1x{shape}",
            "trt_profile_opt_shapes": f"{inp}:{max(buckets)}x{shape}",
            "trt_profile_max_shapes": f"{inp}:{max(buckets)}x{shape}",
        }
        if cache_dir is not None:
            opts |= {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir / "trt")}
        return opts
    if provider == "CUDAExecutionProvider":
        # Our shapes are fixed per bucket, so an exhaustive search pays once.
        return {"cudnn_conv_algo_search": "EXHAUSTIVE"}
    return {}


# Shared libraries ONNX Runtime loads for a GPU provider. Their own
# dependencies (CUDA, cuDNN, TensorRT) are what a CPU machine lacks.
_PROVIDER_LIBS = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}


@functools.cache
def _provider_problem(provider: str) -> str:
    """Why ``provider`` cannot be created in this process, or "" when it can be tried.

    An onnxruntime-gpu build lists CUDA and TensorRT as *available* on every
    machine; asking for them where their libraries are missing makes ORT print
    red errors and an "EP Error" banner before it falls back to the CPU. The
    provider library is loaded here the way ORT loads it (``dlopen`` from
    ``onnxruntime/capi``), so a missing ``libcublas``/``libnvinfer`` is found
    quietly, before any session is made. The reason is logged once, at INFO
    (the answer is cached for the process).
    """
    import ctypes

    import onnxruntime as ort

    problem = ""
    lib = _PROVIDER_LIBS.get(provider)
    path = Path(ort.__file__).parent / "capi" / (lib or "")
    if provider not in ort.get_available_providers():
        problem = "not in this onnxruntime build"
    elif lib is not None and path.is_file():  # other platforms name the file differently: ORT decides
        try:
            ctypes.CDLL(str(path))
        except OSError as exc:
            text = str(exc)
            problem = text.split(":")[0] + " not found" if "cannot open shared object" in text else text
    if problem:
        log.info("%s not used on this machine: %s", provider, problem)
    return problem


def usable_providers(requested: Sequence[str]) -> list[str]:
    """The requested providers that can exist on this machine, in order.

    Providers whose libraries cannot load are dropped (one INFO line each per
    process), so a CPU machine starts without red errors; the CPU
    provider is the last resort.

    Args:
        requested: Execution providers in priority order.

    Returns:
        A non-empty list of providers to hand to ONNX Runtime.
    """
    import onnxruntime as ort

    # ORT's C++ logger reports each failed provider as an ERROR with a banner;
    # the providers obtained are reported by the caller instead.
    ort.set_default_logger_severity(3)
    chosen = [p for p in requested if not _provider_problem(p)]
    return chosen or ["CPUExecutionProvider"]


class OnnxModel:
    """One model: its spec, its ONNX Runtime session and its batch buckets.

    Args:
        spec: The registry entry.
        providers: Execution providers to ask for, in priority order.
        intra_op_threads: ORT intra-op threads (0 = ORT's default).
        cache_dir: Where TensorRT may cache engines; None = no cache.

    Raises:
        ModelLoadError: Missing/corrupt file, checksum mismatch, or an input
            or output that disagrees with the spec.
    """

    def __init__(
        self,
        spec: ModelSpec,
        providers: Sequence[str],
        intra_op_threads: int = 0,
        cache_dir: Path | None = None,
        session_per_bucket: str = "auto",
    ) -> None:
        import onnxruntime as ort  # the only module that touches ORT

        self.spec = spec
        self.buckets = spec.batching.resolved_buckets()
        self.max_batch_size = spec.batching.max_batch_size
        where = f"model {spec.name!r} ({spec.path})"
        if not spec.path.is_file():
            raise ModelLoadError(f"{where}: ONNX file does not exist")
        self.sha256 = file_sha256(spec.path)
        if spec.sha256 and self.sha256 != spec.sha256:
            raise ModelLoadError(f"{where}: sha256 is {self.sha256}, the registry expects {spec.sha256}")

        self.providers_requested = list(providers)
        chosen = usable_providers(providers)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = intra_op_threads
        opts.log_severity_level = 3  # ORT's provider fallbacks are reported by us, once

        def new_session() -> Any:
            try:
                return ort.InferenceSession(
                    str(spec.path),
                    sess_options=opts,
                    providers=[(p, _provider_options(p, spec, self.buckets, cache_dir)) for p in chosen],
                )
            except Exception as exc:  # ORT raises its own Fail/InvalidGraph/RuntimeError types
                raise ModelLoadError(f"{where}: ONNX Runtime cannot load it: {exc}") from None

        self.session = new_session()
        self.providers = self.session.get_providers()
        if self.providers[0] != chosen[0]:
            # The provider's libraries loaded, yet ORT could not create it: a real fallback.
            log.warning("model %s: asked for %s, ONNX Runtime gave %s", spec.name, chosen, self.providers)
        self._check_io(where)
        # On CUDA, one session fed alternating batch shapes was measured at
        # 80-105 ms a run against 3-11 ms when it sees a single shape (H200,
        # ResNet50; see benchmarks/results/gpu-*). A session per bucket keeps
        # each session on one shape. On the CPU one session serves all shapes
        # at full speed, so "auto" shares it there.
        on_gpu = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        per_bucket = session_per_bucket == "on" or (session_per_bucket == "auto" and on_gpu)
        self.sessions: dict[int, Any] = {
            b: (self.session if i == 0 or not per_bucket else new_session()) for i, b in enumerate(self.buckets)
        }
        self.session_per_bucket = per_bucket

    def _check_io(self, where: str) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self.input_name = self.spec.input or next(iter(inputs))
        self.output_name = self.spec.output or next(iter(outputs))
        if self.input_name not in inputs:
            raise ModelLoadError(f"{where}: no input named {self.input_name!r}; it has {sorted(inputs)}")
        if self.output_name not in outputs:
            raise ModelLoadError(f"{where}: no output named {self.output_name!r}; it has {sorted(outputs)}")
        inp = inputs[self.input_name]
        if inp.type != "tensor(float)":
            raise ModelLoadError(f"{where}: input {self.input_name!r} is {inp.type}; float32 is needed")
        shape = list(inp.shape)
        want = self.spec.preprocess.shape
        if len(shape) != 4:
            raise ModelLoadError(f"{where}: input {self.input_name!r} has shape {shape}; expected 4-D")
        for got, expected in zip(shape[1:], want, strict=True):
            if isinstance(got, int) and got > 0 and got != expected:
                raise ModelLoadError(
                    f"{where}: input {self.input_name!r} has shape {shape} but the registry describes "
                    f"{self.spec.preprocess.layout} {want} (check layout, height and width)"
                )
        batch_dim = shape[0]
        if isinstance(batch_dim, int) and batch_dim > 0:
            # A fixed batch size: the only bucket is that size.
            log.warning("model %s: batch axis is fixed at %d; batching limited to it", self.spec.name, batch_dim)
            self.buckets = (batch_dim,)
            self.max_batch_size = batch_dim

    def warmup(self) -> float:
        """Runs every bucket once so no new shape is met under load.

        Returns:
            Seconds spent.

        Raises:
            ModelLoadError: The output, after pooling, is not ``spec.dim`` wide.
        """
        started = time.perf_counter()
        for b in self.buckets:
            x = np.zeros((b, *self.spec.preprocess.shape), dtype=np.float32)
            out = self._infer(x, b)
            if out.shape != (b, self.spec.dim):
                raise ModelLoadError(
                    f"model {self.spec.name!r} ({self.spec.path}): output {self.output_name!r} gives "
                    f"embeddings of shape {out.shape[1:]} after pooling {self.spec.pooling!r}, "
                    f"but the registry says dim = {self.spec.dim}"
                )
        return time.perf_counter() - started

    def _infer(self, x: np.ndarray, n: int) -> np.ndarray:
        """Runs a bucket-shaped batch on that bucket's session; pooled features of the first ``n`` rows."""
        (out,) = self.sessions.get(x.shape[0], self.session).run([self.output_name], {self.input_name: x})
        return pool_features(np.asarray(out[:n], dtype=np.float32), self.spec.pooling, self.spec.output_layout)

    def embed_batch(self, tensors: list[np.ndarray]) -> list[np.ndarray]:
        """The micro-batcher's ``run_batch``: stack, run, L2-normalise, split.

        The batch is written straight into a buffer of the bucket's size, so
        each image tensor is copied once (not stacked, then padded again).
        """
        n = len(tensors)
        x = np.empty((bucket_for(n, self.buckets), *tensors[0].shape), dtype=np.float32)
        for i, t in enumerate(tensors):
            x[i] = t
        x[n:] = 0.0
        return list(l2_normalise(self._infer(x, n)))


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket holding ``n`` items (``n`` itself past the largest).

    Args:
        n: Items in a batch.
        buckets: Ascending batch sizes the model was warmed with.
    """
    for b in buckets:
        if b >= n:
            return b
    return n


def pool_features(out: np.ndarray, pooling: str, layout: str) -> np.ndarray:
    """Reduces a 4-D feature map to (n, c); flattens anything else to (n, -1)."""
    if out.ndim == 4:
        axes = (2, 3) if layout == "NCHW" else (1, 2)
        if pooling == "max":
            return out.max(axis=axes)
        if pooling == "avg":
            return out.mean(axis=axes)
    return out.reshape(out.shape[0], -1)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
