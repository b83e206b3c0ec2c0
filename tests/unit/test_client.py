"""The typed client against an in-process fake servicer: encoding, retries, deadlines, results."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from lookalike import (
    AsyncLookalikeClient,
    InvalidArgumentError,
    LookalikeClient,
    LookalikeError,
    ModelHits,
    NewItem,
    NotFoundError,
    ResourceExhaustedError,
    SearchQuery,
    ThrottleSettings,
    UnavailableError,
)
from lookalike.images import encode_image, sniff_mime
from tests.unit.test_client_fakes import DIM, MODELS, FakeServer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


@pytest.fixture
def client(server: FakeServer) -> Iterator[LookalikeClient]:
    with LookalikeClient(server.target, timeout=10.0) as c:
        yield c


def _png(color: str = "red", size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------ images --


def test_image_inputs_path_bytes_pil(tmp_path: Path) -> None:
    data = _png()
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert encode_image(str(path)) == data
    assert encode_image(path) == data
    assert encode_image(data) == data
    assert encode_image(bytearray(data)) == data
    pil = Image.new("RGB", (5, 7), "blue")
    encoded = encode_image(pil)
    assert encoded.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(encoded)) as back:
        assert back.size == (5, 7)
    # A mode PNG cannot store is converted rather than failing.
    assert encode_image(Image.new("CMYK", (3, 3))).startswith(PNG_MAGIC)
    with pytest.raises(TypeError):
        encode_image(123)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        encode_image(tmp_path / "missing.png")
    assert sniff_mime(data) == "image/png"
    assert sniff_mime(b"\xff\xd8\xff\xe0....") == "image/jpeg"


# ------------------------------------------------------------------- calls --


def test_list_models_typed(client: LookalikeClient) -> None:
    models = client.list_models()
    assert [m.name for m in models] == ["alpha", "beta"]
    assert models[0].dim == DIM
    assert models[0].batch_buckets == (1, 2, 4)
    assert [c.batch_size for c in models[0].bucket_costs] == [1, 2, 4] and models[0].bucket_costs[2].ms_per_run == 16.0
    assert models[0].batching_reason.endswith("batching off")
    assert models[0].threads is not None and models[0].threads.intra_op_threads == 1
    assert models[0].preprocessing is not None and models[0].preprocessing.height == 224


def test_embed_shapes_and_inputs(client: LookalikeClient, server: FakeServer, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(_png("green"))
    out = client.embed([path, _png(), Image.new("RGB", (4, 4))], model="alpha")
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (3, DIM)
    sent = server.servicer.seen.requests["Embed"][-1]
    assert sent.model == "alpha" and sent.images[0] == path.read_bytes()
    assert sent.images[2].startswith(PNG_MAGIC)
    # One image on its own still gives a (1, dim) matrix.
    assert client.embed(str(path), model="beta").shape == (1, DIM)


def test_embed_without_numpy_returns_lists(client: LookalikeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)  # makes `import numpy` raise ImportError
    out = client.embed([_png(), _png("blue")], model="alpha")
    assert isinstance(out, list) and len(out) == 2 and out[0] == [0.5] * DIM


def test_retry_on_unavailable_then_success(client: LookalikeClient, server: FakeServer) -> None:
    # gRPC retries from the service config; the server counts every attempt.
    server.servicer.fail["ListModels"] = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    assert len(client.list_models()) == 2
    assert len(server.servicer.seen.requests["ListModels"]) == 3


def test_retries_exhausted_raise_unavailable(server: FakeServer) -> None:
    server.servicer.fail["ListModels"] = [grpc.StatusCode.UNAVAILABLE] * 5
    with LookalikeClient(server.target, retries=2) as c, pytest.raises(UnavailableError) as info:
        c.list_models()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.retriable
    assert "fake unavailable" in info.value.message
    assert isinstance(info.value.__cause__, grpc.RpcError)
    assert len(server.servicer.seen.requests["ListModels"]) == 3


def test_retries_zero_turns_retrying_off(server: FakeServer) -> None:
    server.servicer.fail["ListModels"] = [grpc.StatusCode.UNAVAILABLE]
    with LookalikeClient(server.target, retries=0) as c, pytest.raises(UnavailableError):
        c.list_models()
    assert len(server.servicer.seen.requests["ListModels"]) == 1


def test_too_many_retries_refused() -> None:
    with pytest.raises(ValueError, match=r"0\.\.4"):
        LookalikeClient("127.0.0.1:1", retries=5)


def test_no_retry_on_invalid_argument(client: LookalikeClient, server: FakeServer) -> None:
    server.servicer.fail["Search"] = [grpc.StatusCode.INVALID_ARGUMENT]
    with pytest.raises(InvalidArgumentError) as info:
        client.search(_png())
    assert isinstance(info.value, LookalikeError) and not info.value.retriable
    assert len(server.servicer.seen.requests["Search"]) == 1


@pytest.mark.parametrize("code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED])
def test_overload_and_aborted_retried_like_the_server_means(
    client: LookalikeClient, server: FakeServer, code: grpc.StatusCode
) -> None:
    server.servicer.fail["Embed"] = [code]
    assert client.embed(_png(), model="alpha").shape == (1, DIM)
    assert len(server.servicer.seen.requests["Embed"]) == 2
    # ... unless the caller narrows the codes.
    server.servicer.fail["Embed"] = [code]
    narrow = LookalikeClient(server.target, retry_codes=[grpc.StatusCode.UNAVAILABLE])
    with narrow as c, pytest.raises(LookalikeError) as info:
        c.embed(_png(), model="alpha")
    assert info.value.code == code and info.value.retriable
    assert len(server.servicer.seen.requests["Embed"]) == 3


def test_delete_is_not_retried(client: LookalikeClient, server: FakeServer) -> None:
    server.servicer.fail["Delete"] = [grpc.StatusCode.UNAVAILABLE]
    with pytest.raises(UnavailableError):
        client.delete(1)
    assert len(server.servicer.seen.requests["Delete"]) == 1


def test_large_insert_is_still_retried(client: LookalikeClient, server: FakeServer) -> None:
    # gRPC gives up retrying once a request outgrows its retry buffer (256 KiB by default).
    big = _png() + os.urandom(3 * 1024 * 1024)
    server.servicer.fail["Insert"] = [grpc.StatusCode.UNAVAILABLE]
    assert client.insert(("big.png", big)).created
    assert len(server.servicer.seen.requests["Insert"]) == 2


def test_server_pushback_is_honoured(client: LookalikeClient, server: FakeServer) -> None:
    # The default backoff before the first retry is at most 0.1 s; a 600 ms pushback must win.
    server.servicer.fail["ListModels"] = [grpc.StatusCode.UNAVAILABLE]
    server.servicer.pushback_ms["ListModels"] = 600
    client.list_models()
    first, second = server.servicer.seen.arrived_at["ListModels"]
    assert second - first >= 0.55


def test_negative_pushback_stops_retrying(client: LookalikeClient, server: FakeServer) -> None:
    server.servicer.fail["ListModels"] = [grpc.StatusCode.UNAVAILABLE]
    server.servicer.pushback_ms["ListModels"] = -1
    with pytest.raises(UnavailableError):
        client.list_models()
    assert len(server.servicer.seen.requests["ListModels"]) == 1


def test_deadline_passed_through(client: LookalikeClient, server: FakeServer) -> None:
    client.list_models()
    remaining = server.servicer.seen.time_remaining["ListModels"][-1]
    assert remaining is not None and 8.0 < remaining <= 10.1  # gRPC rounds deadlines
    client.list_models(timeout=2.5)
    remaining = server.servicer.seen.time_remaining["ListModels"][-1]
    assert remaining is not None and 1.0 < remaining <= 2.6


def test_retries_share_one_deadline(client: LookalikeClient, server: FakeServer) -> None:
    server.servicer.fail["ListModels"] = [grpc.StatusCode.UNAVAILABLE]
    server.servicer.pushback_ms["ListModels"] = 300
    client.list_models(timeout=3.0)
    first, second = server.servicer.seen.time_remaining["ListModels"][-2:]
    assert first is not None and second is not None and second < first - 0.25


def test_insert_single_and_many(client: LookalikeClient, server: FakeServer) -> None:
    r = client.insert(("a.png", _png("red"), {"label": "x"}))
    assert r.created and r.id == 1 and r.models == ["alpha", "beta"] and len(r.content_sha256) == 64
    many = client.insert([NewItem("b.png", _png("blue")), ("c.png", _png("red"))], models=["alpha"])
    assert [m.created for m in many] == [True, False]  # same bytes as a.png: deduplicated
    assert many[1].id == 1
    req = server.servicer.seen.requests["Insert"][0]
    assert req.items[0].key == "a.png" and dict(req.items[0].attributes) == {"label": "x"}
    assert list(server.servicer.seen.requests["Insert"][1].models) == ["alpha"]


def test_insert_stream_reports_each_item(client: LookalikeClient, tmp_path: Path) -> None:
    good = tmp_path / "g.png"
    good.write_bytes(_png("yellow"))
    items = [
        ("g.png", good),
        ("bad", b"bad"),
        ("missing.png", tmp_path / "missing.png"),
        ("h.png", _png("purple")),
        ("g-again.png", good),
    ]
    results = sorted(client.insert_stream(items, window=2), key=lambda r: r.index)
    assert [r.index for r in results] == [0, 1, 2, 3, 4]
    assert [r.key for r in results] == [k for k, _ in items]
    assert results[0].ok and results[0].result is not None and results[0].result.created
    assert isinstance(results[1].error, InvalidArgumentError)
    assert isinstance(results[2].error, FileNotFoundError)
    assert results[3].ok
    assert results[4].result is not None and not results[4].result.created


def test_insert_stream_window_one_many_items(client: LookalikeClient, server: FakeServer) -> None:
    items = [(f"k{i}", _png(size=(i + 1, 3))) for i in range(25)]
    results = list(client.insert_stream(items, window=1))
    assert len(results) == 25 and all(r.ok for r in results)
    assert len(server.servicer.seen.requests["InsertStream.item"]) == 25


def test_search_variants(client: LookalikeClient, server: FakeServer) -> None:
    res = client.search(_png(), top_k=2, key_prefix="alpha/", attributes={"rank": "0"})
    assert res.models == ["alpha", "beta"]
    assert isinstance(res.results[0], ModelHits)
    assert [h.key for h in res["alpha"].hits] == ["alpha/hit0.png", "alpha/hit1.png"]
    assert res["beta"].hits[0].attributes == {"rank": "0"}
    assert res.timing is not None and res.timing.total_ms == 1.5
    req = server.servicer.seen.requests["Search"][-1]
    assert req.WhichOneof("query") == "image" and req.top_k == 2
    assert req.filter.key_prefix == "alpha/" and dict(req.filter.attributes) == {"rank": "0"}

    client.search(id=7, exclude_self=True, models=["beta"])
    req = server.servicer.seen.requests["Search"][-1]
    assert req.WhichOneof("query") == "id" and req.id == 7 and req.exclude_self
    assert list(req.models) == ["beta"]

    client.search(vector=np.ones(DIM, dtype=np.float32), models=["alpha"])
    req = server.servicer.seen.requests["Search"][-1]
    assert req.vector.model == "alpha" and list(req.vector.values) == [1.0] * DIM

    with pytest.raises(ValueError):
        client.search(vector=[1.0] * DIM)  # a vector needs its model
    with pytest.raises(ValueError):
        client.search(_png(), id=3)  # one query only


def test_search_stream(client: LookalikeClient) -> None:
    queries = [_png(), SearchQuery(id=3, models=["beta"], top_k=1), SearchQuery(image=_png(), top_k=-1)]
    results = sorted(client.search_stream(queries, top_k=2, window=2), key=lambda r: r.index)
    assert results[0].result is not None and results[0].result.models == ["alpha", "beta"]
    assert len(results[0].result["alpha"].hits) == 2
    assert results[1].result is not None and results[1].result.models == ["beta"]
    assert len(results[1].result["beta"].hits) == 1
    assert not results[2].ok and isinstance(results[2].error, InvalidArgumentError)


def test_get_delete_stats_health(client: LookalikeClient) -> None:
    r = client.insert(("k.png", _png("white"), {"a": "b"}))
    item = client.get(r.id)
    assert item.key == "k.png" and item.attributes == {"a": "b"}
    assert client.get(key="k.png").id == r.id
    assert client.delete(r.id).models == ["alpha", "beta"]
    with pytest.raises(NotFoundError):
        client.get(r.id)
    with pytest.raises(NotFoundError):
        client.delete(r.id)
    stats = client.stats()
    assert stats.batchers[0].batch_size_histogram == {1: 3, 4: 2} and stats.uptime_s == 12.5
    assert client.health() == "SERVING"


def test_unreachable_server_is_unavailable() -> None:
    with LookalikeClient("127.0.0.1:1", timeout=2.0, retries=1) as c, pytest.raises(UnavailableError):
        c.list_models()


def test_async_client(server: FakeServer) -> None:
    server.servicer.fail["ListModels"] = [grpc.StatusCode.UNAVAILABLE]

    async def main() -> None:
        async with AsyncLookalikeClient(server.target, timeout=5.0) as c:
            assert [m.name for m in await c.list_models()] == ["alpha", "beta"]
            assert (await c.embed([_png()], model="alpha")).shape == (1, DIM)
            res = await c.search(_png(), models=["beta"], top_k=1)
            assert res.models == ["beta"]
            ins = await c.insert(("z.png", _png("black")))
            assert not isinstance(ins, list) and ins.created
            assert (await c.get(ins.id)).key == "z.png"
            with pytest.raises(InvalidArgumentError):
                await c.embed([b""], model="alpha")
            assert await c.health() == "SERVING"

    asyncio.run(main())
    assert len(server.servicer.seen.requests["ListModels"]) == 2


def test_grpc_size_limit_is_not_retriable(client: LookalikeClient, server: FakeServer) -> None:
    # gRPC reports its own message-size limit as RESOURCE_EXHAUSTED; no retry can fix that.
    small = LookalikeClient(server.target, options=[("grpc.max_send_message_length", 1000)])
    with small as c, pytest.raises(ResourceExhaustedError) as info:
        c.embed(os.urandom(2000), model="alpha")
    assert "larger than max" in info.value.message and not info.value.retriable
    assert not server.servicer.seen.requests["Embed"]


def test_overload_refusal_carries_the_pushback_hint(server: FakeServer) -> None:
    server.servicer.fail["Embed"] = [grpc.StatusCode.RESOURCE_EXHAUSTED]
    server.servicer.pushback_ms["Embed"] = 250
    with LookalikeClient(server.target, retries=0) as c, pytest.raises(ResourceExhaustedError) as info:
        c.embed(_png(), model="alpha")
    assert info.value.retry_after_s == 0.25 and not info.value.local


def test_client_throttles_locally_while_the_server_refuses(server: FakeServer) -> None:
    # The server refuses every Embed as overloaded: after a few refusals the client answers
    # most calls itself, so far fewer than the calls made reach the server.
    server.servicer.fail["Embed"] = [grpc.StatusCode.RESOURCE_EXHAUSTED] * 1000
    with LookalikeClient(server.target, retries=0, throttle=ThrottleSettings(k=2, window_s=3)) as c:
        local = 0
        for _ in range(60):
            with pytest.raises(ResourceExhaustedError) as info:
                c.embed(_png(), model="alpha")
            local += info.value.local
        sent = len(server.servicer.seen.requests["Embed"])
        assert sent + local == 60
        assert local >= 30, f"only {local} of 60 refused locally"
        # Calls the server does not admission-control are never refused locally.
        assert len(c.list_models()) == len(MODELS)
        # Once the server accepts again, the refusals age out of the window and every call goes.
        server.servicer.fail["Embed"] = []
        time.sleep(3.1)
        assert all(_embeds(c) for _ in range(50))


def test_throttle_can_be_turned_off(server: FakeServer) -> None:
    server.servicer.fail["Embed"] = [grpc.StatusCode.RESOURCE_EXHAUSTED] * 40
    with LookalikeClient(server.target, retries=0, throttle=ThrottleSettings(k=0)) as c:
        for _ in range(40):
            with pytest.raises(ResourceExhaustedError) as info:
                c.embed(_png(), model="alpha")
            assert not info.value.local
    assert len(server.servicer.seen.requests["Embed"]) == 40


def _embeds(c: LookalikeClient) -> bool:
    try:
        c.embed(_png(), model="alpha")
    except ResourceExhaustedError:
        return False
    return True
