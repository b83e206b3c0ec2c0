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
* **A wide session for lone requests** (CPU only): the split above is right
  under load, but a request that arrives alone then runs on one worker's
  intra-op threads (1 on a small machine) while the other cores idle. So each
  model gets a second session with ``wide_intra_op_threads`` = every usable
  core, and a batch runs on it when it is the only work: no other batch
  running, nothing queued and no image on its way (the batcher's "alone",
  :class:`lookalike_server.batching.MicroBatcher`). Under load batches run on
  the narrow session as before. Measured on the shared 2-core machine
  (``benchmarks/wide_session_cpu.py``, lone runs 5 ms apart): one image on
  2 intra-op threads that spin during the run took 2.3-3.2 ms against
  4.0-4.4 ms on 1, while one session of 2 intra-op threads shared by both
  workers (0.76-1.34x the narrow pipeline's img/s from round to round), or
  ORT's global thread pool, do not keep the throughput under load. In
  ``auto`` the model drops the wide session only where its warm-up finds the
  narrow one 25% faster (a neighbour holding the other core;
  :data:`lookalike_server.models.WIDE_DROP_GAIN`); ``wide_session = "off"``
  makes none, ``"on"`` keeps it whatever the measurement.

The cores are the ones this process may run on (``os.sched_getaffinity``:
a container's cpuset, ``taskset``), capped by a cgroup CPU quota rounded up
(``docker run --cpus 1.5``: 2), not the machine's (:func:`cpu_limits`). Each model has its
own session and batch workers with this budget; models are usually busy one
at a time. An explicit setting (``--models-intra-op-threads``...) wins over
its share; the others keep theirs, except that explicit intra-op threads
without explicit workers get as many workers as fill the inference cores.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

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
        wide_intra_op_threads: Intra-op threads of each model's wide session,
            used for batches that run alone; 0 = no wide session.
    """

    cores: int
    preprocess_threads: int
    intra_op_threads: int
    inter_op_threads: int
    batch_workers: int
    reason: str
    wide_intra_op_threads: int = 0


@dataclass(frozen=True)
class CpuLimits:
    """The cores this process may use, and what limited them.

    Attributes:
        machine: Logical cores of the machine (``os.cpu_count``).
        affinity: Cores in this process's CPU affinity (a container's cpuset,
            ``taskset``), sorted; empty where the platform cannot tell.
        quota: CPU time allowed per unit of wall time by a cgroup CPU quota
            (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us / cpu.cfs_period_us``
            in v1), e.g. 1.5; None = no quota.
        usable: Cores to size pools for: the affinity's count, capped by the
            quota rounded up (a 1.5-CPU quota can keep 2 threads busy part
            of the time), at least 1.
    """

    machine: int
    affinity: tuple[int, ...]
    quota: float | None
    usable: int

    def describe(self) -> str:
        """One line, e.g. ``"2 usable of 8 (affinity 0-1; no CPU quota)"``."""
        aff = _ranges(self.affinity) if self.affinity else "unknown"
        quota = "no CPU quota" if self.quota is None else f"cgroup CPU quota {self.quota:g}"
        return f"{self.usable} usable of {self.machine} (affinity {aff}; {quota})"


def _ranges(cpus: tuple[int, ...]) -> str:
    """``(0, 1, 2, 5)`` → ``"0-2,5"`` (taskset's notation)."""
    out: list[str] = []
    start = prev = cpus[0]
    for c in (*cpus[1:], None):
        if c is not None and c == prev + 1:
            prev = c
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(out)


def cgroup_cpu_quota(
    root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> float | None:
    """The tightest cgroup CPU quota over this process's cgroup and its parents, in CPUs; None = none.

    Reads cgroup v2 (``cpu.max``: ``"max 100000"`` or ``"150000 100000"``)
    and v1 (``cpu/cpu.cfs_quota_us``, ``-1`` = none, over
    ``cpu.cfs_period_us``). Inside a container the process's cgroup is
    usually the namespace root, whose files are at ``root`` itself.
    """
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            base, read = root, _v2_quota
        elif "cpu" in controllers.split(","):
            base = next((root / d for d in ("cpu,cpuacct", "cpu", "cpuacct,cpu") if (root / d).is_dir()), root / "cpu")
            read = _v1_quota
        else:
            continue
        parts = [p for p in path.split("/") if p]
        # From the process's own cgroup up to the root: every level's quota applies.
        for depth in range(len(parts), -1, -1):
            quota = read(base.joinpath(*parts[:depth]))
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def _v2_quota(directory: Path) -> float | None:
    try:
        limit, _, period = (directory / "cpu.max").read_text().strip().partition(" ")
    except OSError:
        return None
    if limit == "max" or not period:
        return None
    return int(limit) / int(period)


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def cpu_limits() -> CpuLimits:
    """This process's :class:`CpuLimits`: affinity (Linux), cgroup quota, machine count."""
    machine = max(1, os.cpu_count() or 1)
    try:
        affinity = tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        affinity = ()
    quota = cgroup_cpu_quota()
    usable = len(affinity) or machine
    if quota is not None:
        usable = min(usable, math.ceil(quota - 1e-9))
    return CpuLimits(machine=machine, affinity=affinity, quota=quota, usable=max(1, usable))


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, capped by a cgroup CPU quota), at least 1."""
    return cpu_limits().usable


def thread_budget(
    cores: int,
    *,
    on_gpu: bool = False,
    preprocess_threads: int = 0,
    intra_op_threads: int = 0,
    inter_op_threads: int = 0,
    batch_workers: int = 0,
    wide_session: str = "auto",
    wide_intra_op_threads: int = 0,
) -> ThreadBudget:
    """Splits ``cores`` between decoding and inference (see the module docstring).

    Args:
        cores: Usable cores (:func:`usable_cores`).
        on_gpu: The first execution provider is a GPU one.
        preprocess_threads: Explicit decoding threads; 0 = its share.
        intra_op_threads: Explicit ORT intra-op threads per session; 0 = its share.
        inter_op_threads: Explicit ORT inter-op threads per session; 0 = 1.
        batch_workers: Explicit batch workers per model; 0 = its share.
        wide_session: "auto" (a wide session where it has more threads than a
            worker), "on" (always, on the CPU) or "off".
        wide_intra_op_threads: Explicit intra-op threads of the wide session; 0 = ``cores``.

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
    intra = intra_op_threads or intra
    wide = wide_intra_op_threads or cores
    if on_gpu:
        wide = 0  # the GPU runs the batch; more CPU threads would not speed it
    elif wide_session == "off":
        wide = 0
        why += "; no wide session (off by config)"
    elif wide_session == "auto" and wide <= intra:
        wide = 0
        why += f"; no wide session (a worker already has {intra} intra-op thread(s))"
    else:
        why += f"; a wide session of {wide} intra-op thread(s) offered for batches running alone"
    return ThreadBudget(
        cores=cores,
        preprocess_threads=preprocess_threads or decode,
        intra_op_threads=intra,
        inter_op_threads=inter_op_threads or 1,
        batch_workers=batch_workers or workers,
        reason=why,
        wide_intra_op_threads=wide,
    )
