"""Prometheus metrics on an HTTP port of their own (``--metrics-port``).

Read at scrape time from the counters the server keeps anyway (batchers,
request counter), so serving requests costs nothing extra but one histogram
observation per call. Every counter is monotonic: ``GetStats(reset=True)``
only moves that RPC's window, never what Prometheus sees.

A private registry per server keeps several servers in one process (tests)
from colliding in prometheus_client's global one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lookalike_server.batching import BatcherStats

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class _ServerCollector(Collector):
    """Turns the server's own counters into metric families at scrape time."""

    def __init__(
        self,
        batchers: Callable[[], dict[str, BatcherStats]],
        requests: Callable[[], dict[str, int]],
        stores_up: Callable[[], bool | None],
        admission: Callable[[], Any] | None = None,
        open_streams: Callable[[], int] | None = None,
    ) -> None:
        self._batchers = batchers
        self._requests = requests
        self._stores_up = stores_up
        self._admission = admission
        self._open_streams = open_streams

    def collect(self) -> Iterator[Any]:
        req = CounterMetricFamily(
            "lookalike_requests", "Finished RPCs by method and status code", labels=["method", "code"]
        )
        for key, n in sorted(self._requests().items()):
            method, _, code = key.partition(":")
            req.add_metric([method, code], n)
        yield req

        stats = self._batchers()
        batches = CounterMetricFamily(
            "lookalike_batches", "Inference batches run, by model and real batch size", labels=["model", "size"]
        )
        items = CounterMetricFamily("lookalike_batch_items", "Images run through the model", labels=["model"])
        dropped = CounterMetricFamily(
            "lookalike_dropped_items",
            "Images not run: queue full (rejected), deadline passed (expired), caller left (cancelled)",
            labels=["model", "reason"],
        )
        queue_s = CounterMetricFamily(
            "lookalike_queue_seconds", "Total time images waited in the batcher queue", labels=["model"]
        )
        run_s = CounterMetricFamily("lookalike_inference_seconds", "Total time spent in batch runs", labels=["model"])
        depth = GaugeMetricFamily("lookalike_queue_depth", "Images waiting in the batcher now", labels=["model"])
        for model, st in sorted(stats.items()):
            for size, n in sorted(st.batch_sizes.items()):
                batches.add_metric([model, str(size)], n)
            items.add_metric([model], st.items)
            for reason in ("rejected", "expired", "cancelled"):
                dropped.add_metric([model, reason], getattr(st, reason))
            queue_s.add_metric([model], st.queue_s_sum)
            run_s.add_metric([model], st.run_s_sum)
            depth.add_metric([model], st.queue_depth)
        yield from (batches, items, dropped, queue_s, run_s, depth)

        if self._admission is not None and (adm := self._admission()) is not None:
            refused = CounterMetricFamily(
                "lookalike_admission_rejected",
                "Calls refused at the front door (RESOURCE_EXHAUSTED, before decoding), by budget",
                labels=["budget"],
            )
            for budget, n in sorted(adm.rejected.items()):
                refused.add_metric([budget], n)
            yield refused
            yield CounterMetricFamily(
                "lookalike_admission_admitted", "Calls admitted at the front door", value=adm.admitted
            )
            yield GaugeMetricFamily(
                "lookalike_inflight_images", "Images admitted and not yet finished", value=adm.inflight_images
            )
            yield GaugeMetricFamily(
                "lookalike_inflight_pixels", "Decoded pixels admitted and not yet finished", value=adm.inflight_pixels
            )
        if self._open_streams is not None:
            yield GaugeMetricFamily(
                "lookalike_open_streams", "InsertStream/SearchStream calls open now", value=self._open_streams()
            )

        up = self._stores_up()
        if up is not None:
            yield GaugeMetricFamily("lookalike_stores_up", "1 while Milvus and Redis answer pings", value=int(up))


class PrometheusExporter:
    """Owns the registry, the latency histogram and the /metrics HTTP server.

    Args:
        batchers: Returns each batcher's monotonic totals.
        requests: Returns ``"Method:CODE" -> count`` totals.
        stores_up: Returns whether the stores answer (None: no stores).
        admission: Returns the front door's ``AdmissionStats`` (optional).
        open_streams: Returns the number of open streams (optional).
    """

    def __init__(
        self,
        batchers: Callable[[], dict[str, BatcherStats]],
        requests: Callable[[], dict[str, int]],
        stores_up: Callable[[], bool | None],
        admission: Callable[[], Any] | None = None,
        open_streams: Callable[[], int] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_ServerCollector(batchers, requests, stores_up, admission, open_streams))
        self._latency = Histogram(
            "lookalike_request_duration_seconds",
            "Server-side duration of unary RPCs",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._http: Any = None
        self.port = 0

    def observe(self, method: str, seconds: float) -> None:
        """Records one unary call's duration."""
        self._latency.labels(method).observe(seconds)

    def start(self, host: str, port: int) -> int:
        """Serves /metrics on ``host:port`` (0 = any free port); returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        self.port = server.server_port
        log.info("Prometheus metrics on http://%s:%d/metrics", host, self.port)
        return self.port

    def stop(self) -> None:
        """Stops the HTTP server."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
