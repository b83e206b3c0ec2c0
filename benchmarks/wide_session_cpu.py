"""How a lone image and a loaded server fare under each way of giving inference the cores.

Issue 12's c=1 target fails when every batch worker runs on one intra-op
thread: a lone request's inference then uses one core of several. Three ways
to let it use them all, measured here in one process, one after the other,
with the server's own preprocessing and ONNX Runtime settings (spinning off):

* ``narrow``: today's split under load, one session of 1 intra-op thread shared
  by the workers (the baseline);
* ``wide-alone`` (candidate a, built): ``narrow`` under load, plus a second
  session of ``cores`` intra-op threads for a run that is alone, its threads
  spinning during a run and stopping when it returns (``wide (spin, stop)``;
  the same session without spinning is ``wide (no spin)``);
* ``wide-shared`` (candidate b): one session of ``cores`` intra-op threads
  shared by all workers, alone and under load;
* ``global-pool`` (candidate c): sessions on ONNX Runtime's global thread pool
  of ``cores`` threads.

Two figures per way: the median of a lone batch-1 run (the c=1 case: runs
``--gap-ms`` apart, as requests arriving one at a time are; the sessions'
runs alternate so a neighbour's burst hits all), and the
images/s of a pipeline of 1 decoding thread feeding ``workers`` threads that
run batch 1 (the c=32 case of the server, without gRPC). Repeated
``--rounds`` times, the ways interleaved, because on a shared machine only
ratios within one round mean anything.

Usage::

    python benchmarks/wide_session_cpu.py --rounds 3 --out /tmp/wide.json
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]

from lookalike import bench  # noqa: E402


def session(path: Path, intra: int, global_pool: bool = False, spin_then_stop: bool = False) -> Any:
    """An ORT session as the server makes one (spinning off, or on and stopped after each run), or a global-pool one."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_then_stop else "0")
    if spin_then_stop:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.log_severity_level = 3
    if global_pool:
        opts.use_per_session_threads = False
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def lone_ms(sessions: list[Any], name: str, x: np.ndarray, gap_s: float, runs: int = 40) -> list[float]:
    """Median ms of a lone run on each session, runs ``gap_s`` apart, alternating between the sessions."""
    for s in sessions:
        for _ in range(3):
            s.run(None, {name: x})
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, s in enumerate(sessions):
            t0 = time.perf_counter()
            s.run(None, {name: x})
            times[i].append((time.perf_counter() - t0) * 1e3)
            time.sleep(gap_s)
    return [statistics.median(t) for t in times]


def pipeline_ips(sess: Any, name: str, spec: Any, images: list[bytes], workers: int, seconds: float) -> float:
    """Images/s of 1 decoding thread feeding ``workers`` threads running batch 1 on ``sess``."""
    from lookalike_server.preprocess import preprocess

    q: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=4 * workers)
    stop = time.perf_counter() + seconds
    done = [0]
    lock = threading.Lock()

    def decode() -> None:
        i = 0
        while time.perf_counter() < stop:
            q.put(preprocess(images[i % len(images)], spec, max_bytes=1 << 26, max_pixels=1 << 28)[None])
            i += 1
        for _ in range(workers):
            q.put(None)

    def work() -> None:
        while (x := q.get()) is not None:
            sess.run(None, {name: x})
            with lock:
                done[0] += 1

    threads = [threading.Thread(target=decode)] + [threading.Thread(target=work) for _ in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """Runs the rounds and prints one JSON line per round."""
    from lookalike_server.config import BatchingConfig
    from lookalike_server.registry_reader import load_registry
    from lookalike_server.thread_budget import cpu_limits

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--registry", default=str(REPO / "models" / "models.toml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="pipeline window per way and round")
    parser.add_argument("--image-size", type=int, default=640)
    parser.add_argument("--gap-ms", type=float, default=5.0, help="pause between lone runs")
    parser.add_argument("--global-pool", action="store_true", help="also candidate c (slow where the box is busy)")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    (spec,) = load_registry(args.registry, BatchingConfig(), only=[args.model])
    limits = cpu_limits()
    cores = limits.usable
    workers = cores  # the thread budget's workers on up to 4 cores
    images = bench.load_images(bench.find_image_dir(None), args.image_size)
    name = spec.input or "input"
    x = np.zeros((1, *spec.preprocess.shape), dtype=np.float32)
    narrow, wide = session(spec.path, 1), session(spec.path, cores)
    built = session(spec.path, cores, spin_then_stop=True)
    data = (spec.preprocess, images, workers, args.seconds)
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        lone = lone_ms([narrow, wide, built], name, x, args.gap_ms / 1e3)
        row: dict[str, Any] = {
            "round": r + 1,
            "loadavg_1": round(os.getloadavg()[0], 2),
            "lone_ms": {
                k: round(v, 2) for k, v in zip(("narrow", "wide (no spin)", "wide (spin, stop)"), lone, strict=True)
            },
            # wide-alone runs the narrow session under load: its pipeline is narrow's.
            "pipeline_img_s": {
                "narrow (and wide-alone)": round(pipeline_ips(narrow, name, *data), 1),
                "wide-shared": round(pipeline_ips(wide, name, *data), 1),
            },
        }
        print(json.dumps(row), flush=True)
        rounds.append(row)
    result: dict[str, Any] = {"what": __doc__.split("\n\n")[0], "cores": limits.describe(), "rounds": rounds}
    if args.global_pool:
        # After this call every later session in the process could use the
        # global pool, so it runs last and once.
        import onnxruntime as ort

        ort.capi._pybind_state.set_global_thread_pool_sizes(cores, 1)
        g = session(spec.path, 0, global_pool=True)
        result["global_pool"] = {
            "lone_ms": round(lone_ms([g], name, x, args.gap_ms / 1e3)[0], 2),
            "pipeline_img_s": round(pipeline_ips(g, name, *data), 1),
        }
        print(json.dumps({"global_pool": result["global_pool"]}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
