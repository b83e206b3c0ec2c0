"""``lookalike bench``: a load generator for a running Lookalike server.

What ``ghz`` or Triton's ``perf_analyzer`` would give, for this service:

* **Closed loop** (``--concurrency 1,4,16``): N callers, each sending its next
  request as soon as the previous one answered. Measures the throughput a
  given concurrency reaches and the latency it costs.
* **Open loop** (``--rate 50,100``): requests arrive on a Poisson schedule
  regardless of how the server copes. Latency is measured from each request's
  *scheduled* send time, so when the server (or this client) falls behind the
  queueing shows up in the figures instead of silently lowering the offered
  load (coordinated omission).
* Unary calls or streams (``--stream``: SearchStream / InsertStream, N in
  flight on one stream); methods ``embed``, ``search`` (one model or several
  side by side) and ``insert``; real photos as payload (``--images DIR``),
  optionally resized (``--image-size``).

Every load point runs a warm-up (discarded), then a measurement window. Before
the window the server's counters are zeroed (``GetStats(reset=True)``); after
it they are read back, giving the batch-size histogram the micro-batcher
produced under exactly that load. Each response's ``ServerTiming`` gives the
server's own breakdown (queue wait, preprocessing, inference, Milvus, Redis).

Output: ``results.json`` (everything) under ``--out``, default
``./out/bench/<name>``. Report writing, plots and the full machine profile are
not part of the thin client: ``python benchmarks/bench_report.py DIR`` (in a
checkout, with the ``bench`` extra for plots) turns ``results.json`` into
``report.md`` and PNGs.

The load generator is one asyncio loop over ``grpc.aio``: a request in flight
is a coroutine, not a thread, so 64 concurrent callers cost next to nothing on
a 2-core machine where the client shares the CPUs with the server it measures.
Against a faster server that one loop becomes the limit (each point reports
its ``client_cores``); ``--processes N`` spreads the load over N processes.
This package depends only on the client's own dependencies; Pillow (for
``--image-size``) is optional. Modules: :mod:`~lookalike.bench.stats`
(statistics), :mod:`~lookalike.bench.load` (payload and drivers),
:mod:`~lookalike.bench.procs` (load from several processes),
:mod:`~lookalike.bench.runner` (spec, series, CLI).
"""

from lookalike.bench.load import Driver, LoadPoint, RequestFactory, find_image_dir, load_images
from lookalike.bench.runner import (
    BenchSpec,
    add_arguments,
    format_point,
    machine_summary,
    main,
    new_report,
    run,
    run_series,
    spec_from_args,
)
from lookalike.bench.runner import _float_list as _float_list
from lookalike.bench.runner import _int_list as _int_list
from lookalike.bench.stats import (
    DEFAULT_IMAGE_DIRS,
    DEFAULT_MAX_IN_FLIGHT,
    LATENCY_KEYS,
    MAX_MESSAGE_BYTES,
    METHODS,
    PERCENTILES,
    TIMING_FIELDS,
    BenchError,
    TimingAccumulator,
    WindowRecorder,
    histogram_mean,
    items_weighted_mean,
    latency_summary,
    merge_histograms,
    percentile,
    stats_summary,
)

__all__ = [
    "DEFAULT_IMAGE_DIRS",
    "DEFAULT_MAX_IN_FLIGHT",
    "LATENCY_KEYS",
    "MAX_MESSAGE_BYTES",
    "METHODS",
    "PERCENTILES",
    "TIMING_FIELDS",
    "BenchError",
    "BenchSpec",
    "Driver",
    "LoadPoint",
    "RequestFactory",
    "TimingAccumulator",
    "WindowRecorder",
    "add_arguments",
    "find_image_dir",
    "format_point",
    "histogram_mean",
    "items_weighted_mean",
    "latency_summary",
    "load_images",
    "machine_summary",
    "main",
    "merge_histograms",
    "new_report",
    "percentile",
    "run",
    "run_series",
    "spec_from_args",
    "stats_summary",
]
