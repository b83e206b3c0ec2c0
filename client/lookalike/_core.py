"""What the sync and async clients share (httpx ``_client.py`` style): one method body, not two.

:class:`BaseClient` holds the channel settings (message sizes, the retry service config,
credentials) and turns each call's arguments into a :class:`PreparedCall`: the stub method to
invoke, the request message and the converter for the answer. The shells in
:mod:`lookalike.client` (blocking) and :mod:`lookalike.aio` (``asyncio``) only do the I/O:
``call.convert(stub_method(call.request, timeout=..., metadata=...))``, with or without
``await``.

The channel settings themselves (message sizes, :class:`~lookalike.channel.RetryPolicy`,
balancing over several replicas) are in :mod:`lookalike.channel` and
:mod:`lookalike.targets`; the names are re-exported here for older imports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc

from lookalike.channel import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_OPTIONS,
    DEFAULT_TARGET,
    IDEMPOTENT_METHODS,
    RetryPolicy,
    channel_options,
)
from lookalike.dupes import GroupAssembler, dupes_request
from lookalike.errors import RETRIABLE_CODES, LookalikeError, ResourceExhaustedError, is_overload
from lookalike.images import ImageInput, encode_image, is_image_input
from lookalike.security import ChannelSecurity
from lookalike.targets import Balancing, resolve_target
from lookalike.throttle import AdaptiveThrottle, ThrottleSettings
from lookalike.types import (
    DeleteResult,
    FusionInput,
    ItemInput,
    NewItem,
    SearchQuery,
    _embeddings,
    _fusion_pb,
    _insert_result,
    _item,
    _model_info,
    _search_result,
    _stats,
)
from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_OPTIONS",
    "DEFAULT_TARGET",
    "IDEMPOTENT_METHODS",
    "BaseClient",
    "PreparedCall",
    "RetryPolicy",
    "channel_options",
]

_USE_DEFAULT: Any = object()
"""Sentinel for ``timeout=``: the client's default (``None`` already means "no deadline")."""


@dataclass(frozen=True)
class PreparedCall:
    """One unary call, ready for a shell to send.

    Attributes:
        rpc: The stub method (sync or aio; the shell awaits it or not).
        request: The request message.
        convert: Turns the response message into the typed result.
    """

    rpc: Callable[..., Any]
    request: Any
    convert: Callable[[Any], Any] = field(default=lambda r: r)
    throttled: bool = False
    """Whether the server admission-controls this call (so the client throttle applies)."""


def _image_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    # A str or bytes is itself a Sequence, so "one image" must be decided before iterating.
    if is_image_input(images):
        return [cast(ImageInput, images)]
    return list(cast(Sequence[ImageInput], images))


def _to_item(item: ItemInput) -> NewItem:
    if isinstance(item, NewItem):
        return item
    if isinstance(item, tuple) and len(item) in (2, 3) and isinstance(item[0], str):
        attrs = item[2] if len(item) == 3 else {}  # type: ignore[misc]
        return NewItem(key=item[0], image=item[1], attributes=attrs)
    raise TypeError(f"expected NewItem or (key, image[, attributes]) tuple, got {item!r:.80}")


def _is_single_item(items: Any) -> bool:
    # A single (key, image[, attrs]) tuple vs. a collection of them: a single one starts with
    # its key, a collection's first element is itself an item.
    return isinstance(items, NewItem) or (
        isinstance(items, tuple) and len(items) in (2, 3) and isinstance(items[0], str)
    )


def _insert_item_pb(item: NewItem) -> pb.InsertItem:
    return pb.InsertItem(key=item.key, image=encode_image(item.image), attributes=dict(item.attributes or {}))


def _search_request(
    image: ImageInput | None,
    id: int | None,
    vector: Sequence[float] | None,
    models: Sequence[str] | None,
    top_k: int,
    key_prefix: str | None,
    attributes: Mapping[str, str] | None,
    exclude_self: bool,
    fusion: FusionInput = None,
) -> pb.SearchRequest:
    given = sum(x is not None for x in (image, id, vector))
    if given != 1:
        raise ValueError("give exactly one of image=, id= or vector=")
    req = pb.SearchRequest(
        models=list(models or []),
        top_k=top_k,
        exclude_self=exclude_self,
        filter=pb.Filter(key_prefix=key_prefix or "", attributes=dict(attributes or {})),
    )
    fusion_msg = _fusion_pb(fusion)
    if fusion_msg is not None:
        req.fusion.CopyFrom(fusion_msg)
    if image is not None:
        req.image = encode_image(image)
    elif id is not None:
        req.id = int(id)
    else:
        assert vector is not None
        if not models or len(models) != 1:
            raise ValueError("a vector query needs exactly one model: models=['name']")
        values = vector.tolist() if hasattr(vector, "tolist") else list(vector)
        req.vector.CopyFrom(pb.QueryVector(model=models[0], values=values))
    return req


def _health_modules() -> tuple[Any, Any]:
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError as exc:  # the health stub is not part of the thin client install
        raise ImportError(
            "health checks need the grpc.health.v1 stub: pip install grpcio-health-checking "
            "(it comes with the 'server' extra)"
        ) from exc
    return health_pb2, health_pb2_grpc


def _stream_search_request(index: int, q: SearchQuery, defaults: Mapping[str, Any]) -> pb.SearchStreamRequest:
    """A ``SearchStream`` request: the query's own non-``None`` fields override ``defaults``."""
    fields = ("models", "top_k", "key_prefix", "attributes", "exclude_self", "fusion")
    merged = {f: getattr(q, f) if getattr(q, f) is not None else defaults[f] for f in fields}
    req = _search_request(image=q.image, id=q.id, vector=q.vector, **merged)
    return pb.SearchStreamRequest(request_id=str(index), query=req)


class BaseClient:
    """Settings and request/response handling shared by the sync and async clients.

    Args:
        target: Where the server is: ``host:port``; several replicas as ``"h1:p,h2:p"`` or a
            list of ``host:port``; or a gRPC target URI such as ``dns:///svc:50051`` or
            ``ipv4:10.0.0.1:50051,10.0.0.2:50051`` (see :mod:`lookalike.targets`).
        timeout: Default deadline in seconds for each unary call, all retries included.
        retries: Extra attempts after a retriable failure (0 disables retrying; at most 4).
        retry_codes: Status codes to retry; default ``UNAVAILABLE``, ``RESOURCE_EXHAUSTED``,
            ``ABORTED``.
        retry_policy: A full :class:`RetryPolicy`; overrides ``retries`` and ``retry_codes``.
        tls: Use TLS (implied by ``ca``/``cert``/``key``).
        ca: PEM root certificates (bytes or file path); system roots when ``None``.
        cert: PEM client certificate chain for mTLS (bytes or file path).
        key: PEM private key for ``cert`` (bytes or file path).
        token: Bearer token, sent as ``authorization: Bearer <token>``.
        insecure_token: Allow the token over plaintext to a non-loopback target.
        security: A ready :class:`~lookalike.security.ChannelSecurity` (overrides the six
            arguments above).
        secure: Old name of ``tls``.
        root_certificates: Old name of ``ca`` (bytes).
        options: gRPC channel options; defaults raise the message size limits to 64 MiB.
        throttle: Client-side adaptive throttling of Embed, Insert and Search while the server
            refuses them as overloaded (:mod:`lookalike.throttle`); ``ThrottleSettings(k=0)``
            turns it off.
        balancing: ``"round_robin"`` or ``"pick_first"``; by default ``round_robin`` when
            ``target`` names several replicas or is a ``dns:`` URI, and gRPC's own
            ``pick_first`` for a single ``host:port``.
        health_check: With ``round_robin``, send no new calls to a replica whose
            ``grpc.health.v1`` status is not ``SERVING`` (gRPC client-side health checking).
    """

    _grpc: Any = grpc  # the channel factory module: grpc or grpc.aio

    def __init__(
        self,
        target: str | Sequence[str] = DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        retries: int = 3,
        retry_codes: Iterable[grpc.StatusCode] = RETRIABLE_CODES,
        retry_policy: RetryPolicy | None = None,
        tls: bool = False,
        ca: bytes | str | None = None,
        cert: bytes | str | None = None,
        key: bytes | str | None = None,
        token: str | None = None,
        insecure_token: bool = False,
        security: ChannelSecurity | None = None,
        secure: bool = False,
        root_certificates: bytes | None = None,
        options: Sequence[tuple[str, Any]] = DEFAULT_OPTIONS,
        throttle: ThrottleSettings | None = None,
        balancing: Balancing | None = None,
        health_check: bool = True,
    ) -> None:
        resolved = resolve_target(target, balancing)
        # As given (comma-joined when several), for messages; the channel dials
        # channel_target (an ipv4:/ipv6: list when several host names were given).
        self.target = ",".join(resolved.addresses)
        self.channel_target = resolved.uri
        self.balancing = resolved.balancing  # None: gRPC's default pick_first
        self.throttle = AdaptiveThrottle(throttle)
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy(retries=retries, codes=frozenset(retry_codes))
        self.security = security or ChannelSecurity(
            tls=tls or secure,
            ca=ca if ca is not None else root_certificates,
            cert=cert,
            key=key,
            token=token,
            insecure_token=insecure_token,
        )
        for address in resolved.addresses:
            self.security.check(address)
        self._metadata = self.security.call_metadata or None
        opts = channel_options(options, self.retry_policy, resolved.service_config(health_check), resolved.authority)
        creds = self.security.channel_credentials()
        if creds is None:
            self._channel = self._grpc.insecure_channel(resolved.uri, options=opts)
        else:
            self._channel = self._grpc.secure_channel(resolved.uri, creds, options=opts)
        self._stub = pb_grpc.LookalikeStub(self._channel)
        self._health_stub: Any = None

    @classmethod
    def from_env(cls, target: str | Sequence[str] | None = None, **kwargs: Any) -> Any:
        """A client configured from ``LOOKALIKE_TARGET`` (one target or a comma-separated
        list), ``LOOKALIKE_TIMEOUT`` and the
        ``LOOKALIKE_TLS/CA/CERT/KEY/TOKEN`` variables (see :mod:`lookalike.security`);
        explicit arguments win."""
        import os

        target = target or os.environ.get("LOOKALIKE_TARGET") or DEFAULT_TARGET
        if "timeout" not in kwargs and os.environ.get("LOOKALIKE_TIMEOUT"):
            kwargs["timeout"] = float(os.environ["LOOKALIKE_TIMEOUT"])
        sec_args = {k: kwargs.pop(k) for k in ("tls", "ca", "cert", "key", "token", "insecure_token") if k in kwargs}
        kwargs.setdefault("security", ChannelSecurity.from_env(**sec_args))
        return cls(target, **kwargs)

    # -- shared plumbing --

    @property
    def stub(self) -> Any:
        """The generated stub (``grpc.aio`` flavour on the async client), for anything else.

        On a plaintext channel with a token, pass ``metadata=client.call_metadata`` yourself.
        """
        return self._stub

    @property
    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata the client adds to each call (the token on a plaintext channel)."""
        return self.security.call_metadata

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is _USE_DEFAULT else timeout

    def _admit(self, call: PreparedCall) -> None:
        """Refuses ``call`` locally when the throttle says the server would refuse it anyway."""
        if call.throttled and not self.throttle.admit():
            exc = ResourceExhaustedError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "refused by this client without sending: the server has been refusing most calls as "
                f"overloaded (local refusal chance {self.throttle.refusal_probability():.0%}); retry with backoff",
            )
            exc.local = True
            raise exc

    def _record(self, call: PreparedCall, exc: LookalikeError | None) -> None:
        """Tells the throttle how a sent call ended."""
        if call.throttled:
            self.throttle.record(exc is None or not is_overload(exc))

    # -- one body per RPC: build the request, say how to read the answer --

    def _list_models(self) -> PreparedCall:
        return PreparedCall(self._stub.ListModels, pb.ListModelsRequest(), lambda r: [_model_info(m) for m in r.models])

    def _embed(self, images: ImageInput | Sequence[ImageInput], model: str) -> PreparedCall:
        req = pb.EmbedRequest(model=model, images=[encode_image(i) for i in _image_list(images)])
        return PreparedCall(self._stub.Embed, req, _embeddings, throttled=True)

    def _insert(self, items: ItemInput | Iterable[ItemInput], models: Sequence[str] | None) -> PreparedCall:
        single = _is_single_item(items)
        batch = (
            [_to_item(cast(ItemInput, items))] if single else [_to_item(i) for i in cast(Iterable[ItemInput], items)]
        )
        req = pb.InsertRequest(items=[_insert_item_pb(i) for i in batch], models=list(models or []))

        def convert(resp: pb.InsertResponse) -> Any:
            results = [_insert_result(r) for r in resp.results]
            return results[0] if single else results

        return PreparedCall(self._stub.Insert, req, convert, throttled=True)

    def _search(self, *query: Any) -> PreparedCall:
        # The shells pass their (typed) arguments in _search_request's order.
        return PreparedCall(self._stub.Search, _search_request(*query), _search_result, throttled=True)

    def _get(self, id: int | None, key: str | None) -> PreparedCall:
        if (id is None) == (key is None):
            raise ValueError("give exactly one of id or key=")
        req = pb.GetRequest(id=int(id)) if id is not None else pb.GetRequest(key=key)
        return PreparedCall(self._stub.Get, req, _item)

    def _delete(self, id: int) -> PreparedCall:
        return PreparedCall(
            self._stub.Delete, pb.DeleteRequest(id=int(id)), lambda r: DeleteResult(id=r.id, models=list(r.models))
        )

    def _stats(self, reset: bool) -> PreparedCall:
        return PreparedCall(self._stub.GetStats, pb.GetStatsRequest(reset=reset), _stats)

    def _find_duplicates(
        self,
        model: str | Sequence[str] | None,
        threshold: float | None,
        key_prefix: str | None,
        attributes: Mapping[str, str] | None,
        page_size: int,
        exact_only: bool,
    ) -> tuple[PreparedCall, GroupAssembler]:
        """The server-streaming call and the assembler the shell feeds each message to."""
        req = dupes_request(model, threshold, key_prefix, attributes, page_size, exact_only)
        assembler = GroupAssembler()
        return PreparedCall(self._stub.FindDuplicates, req, assembler.feed), assembler

    def _health(self, service: str) -> PreparedCall:
        health_pb2, health_pb2_grpc = _health_modules()
        if self._health_stub is None:
            self._health_stub = health_pb2_grpc.HealthStub(self._channel)
        return PreparedCall(
            self._health_stub.Check,
            health_pb2.HealthCheckRequest(service=service),
            lambda r: str(health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)),
        )
