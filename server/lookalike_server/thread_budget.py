"""The thread budget: decoding, ONNX Runtime and batch workers sized together from the usable cores.

Left to their defaults, each pool takes every core: ONNX Runtime's intra-op
pool one thread per core, the decoding pool one per core too. On 2 cores that
is 4 busy threads fighting for 2 cores, and a request's decode waits behind
a batch's matrix multiplications (and the other way round). What the server
wants instead is a pipeline: one image decoding while the previous one runs.
So the cores are split once, at start-up, by :func:`thread_budget`:

* **Inference on a GPU** (CUDA or TensorRT first): the GPU does the work, so
  ONNX Runtime gets 1 intra-op thread (the few CPU kernels), one batch worker
  per model (a CUDA session runs one stream at a time), and decoding gets
  every core but one (at least 1).
* **Inference on the CPU, up to 4 cores**: 1 decoding thread, and one batch
  worker per core, each run on 1 intra-op thread. A run on one thread is the
  cheapest per image (on the shared 2-core machine, 14.5-16.8 CPU-ms per
  image with 2 intra-op threads against 13.0-15.2 with 1:
  ``benchmarks/thread_budget_cpu.py``, results in
  ``benchmarks/results/autotune-2026-12-07-shared/``), and runs on one
  thread each have no parallel region to stall when the scheduler hands their
  core to decoding for a while; so the threads may outnumber the cores
  (1 + 2 on 2 cores), and inference fills whatever time decoding leaves.
* **Inference on the CPU, more cores**: decoding gets a quarter of the cores,
  inference the rest, without oversubscription (intra-op parallel regions
  would stall). The inference cores are served by ``ceil(inference / 4)``
  batch workers running batches side by side on the same session, each with
  ``inference / workers`` intra-op threads: a small batch does not scale past
  about 4 intra-op threads, two runs side by side do. On 16 cores: 4
  decoding threads and 3 workers of 4.
* ONNX Runtime's inter-op pool is only used by its parallel executor, which
  the server does not use: 1 thread.

The cores are the ones this process may run on (``os.sched_getaffinity``:
a container's cpuset, ``taskset``), not the machine's. Each model has its
own session and batch workers with this budget; models are usually busy one
at a time. An explicit setting (``--models-intra-op-threads``...) wins over
its share; the others keep theirs, except that explicit intra-op threads
without explicit workers get as many workers as fill the inference cores.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

# A batch-1 MobileNet/ResNet run stops getting faster past about this many
# intra-op threads; more cores are better spent on a second run beside it.
INTRA_OP_PER_WORKER = 4
# Up to this many cores, every run is single-threaded and decoding shares the
# cores with them (see the module docstring).
SMALL_MACHINE_CORES = 4


@dataclass(frozen=True)
class ThreadBudget:
    """Threads for each pool, and why.

    Attributes:
        cores: Usable cores the budget was made for.
        preprocess_threads: Threads decoding and resizing images (shared by all models).
        intra_op_threads: ONNX Runtime intra-op threads of each session.
        inter_op_threads: ONNX Runtime inter-op threads of each session.
        batch_workers: Threads running batches of each model side by side.
        reason: One line saying how the numbers were reached.
    """

    cores: int
    preprocess_threads: int
    intra_op_threads: int
    inter_op_threads: int
    batch_workers: int
    reason: str


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_budget(
    cores: int,
    *,
    on_gpu: bool = False,
    preprocess_threads: int = 0,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    batch_workers: int = 0,
) -> ThreadBudget:
    """Splits ``cores`` between decoding and inference (see the module docstring).

    Args:
        cores: Usable cores (:func:`usable_cores`).
        on_gpu: The first execution provider is a GPU one.
        preprocess_threads: Explicit decoding threads; 0 = its share.
        intra_op_threads: Explicit ORT intra-op threads per session; 0 = its share.
        inter_op_threads: Explicit ORT inter-op threads per session; 0 = 1.
        batch_workers: Explicit batch workers per model; 0 = its share.

    Returns:
        The budget.
    """
    cores = max(1, cores)
    if on_gpu:
        decode, inference, workers, intra = max(1, cores - 1), 1, 1, 1
        why = f"{cores} cores, GPU inference: decoding {decode}, ORT 1 intra-op thread, 1 worker per session"
    elif cores <= SMALL_MACHINE_CORES:
        decode, inference, workers, intra = 1, cores, cores, 1
        why = (
            f"{cores} cores, CPU inference: {workers} worker(s) x 1 intra-op thread (the cheapest per image), "
            "1 decoding thread sharing the cores"
        )
    else:
        decode = max(1, cores // 4)
        inference = max(1, cores - decode)
        workers = math.ceil(inference / INTRA_OP_PER_WORKER)
        intra = max(1, inference // workers)
        why = (
            f"{cores} cores, CPU inference: decoding {decode} (a quarter), "
            f"inference {inference} = {workers} worker(s) x {intra} intra-op thread(s)"
        )
    if intra_op_threads and not batch_workers and not on_gpu:
        # Explicit intra-op threads: as many workers as fill the inference cores with them.
        workers = max(1, inference // intra_op_threads)
    explicit = []
    for name, value in (
        ("preprocess_threads", preprocess_threads),
        ("intra_op_threads", intra_op_threads),
        ("inter_op_threads", inter_op_threads),
        ("batch_workers", batch_workers),
    ):
        if value:
            explicit.append(f"{name}={value}")
    if explicit:
        why += f"; set by config: {', '.join(explicit)}"
    return ThreadBudget(
        cores=cores,
        preprocess_threads=preprocess_threads or decode,
        intra_op_threads=intra_op_threads or intra,
        inter_op_threads=inter_op_threads or 1,
        batch_workers=batch_workers or workers,
        reason=why,
    )
