"""Server assembly: ``build_server(config) -> (server, port)``.

Start-up order, and why:

1. The gRPC server is built and bound first, with the health service saying
   NOT_SERVING, so orchestrators can probe the process while models load (the
   ``liveness`` health name says SERVING from here to shutdown: the process answers).
2. :meth:`LookalikeServer.load` loads every model, warms every batch bucket,
   connects Milvus and Redis (creating collections with their index before any
   data), sweeps items a crash left half-written, then flips health to SERVING.
3. A monitor thread pings the stores; while one is unreachable health says
   NOT_SERVING and requests that need it get UNAVAILABLE (retriable).

Shutdown (:meth:`LookalikeServer.stop`, also on SIGTERM/SIGINT): health goes
NOT_SERVING, new calls are refused, in-flight calls get ``grace_s`` to finish,
then batchers drain and stores close.

The gRPC server is ``grpc.aio`` on an event loop of its own (a thread), so
the synchronous API here (``start``/``stop``/``wait``) works from plain code
and tests. Handlers are coroutines; blocking work runs on thread pools (see
``servicer.py``), so an idle stream costs no thread and health checks are
answered on the loop whatever the pools are doing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lookalike.v1 import lookalike_pb2
from lookalike_server import auth, lite_socket, tls
from lookalike_server.config import Config
from lookalike_server.embedder import Embedder
from lookalike_server.errors import ModelLoadError, ServiceError, ShuttingDown, Unavailable
from lookalike_server.execution_providers import usable_providers
from lookalike_server.fileperms import private_dir
from lookalike_server.models import OnnxModel
from lookalike_server.registry_reader import load_registry
from lookalike_server.service import LookalikeService
from lookalike_server.servicer import LookalikeServicer
from lookalike_server.thread_budget import ThreadBudget, cpu_limits, thread_budget
from lookalike_server.thread_names import name_os_thread

if TYPE_CHECKING:
    from lookalike_server.store.milvus import MilvusStore
    from lookalike_server.store.redis import RedisStore

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICE_NAME = lookalike_pb2.DESCRIPTOR.services_by_name["Lookalike"].full_name
LIVENESS_SERVICE = "liveness"
"""A health service name that says only "this process answers gRPC": SERVING from start to
shutdown, whatever the models and stores do. For a Kubernetes liveness probe, which must not
restart replicas because Milvus or Redis is away (``""`` and the service name say that)."""
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# At shutdown, new calls are refused with UNAVAILABLE for this long before the
# gRPC server stops. gRPC's stop resets calls that have reached the transport
# but not yet the servicer, and a client sees those as CANCELLED, which retry
# policies do not retry; while the servicer refuses, that backlog is answered
# UNAVAILABLE and clients move on. Shorter when grace_s is.
REFUSE_BEFORE_STOP_S = 0.25


def budget_for(config: Config) -> ThreadBudget:
    """The thread budget for this process's cores and first usable provider; explicit settings win."""
    on_gpu = usable_providers(config.models.providers)[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
    m = config.models
    limits = cpu_limits()
    budget = thread_budget(
        limits.usable,
        on_gpu=on_gpu,
        preprocess_threads=m.preprocess_threads,
        intra_op_threads=m.intra_op_threads,
        inter_op_threads=m.inter_op_threads,
        batch_workers=m.batch_workers,
        wide_session=m.wide_session,
        wide_intra_op_threads=m.wide_intra_op_threads,
    )
    return dataclasses.replace(budget, reason=f"{budget.reason}; cores: {limits.describe()}")


def load_models(config: Config, budget: ThreadBudget | None = None) -> dict[str, OnnxModel]:
    """Loads and warms every model in the registry, tuning each one's batching plan.

    A model marked ``optional`` that fails to load is logged and skipped; any
    other failure stops start-up with a message naming the model.

    Args:
        config: The server's configuration.
        budget: Threads for each session (default: :func:`budget_for`).

    Raises:
        ModelLoadError: A required model failed, or none loaded.
    """
    budget = budget or budget_for(config)
    specs = load_registry(config.models.registry, config.batching, config.models.only)
    cache_dir = Path(config.data_dir) / "cache"
    models: dict[str, OnnxModel] = {}
    for spec in specs:
        try:
            model = OnnxModel(
                spec,
                config.models.providers,
                budget.intra_op_threads,
                cache_dir,
                session_per_bucket=config.models.session_per_bucket,
                spin_wait=config.models.spin_wait,
                worker_nice=config.models.worker_nice,
                inter_op_threads=budget.inter_op_threads,
                io_binding=config.models.io_binding,
                wide_intra_op_threads=budget.wide_intra_op_threads,
                wide_session=config.models.wide_session,
                wide_spin_wait=config.models.wide_spin_wait,
            )
            took = model.warmup() if config.models.warmup else 0.0
        except ModelLoadError as exc:
            if spec.optional:
                log.error("skipping optional model: %s", exc)
                continue
            raise
        # The budget offered a wide session; the model's warm-up may have dropped it.
        model.threads = dataclasses.replace(
            budget,
            wide_intra_op_threads=model.wide_intra_op_threads,
            reason=budget.reason + (f"; wide session {model.wide_reason}" if model.wide_reason else ""),
        )
        if model.wide_reason:
            log.info("model %s: wide session %s", spec.name, model.wide_reason)
        plan = model.plan
        costs = ", ".join(f"{b}:{c / b:.2f}" for b, c in plan.costs_ms.items()) or "not measured"
        log.info(
            "model %s v%s: dim %d, providers %s, warm-up %.2fs; ms/image by bucket %s; buckets %s, "
            "max batch %d, max delay %.2f ms (%s)",
            spec.name,
            spec.version,
            spec.dim,
            model.providers,
            took,
            costs,
            list(plan.buckets),
            plan.max_batch_size,
            plan.max_delay_ms,
            plan.reason,
        )
        models[spec.name] = model
    if not models:
        raise ModelLoadError("no model could be loaded; see the errors above")
    return models


class LookalikeServer:
    """The running server: gRPC, health, the service and its resources.

    Args:
        config: Validated configuration.
    """

    def __init__(self, config: Config, *, interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        self.config = config
        self.service: LookalikeService | None = None
        self._draining = False
        self._stores_ok = True
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._monitor: threading.Thread | None = None
        self._milvus: MilvusStore | None = None
        self._redis: RedisStore | None = None
        self._embedder: Embedder | None = None
        self.metrics: Any = None
        self.metrics_port = 0
        # The aio server lives on this loop, in a thread of its own.
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._run_loop, name="grpc-aio", daemon=True)
        self._loop_thread.start()
        self.health = health.aio.HealthServicer()
        self.servicer = LookalikeServicer(self._get_service, config.limits, unary_workers=config.max_workers)
        # Token auth first, then whatever the caller adds (tests, plugins).
        self.interceptors = [*auth.interceptors(config.security), *interceptors]
        try:
            self.port = self._call(self._build())
        except BaseException:
            self._close_loop()
            raise

    def _run_loop(self) -> None:
        name_os_thread()
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs a coroutine on the server's loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _close_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    def credentials(self) -> grpc.ServerCredentials | None:
        """Server credentials, or None for plaintext: the one place TLS is decided."""
        # Reloading credentials: rotated certificate files are picked up
        # without a restart, and tls_client_ca makes client certificates mandatory.
        return tls.server_credentials(self.config.security)

    async def _build(self) -> int:
        """Creates and binds the aio server (on its loop); returns the port."""
        mb = self.config.max_message_mb * 1024 * 1024
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", mb),
            ("grpc.max_send_message_length", mb),
            ("grpc.so_reuseport", 0),
        ]
        if self.config.max_connection_age_s:
            # GOAWAY after this age. No max_connection_age_grace: gRPC's default is unlimited,
            # so what already runs on the connection is not cut. Clients re-resolve when
            # they reconnect.
            options.append(("grpc.max_connection_age_ms", int(self.config.max_connection_age_s * 1000)))
        self.grpc_server = grpc.aio.server(interceptors=self.interceptors, options=options)
        await self._set_health_async(_NOT_SERVING)
        await self.health.set(LIVENESS_SERVICE, _SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        self.grpc_server.add_generic_rpc_handlers((self.servicer.method_handlers(),))
        if self.config.reflection:
            reflection.enable_server_reflection(
                (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server
            )
        address = f"{self.config.host}:{self.config.port}"
        creds = self.credentials()
        port = (
            self.grpc_server.add_secure_port(address, creds)
            if creds is not None
            else self.grpc_server.add_insecure_port(address)
        )
        if not port:
            raise OSError(f"cannot bind {address}")
        return port

    # ---------------------------------------------------------- state --
    async def _set_health_async(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    def _set_health(self, status: int) -> None:
        if self._loop.is_running():
            self._call(self._set_health_async(status), timeout=10)

    def _get_service(self) -> LookalikeService:
        if self._draining:
            raise ShuttingDown("server is shutting down; retry on another replica")
        if self.service is None:
            raise Unavailable("server is starting: models are loading; retry shortly")
        return self.service

    # ------------------------------------------------------- lifecycle --
    def load(self) -> None:
        """Loads models and stores, then reports SERVING.

        Raises:
            ModelLoadError / ConfigError: Start-up cannot proceed.
            Unavailable: Milvus or Redis cannot be reached.
        """
        budget = budget_for(self.config)
        log.info(
            "threads: %d decoding, %d batch worker(s) per model, ORT %d intra-op / %d inter-op per session, "
            "wide session %d intra-op (%s)",
            budget.preprocess_threads,
            budget.batch_workers,
            budget.intra_op_threads,
            budget.inter_op_threads,
            budget.wide_intra_op_threads,
            budget.reason,
        )
        models = load_models(self.config, budget)
        self._embedder = Embedder(
            models,
            self.config.limits,
            budget.preprocess_threads,
            self.config.models.worker_nice,
            batch_workers=budget.batch_workers,
        )
        if self.config.stores:
            from lookalike_server.store.milvus import MilvusStore
            from lookalike_server.store.redis import RedisStore

            private_dir(self.config.data_dir)  # 0700; the umask keeps files 0600
            lite_socket.install()  # Milvus Lite on a 0600 unix socket, not a 127.0.0.1 TCP port
            self._redis = RedisStore(self.config.redis, self.config.data_dir)
            self._milvus = MilvusStore(self.config.milvus, self.config.milvus_uri)
        self.service = LookalikeService(self.config, self._embedder, self._milvus, self._redis)
        try:
            self.service.repair(older_than_s=0.0)
        except ServiceError as exc:
            log.warning("start-up repair sweep failed: %s", exc)
        self._set_health(_SERVING)
        if self.config.metrics_port >= 0:
            from lookalike_server.metrics import PrometheusExporter

            embedder = self._embedder
            self.metrics = PrometheusExporter(
                embedder.totals,
                self.servicer.counter.totals,
                lambda: self._stores_ok if self.config.stores else None,
                admission=embedder.admission.stats,
                open_streams=lambda: self.servicer.open_streams,
            )
            self.metrics_port = self.metrics.start(
                self.config.metrics_host, self.config.metrics_port, self.config.security
            )
            self.servicer.observe = self.metrics.observe
        if self.config.stores:
            self._monitor = threading.Thread(target=self._watch_stores, name="store-monitor", daemon=True)
            self._monitor.start()
        log.info("serving lookalike on %s:%d (models: %s)", self.config.host, self.port, sorted(models))

    def _watch_stores(self) -> None:
        """Health follows the stores; stale pending items are swept about every minute."""
        ticks = 0
        sweep_every = max(1, round(60 / self.config.health_interval_s))
        while not self._stop.wait(self.config.health_interval_s):
            assert self.service is not None
            try:
                self.service.check_stores()
                ok = True
            except ServiceError as exc:
                ok = False
                if self._stores_ok:
                    log.error("store unreachable, health NOT_SERVING: %s", exc)
            if ok and not self._stores_ok:
                log.info("stores reachable again, health SERVING")
            if ok != self._stores_ok and not self._draining:
                self._set_health(_SERVING if ok else _NOT_SERVING)
            self._stores_ok = ok
            ticks += 1
            if ok and ticks % sweep_every == 0:
                try:
                    self.service.repair(older_than_s=300.0)
                except ServiceError as exc:
                    log.warning("repair sweep failed: %s", exc)

    def start(self) -> None:
        """Starts accepting calls (health stays NOT_SERVING until :meth:`load`)."""
        self._call(self.grpc_server.start())

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, drain in-flight calls, release resources.

        Args:
            grace: Seconds in-flight calls get; default ``config.grace_s``.
        """
        if self._stopped.is_set() or self._stop.is_set():
            self._stopped.wait(max(30.0, (grace or 0) + 30))
            return
        grace = self.config.grace_s if grace is None else grace
        self._stop.set()
        try:
            if self._loop.is_running():
                self._call(self.health.enter_graceful_shutdown(), timeout=10)
            if self.config.shutdown_delay_s and grace:
                # Keep serving while load balancers notice NOT_SERVING.
                time.sleep(self.config.shutdown_delay_s)
            self._draining = True
            if self._loop.is_running():
                if grace:
                    time.sleep(min(REFUSE_BEFORE_STOP_S, grace))
                self._call(self.grpc_server.stop(grace))
            self.servicer.close()
            if self.metrics is not None:
                self.metrics.stop()
            if self._embedder is not None:
                self._embedder.close(timeout=grace)
            if self.service is not None:
                self.service.close()
            for store in (self._milvus, self._redis):
                if store is not None:
                    try:
                        store.close()
                    except Exception:
                        log.exception("closing %s failed", type(store).__name__)
            self._close_loop()
            log.info("stopped")
        finally:
            self._stopped.set()

    def wait(self) -> None:
        """Blocks until the server has stopped."""
        self._stopped.wait()


def build_server(config: Config, *, load: bool = True) -> tuple[LookalikeServer, int]:
    """Builds the server bound to ``config.host:config.port`` (0 = any free port).

    Args:
        config: The configuration.
        load: Load models and stores now (tests); ``False`` lets the caller
            :meth:`~LookalikeServer.start` first so health answers during load.

    Returns:
        The server (not started) and the port it is bound to.
    """
    server = LookalikeServer(config)
    if load:
        try:
            server.load()
        except BaseException:
            server.stop(0)
            raise
    return server, server.port
