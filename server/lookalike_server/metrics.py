"""Prometheus metrics on an HTTP port of their own (``--metrics-port``).

The HTTP server binds ``--metrics-host`` (127.0.0.1 by default, whatever the
gRPC host is). When bearer tokens are configured, a scrape needs one with the
``admin`` scope (``Authorization: Bearer …``; 401 without a valid token, 403
without the scope), decided by :func:`lookalike_server.auth.check` like every
RPC. ``security.metrics_tls`` serves HTTPS with the gRPC certificate (client
certificates required when ``tls_client_ca`` is set), re-read when the files
change, as for gRPC.

Read at scrape time from the counters the server keeps anyway (batchers,
request counter), so serving requests costs nothing extra but one histogram
observation per call. Every counter is monotonic: ``GetStats(reset=True)``
only moves that RPC's window, never what Prometheus sees.

A private registry per server keeps several servers in one process (tests)
from colliding in prometheus_client's global one.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from lookalike_server.batching import BatcherStats

if TYPE_CHECKING:
    from lookalike_server.config import SecurityConfig

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
        alone = CounterMetricFamily(
            "lookalike_alone_batches",
            "Batches run alone (no other running, nothing queued) on the model's wide session",
            labels=["model"],
        )
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
            alone.add_metric([model], st.alone_batches)
            for reason in ("rejected", "expired", "cancelled"):
                dropped.add_metric([model, reason], getattr(st, reason))
            queue_s.add_metric([model], st.queue_s_sum)
            run_s.add_metric([model], st.run_s_sum)
            depth.add_metric([model], st.queue_depth)
        yield from (batches, items, alone, dropped, queue_s, run_s, depth)

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

    def start(self, host: str, port: int, security: SecurityConfig | None = None) -> int:
        """Serves /metrics on ``host:port`` (0 = any free port); returns the port.

        Args:
            host: Address to bind.
            port: Port to bind; 0 = any free one.
            security: Token and TLS settings; None = plain HTTP, no token.

        Raises:
            ConfigError: The token file or TLS files are invalid.
        """
        app: Callable[..., Iterable[bytes]] = make_wsgi_app(self.registry)
        scheme = "http"
        if security is not None and security.metrics_auth:
            from lookalike_server.auth import TokenStore

            store = TokenStore.from_config(security)
            if store.enabled:
                app = _token_required(app, store, security)
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        server_class: type[_MetricsServer] = _MetricsServer
        if security is not None and security.metrics_tls:
            server_class, scheme = _tls_server_class(security), "https"
        server_class = type("_BoundMetricsServer", (server_class,), {"address_family": family})
        server = make_server(host, port, app, server_class, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
        self._http = server
        self.port = server.server_port
        log.info("Prometheus metrics on %s://%s:%d/metrics", scheme, host, self.port)
        return self.port

    def stop(self) -> None:
        """Stops the HTTP server."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _MetricsServer(WSGIServer):
    """A thread per connection, so one slow client (or TLS handshake) blocks no scrape."""

    daemon_threads = True

    def process_request(self, request: Any, client_address: Any) -> None:
        threading.Thread(target=self._serve_one, args=(request, client_address), daemon=True).start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except (OSError, ssl.SSLError) as exc:
            log.debug("metrics connection from %s failed: %s", client_address[0], exc)
        finally:
            self.shutdown_request(request)


def _tls_server_class(security: SecurityConfig) -> type[_MetricsServer]:
    """A server class whose connections speak TLS with the current certificate files."""
    from lookalike_server.tls import CertificateFiles, CertificateReloader

    reloader = CertificateReloader(security)

    def context(files: CertificateFiles) -> ssl.SSLContext:
        import tempfile
        from pathlib import Path

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="lookalike-tls-") as tmp:
            cert, key = Path(tmp) / "c", Path(tmp) / "k"
            cert.write_bytes(files.cert)
            key.touch(0o600)
            key.write_bytes(files.key)
            ctx.load_cert_chain(cert, key)
        if files.client_ca is not None:
            ctx.load_verify_locations(cadata=files.client_ca.decode("ascii"))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    state = {"ctx": context(reloader.current)}

    class _TLSMetricsServer(_MetricsServer):
        def get_request(self) -> tuple[Any, Any]:
            sock, addr = super().get_request()
            files = reloader.poll()  # new certificate files → a new context for new connections
            if files is not None:
                state["ctx"] = context(files)
            # The handshake happens on first read, in the connection's own thread.
            return state["ctx"].wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    return _TLSMetricsServer


def _token_required(app: Callable[..., Iterable[bytes]], store: Any, security: SecurityConfig) -> Callable[..., Any]:
    """Wraps the WSGI app: a scrape needs a bearer token with the admin scope."""
    from lookalike_server.auth import check

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        denial = check(store, security, "metrics", environ.get("HTTP_AUTHORIZATION"))
        if denial is None:
            return app(environ, start_response)
        unauthenticated = denial.code == grpc.StatusCode.UNAUTHENTICATED
        status = "401 Unauthorized" if unauthenticated else "403 Forbidden"
        message = (
            "/metrics needs a token with the admin scope: send 'Authorization: Bearer <token>'"
            if unauthenticated
            else denial.message
        )
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        if unauthenticated:
            headers.append(("WWW-Authenticate", 'Bearer realm="lookalike-metrics"'))
        start_response(status, headers)
        return [message.encode() + b"\n"]

    return guarded
