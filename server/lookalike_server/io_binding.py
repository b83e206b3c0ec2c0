"""Running an ONNX Runtime session through IO bindings with reusable buffers.

A plain ``session.run`` with numpy inputs makes ONNX Runtime, on a GPU
provider, allocate a device input, copy the batch to it, allocate a device
output and copy that back, on every run. :class:`IoBindingRunner` keeps one
input and one output ``OrtValue`` per batch shape on the session's device and
reuses them: each run copies the batch into the bound input
(``OrtValue.update_inplace``), runs with ``run_with_iobinding``, and copies the
output back. The output buffer is the one ONNX Runtime allocated on the first
run of that shape, bound again for every later run, so the output's shape
(a feature map or a vector) need not be known in advance.

On the CPU provider a plain run wraps the numpy batch without a copy, so the
binding adds one; it is offered there so that tests exercise the same code
(``models.io_binding`` is off by default). Whether it pays on a GPU is
measured by ``benchmarks/gpu_sweep.sh``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Providers whose sessions keep their tensors in CUDA device memory.
CUDA_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


@dataclass
class _Bound:
    """One binding and the buffers it owns, for one batch shape."""

    binding: Any
    input: Any
    output: Any | None = None  # allocated by ONNX Runtime on the first run, then reused


class IoBindingRunner:
    """Runs batches on one session through bindings whose buffers are reused.

    Safe to call from several threads at once (the batcher may run batches of
    one model side by side): a binding is taken from a pool for the length of
    a run, and a second concurrent run of the same shape gets its own.

    Args:
        session: An ``onnxruntime.InferenceSession``.
        input_name: The graph input fed.
        output_name: The graph output read.
        provider: The session's first provider; a CUDA/TensorRT session
            keeps its buffers on ``cuda:device_id``, any other on the CPU.
        device_id: The CUDA device the session runs on.
    """

    def __init__(self, session: Any, input_name: str, output_name: str, provider: str, device_id: int = 0) -> None:
        self._session = session
        self._input_name = input_name
        self._output_name = output_name
        self.device_type = "cuda" if provider in CUDA_PROVIDERS else "cpu"
        self.device_id = device_id if self.device_type == "cuda" else 0
        self._free: dict[tuple[tuple[int, ...], str], list[_Bound]] = {}
        self._lock = threading.Lock()
        self.buffers_made = 0  # bindings created (tests: reuse keeps it at one per shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Runs one batch; returns the output as a host array the caller owns.

        Args:
            x: The batch, C-contiguous, of the graph input's dtype.
        """
        key = (tuple(x.shape), x.dtype.str)
        bound = self._take(key, x)
        try:
            bound.input.update_inplace(np.ascontiguousarray(x))
            self._session.run_with_iobinding(bound.binding)
            if bound.output is None:
                # The first run of this shape: keep what ONNX Runtime allocated
                # and bind that very buffer for every later run.
                bound.output = bound.binding.get_outputs()[0]
                bound.binding.bind_ortvalue_output(self._output_name, bound.output)
            # ORT's documented way off the device; then a copy of our own, in
            # case a CPU buffer comes back as a view: the next run of this
            # shape overwrites it.
            return np.array(bound.binding.copy_outputs_to_cpu()[0], copy=True)
        finally:
            with self._lock:
                self._free.setdefault(key, []).append(bound)

    def _take(self, key: tuple[tuple[int, ...], str], x: np.ndarray) -> _Bound:
        """A free binding for this shape, or a new one with its own buffers."""
        with self._lock:
            pool = self._free.get(key)
            if pool:
                return pool.pop()
            self.buffers_made += 1
        import onnxruntime as ort

        value = ort.OrtValue.ortvalue_from_shape_and_type(list(x.shape), x.dtype, self.device_type, self.device_id)
        binding = self._session.io_binding()
        binding.bind_ortvalue_input(self._input_name, value)
        binding.bind_output(self._output_name, self.device_type, self.device_id)
        return _Bound(binding, value)
