"""ONNX Runtime execution providers: which can run here, and their options.

An onnxruntime-gpu build lists CUDA and TensorRT as *available* even on a
machine without a GPU, and then silently runs on the CPU (after printing red
errors). :func:`usable_providers` drops the providers whose libraries cannot
load, quietly and once per process; :func:`provider_options` gives each
provider its session options. Which providers a session really got is only
known from ``session.get_providers()``, which :class:`~lookalike_server.models.OnnxModel`
records.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lookalike_server.registry_reader import ModelSpec

log = logging.getLogger(__name__)


def provider_options(provider: str, spec: ModelSpec, buckets: Sequence[int], cache_dir: Path | None) -> dict[str, Any]:
    """Session options for one execution provider.

    Args:
        provider: The execution provider's name.
        spec: The model (input name and shape: TensorRT needs the shape range up front).
        buckets: The model's batch buckets (the largest bounds TensorRT's profile).
        cache_dir: Where TensorRT may cache engines; None = no cache.

    Returns:
        The provider's options ({} for one that needs none).
    """
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
