"""``asyncio`` client over ``grpc.aio``: the I/O shell of :class:`~lookalike._core.BaseClient`.

Same arguments, same results, same retry rules (gRPC's service config) as
:class:`lookalike.client.LookalikeClient`; methods are coroutines. The two bidirectional
streams are not wrapped here: use ``client.stub`` (a ``grpc.aio`` stub) for them, with
``metadata=client.call_metadata`` on a plaintext channel with a token;
:meth:`AsyncLookalikeClient.find_duplicates` is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from lookalike._core import _USE_DEFAULT, BaseClient, PreparedCall
from lookalike.dupes import DuplicateGroup, DuplicatesSummary
from lookalike.errors import from_rpc_error
from lookalike.images import ImageInput
from lookalike.types import (
    DeleteResult,
    FusionInput,
    InsertResult,
    Item,
    ItemInput,
    ModelInfo,
    SearchResult,
    Stats,
)

__all__ = ["AsyncLookalikeClient"]


class AsyncLookalikeClient(BaseClient):
    """``asyncio`` client with the unary methods of :class:`~lookalike.client.LookalikeClient`.

    Use with ``async with`` or ``await client.close()``. Create it inside the event loop
    that will use it (``grpc.aio`` channels belong to one loop).
    """

    _grpc = grpc.aio

    async def close(self) -> None:
        """Closes the channel."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncLookalikeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, call: PreparedCall, timeout: float | None) -> Any:
        self._admit(call)
        try:
            response = await call.rpc(call.request, timeout=self._deadline(timeout), metadata=self._metadata)
        except grpc.RpcError as err:  # grpc.aio.AioRpcError is one
            exc = from_rpc_error(err)
            self._record(call, exc)
            raise exc from err
        self._record(call, None)
        return call.convert(response)

    async def list_models(self, *, timeout: float | None = _USE_DEFAULT) -> list[ModelInfo]:
        """See :meth:`LookalikeClient.list_models`."""
        return await self._send(self._list_models(), timeout)  # type: ignore[no-any-return]

    async def embed(
        self, images: ImageInput | Sequence[ImageInput], model: str, *, timeout: float | None = _USE_DEFAULT
    ) -> Any:
        """See :meth:`LookalikeClient.embed`."""
        return await self._send(self._embed(images, model), timeout)

    async def insert(
        self,
        items: ItemInput | Iterable[ItemInput],
        models: Sequence[str] | None = None,
        *,
        timeout: float | None = _USE_DEFAULT,
    ) -> InsertResult | list[InsertResult]:
        """See :meth:`LookalikeClient.insert`."""
        return await self._send(self._insert(items, models), timeout)  # type: ignore[no-any-return]

    async def search(
        self,
        image: ImageInput | None = None,
        *,
        id: int | None = None,
        vector: Sequence[float] | None = None,
        models: Sequence[str] | None = None,
        top_k: int = 10,
        key_prefix: str | None = None,
        attributes: Mapping[str, str] | None = None,
        exclude_self: bool = False,
        fusion: FusionInput = None,
        timeout: float | None = _USE_DEFAULT,
    ) -> SearchResult:
        """See :meth:`LookalikeClient.search`."""
        call = self._search(image, id, vector, models, top_k, key_prefix, attributes, exclude_self, fusion)
        return await self._send(call, timeout)  # type: ignore[no-any-return]

    async def get(self, id: int | None = None, *, key: str | None = None, timeout: float | None = _USE_DEFAULT) -> Item:
        """See :meth:`LookalikeClient.get`."""
        return await self._send(self._get(id, key), timeout)  # type: ignore[no-any-return]

    async def delete(self, id: int, *, timeout: float | None = _USE_DEFAULT) -> DeleteResult:
        """See :meth:`LookalikeClient.delete`."""
        return await self._send(self._delete(id), timeout)  # type: ignore[no-any-return]

    async def stats(self, reset: bool = False, *, timeout: float | None = _USE_DEFAULT) -> Stats:
        """See :meth:`LookalikeClient.stats`."""
        return await self._send(self._stats(reset), timeout)  # type: ignore[no-any-return]

    async def health(self, service: str = "", *, timeout: float | None = _USE_DEFAULT) -> str:
        """See :meth:`LookalikeClient.health`."""
        return await self._send(self._health(service), timeout)  # type: ignore[no-any-return]

    async def find_duplicates(
        self,
        model: str | Sequence[str] | None = None,
        *,
        threshold: float | None = None,
        key_prefix: str | None = None,
        attributes: Mapping[str, str] | None = None,
        page_size: int = 0,
        exact_only: bool = False,
        timeout: float | None = None,
    ) -> AsyncIterator[DuplicateGroup | DuplicatesSummary]:
        """See :meth:`LookalikeClient.find_duplicates` (an async iterator here)."""
        call, _ = self._find_duplicates(model, threshold, key_prefix, attributes, page_size, exact_only)
        stream = call.rpc(call.request, timeout=timeout, metadata=self._metadata)
        try:
            async for msg in stream:
                out = call.convert(msg)
                if out is not None:
                    yield out
        except grpc.RpcError as err:
            raise from_rpc_error(err) from err
        finally:
            stream.cancel()
