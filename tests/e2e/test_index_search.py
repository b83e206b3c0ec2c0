"""The whole stack over gRPC: Insert, Search (image/id/vector, filters, side by side), Get, Delete, streams.

Runs against ``live_server``: the shipped models, Milvus Lite in a temp dir and
a real Redis. Every test indexes its own photos under a key prefix of its own,
so tests do not see each other's items.
"""

from __future__ import annotations

import io
import math
import queue
import threading
import uuid

import grpc
import pytest
from PIL import Image

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

MODELS = ["mobilenet_v2", "efficientnet_lite0"]


@pytest.fixture
def stub(live_server) -> pb_grpc.LookalikeStub:
    return pb_grpc.LookalikeStub(grpc.insecure_channel(live_server.target))


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}/"


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def variant(path, salt: str) -> bytes:
    """The photo re-encoded with a unique comment: same pixels, new content hash.

    Tests share one index; unique bytes keep content dedupe from merging
    items across tests.
    """
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, "JPEG", quality=95, comment=salt.encode())
    return buf.getvalue()


def insert(stub, prefix, photos, attributes=None, models=()):
    items = [
        pb.InsertItem(key=f"{prefix}{p.name}", image=variant(p, prefix), attributes=(attributes or {}).get(p.name, {}))
        for p in photos
    ]
    resp = stub.Insert(pb.InsertRequest(items=items, models=list(models)), timeout=60)
    return {p.name: r for p, r in zip(photos, resp.results, strict=True)}


def snapshot(live_server, stub, ids):
    """What is stored: row counts per collection and the records of ``ids``."""
    service = live_server.server.service
    counts = {m: service.milvus.count(c) for m, c in service.collections.items()}
    records = {}
    for i in ids:
        try:
            records[i] = stub.Get(pb.GetRequest(id=i), timeout=10)
        except grpc.RpcError as exc:
            records[i] = exc.code()
    return counts, records


def test_insert_is_idempotent_and_returns_one_id_for_all_models(stub, prefix, photos):
    first = insert(stub, prefix, photos[:3])
    assert all(r.created for r in first.values())
    assert len({r.id for r in first.values()}) == 3
    for r in first.values():
        assert list(r.models) == MODELS and len(r.content_sha256) == 64
    again = insert(stub, prefix, photos[:3])  # a client retry after a lost response
    for name, r in again.items():
        assert not r.created and r.id == first[name].id


def test_crop_of_an_indexed_photo_finds_it_first_with_each_model(stub, prefix, photos):
    ids = {name: r.id for name, r in insert(stub, prefix, photos).items()}
    target = photos[2]
    img = Image.open(target)
    w, h = img.size
    crop = jpeg(img.crop((int(w * 0.1), int(h * 0.1), int(w * 0.9), int(h * 0.9))), quality=80)
    resp = stub.Search(
        pb.SearchRequest(image=crop, models=MODELS, top_k=3, filter=pb.Filter(key_prefix=prefix)), timeout=30
    )
    assert [r.model for r in resp.results] == MODELS  # side by side, in request order
    for result in resp.results:
        assert result.hits[0].id == ids[target.name], result
        assert result.hits[0].key == f"{prefix}{target.name}"
        distances = [h.distance for h in result.hits]
        assert distances == sorted(distances) and 0 <= distances[0] < 1.0
    assert resp.timing.milvus_ms > 0 and resp.timing.total_ms >= resp.timing.milvus_ms


def test_search_by_id_and_by_vector(stub, prefix, photos):
    ids = {name: r.id for name, r in insert(stub, prefix, photos[:4]).items()}
    me = ids[photos[0].name]
    flt = pb.Filter(key_prefix=prefix)
    resp = stub.Search(pb.SearchRequest(id=me, top_k=3, filter=flt, exclude_self=True), timeout=30)
    assert {r.model for r in resp.results} == set(MODELS)
    for r in resp.results:
        assert me not in [h.id for h in r.hits] and len(r.hits) == 3
    resp = stub.Search(pb.SearchRequest(id=me, top_k=1, filter=flt, models=["efficientnet_lite0"]), timeout=30)
    assert resp.results[0].hits[0].id == me and resp.results[0].hits[0].distance < 1e-4

    emb = stub.Embed(pb.EmbedRequest(model="mobilenet_v2", images=[variant(photos[1], prefix)]), timeout=30)
    values = [v * 3.0 for v in emb.embeddings[0].values]  # any scale: the server normalises
    resp = stub.Search(
        pb.SearchRequest(vector=pb.QueryVector(model="mobilenet_v2", values=values), top_k=2, filter=flt), timeout=30
    )
    assert [r.model for r in resp.results] == ["mobilenet_v2"]
    assert resp.results[0].hits[0].id == ids[photos[1].name]
    assert resp.results[0].hits[0].distance < 1e-4


def test_filters_on_key_prefix_and_attributes(stub, prefix, photos):
    attrs = {p.name: {"group": "a" if i % 2 == 0 else "b", "source": "test"} for i, p in enumerate(photos[:4])}
    ids = {name: r.id for name, r in insert(stub, prefix, photos[:4], attrs).items()}
    group_a = {ids[n] for n, a in attrs.items() if a["group"] == "a"}
    resp = stub.Search(
        pb.SearchRequest(
            image=variant(photos[0], prefix),
            top_k=10,
            filter=pb.Filter(key_prefix=prefix, attributes={"group": "a"}),
        ),
        timeout=30,
    )
    for r in resp.results:
        assert {h.id for h in r.hits} == group_a
        assert all(h.attributes["group"] == "a" for h in r.hits)
    other_prefix = stub.Search(
        pb.SearchRequest(image=variant(photos[0], prefix), top_k=10, filter=pb.Filter(key_prefix=prefix + "zzz")),
        timeout=30,
    )
    assert all(len(r.hits) == 0 for r in other_prefix.results)


def test_get_and_delete(stub, prefix, photos):
    res = insert(stub, prefix, photos[:2], {photos[0].name: {"colour": "red"}})
    item_id = res[photos[0].name].id
    item = stub.Get(pb.GetRequest(id=item_id), timeout=10)
    assert item.key == f"{prefix}{photos[0].name}" and dict(item.attributes) == {"colour": "red"}
    assert list(item.models) == MODELS and item.created_at > 0
    assert stub.Get(pb.GetRequest(key=item.key), timeout=10).id == item_id

    deleted = stub.Delete(pb.DeleteRequest(id=item_id), timeout=30)
    assert deleted.id == item_id and set(deleted.models) == set(MODELS)
    for call in (lambda: stub.Get(pb.GetRequest(id=item_id)), lambda: stub.Delete(pb.DeleteRequest(id=item_id))):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    resp = stub.Search(
        pb.SearchRequest(image=variant(photos[0], prefix), top_k=5, filter=pb.Filter(key_prefix=prefix)), timeout=30
    )
    for r in resp.results:
        assert item_id not in [h.id for h in r.hits]
        assert res[photos[1].name].id in [h.id for h in r.hits]
    # Re-inserting a deleted item creates it afresh.
    again = insert(stub, prefix, photos[:1])
    assert again[photos[0].name].created and again[photos[0].name].id != item_id


def test_insert_under_one_model_then_add_another(stub, prefix, photos):
    first = insert(stub, prefix, photos[:1], models=["mobilenet_v2"])[photos[0].name]
    assert list(first.models) == ["mobilenet_v2"]
    with pytest.raises(grpc.RpcError) as info:
        stub.Search(pb.SearchRequest(id=first.id, models=["efficientnet_lite0"]), timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    second = insert(stub, prefix, photos[:1], models=["efficientnet_lite0"])[photos[0].name]
    assert not second.created and second.id == first.id and set(second.models) == set(MODELS)
    resp = stub.Search(
        pb.SearchRequest(id=first.id, models=["efficientnet_lite0"], top_k=1, filter=pb.Filter(key_prefix=prefix)),
        timeout=30,
    )
    assert resp.results[0].hits[0].id == first.id


BAD_SEARCHES = {
    "unknown id": (pb.SearchRequest(id=987654321), grpc.StatusCode.NOT_FOUND, "no item with id"),
    "no query": (pb.SearchRequest(top_k=3), grpc.StatusCode.INVALID_ARGUMENT, "needs one of"),
    "negative top_k": (pb.SearchRequest(id=1, top_k=-1), grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
    "huge top_k": (pb.SearchRequest(id=1, top_k=100000), grpc.StatusCode.INVALID_ARGUMENT, "over the limit"),
    "unknown model": (
        pb.SearchRequest(vector=pb.QueryVector(model="vgg99", values=[1.0])),
        grpc.StatusCode.NOT_FOUND,
        "not loaded",
    ),
    "wrong dim": (
        pb.SearchRequest(vector=pb.QueryVector(model="mobilenet_v2", values=[1.0] * 512)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "needs 1280",
    ),
    "nan": (
        pb.SearchRequest(vector=pb.QueryVector(model="mobilenet_v2", values=[math.nan] + [1.0] * 1279)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "NaN",
    ),
    "zero vector": (
        pb.SearchRequest(vector=pb.QueryVector(model="mobilenet_v2", values=[0.0] * 1280)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "zero length",
    ),
    "unknown attribute": (
        pb.SearchRequest(
            vector=pb.QueryVector(model="mobilenet_v2", values=[1.0] * 1280),
            filter=pb.Filter(attributes={"no_such_attribute": "x"}),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown attribute",
    ),
    "bad attribute name": (
        pb.SearchRequest(
            vector=pb.QueryVector(model="mobilenet_v2", values=[1.0] * 1280),
            filter=pb.Filter(attributes={'x"] or 1==1 or attrs["x': "x"}),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "must match",
    ),
    "garbage image": (pb.SearchRequest(image=b"not an image at all"), grpc.StatusCode.INVALID_ARGUMENT, "image"),
}


def test_bad_searches_and_inserts_get_clear_statuses_and_change_nothing(live_server, stub, prefix, photos):
    ids = [r.id for r in insert(stub, prefix, photos[:2]).values()]
    before = snapshot(live_server, stub, ids)
    for name, (request, code, words) in BAD_SEARCHES.items():
        with pytest.raises(grpc.RpcError) as info:
            stub.Search(request, timeout=30)
        assert info.value.code() == code, name
        assert words in info.value.details(), (name, info.value.details())
    good = variant(photos[3], prefix)
    bad_inserts = {
        "empty key": (pb.InsertRequest(items=[pb.InsertItem(key="", image=good)]), "key is required"),
        "bad attr": (
            pb.InsertRequest(items=[pb.InsertItem(key=prefix + "x", image=good, attributes={"a b": "1"})]),
            "attribute name",
        ),
        "one bad image among good": (
            pb.InsertRequest(
                items=[pb.InsertItem(key=prefix + "ok", image=good), pb.InsertItem(key=prefix + "bad", image=b"oops")]
            ),
            "image",
        ),
        "unknown model": (
            pb.InsertRequest(items=[pb.InsertItem(key=prefix + "x", image=good)], models=["vgg99"]),
            "not loaded",
        ),
        "nothing": (pb.InsertRequest(), "no items"),
    }
    for name, (request, words) in bad_inserts.items():
        with pytest.raises(grpc.RpcError) as info:
            stub.Insert(request, timeout=30)
        assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), name
        assert words in info.value.details(), (name, info.value.details())
    assert snapshot(live_server, stub, ids) == before
    with pytest.raises(grpc.RpcError) as info:
        stub.Get(pb.GetRequest(key=prefix + "ok"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # A key longer than any item's is refused before Redis is asked; one that fits is quoted back clipped.
    with pytest.raises(grpc.RpcError) as info:
        stub.Get(pb.GetRequest(key=prefix + "k" * 100_000), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the limit is 1024" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        stub.Get(pb.GetRequest(key=prefix + "é" * 500), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "no item with key" in info.value.details()


def test_search_stream_answers_each_query_with_its_id_and_survives_a_bad_one(stub, prefix, photos):
    ids = {name: r.id for name, r in insert(stub, prefix, photos[:4]).items()}
    flt = pb.Filter(key_prefix=prefix)
    requests = [
        pb.SearchStreamRequest(
            request_id=f"q{i}", query=pb.SearchRequest(image=variant(p, prefix), top_k=1, filter=flt)
        )
        for i, p in enumerate(photos[:4])
    ]
    requests.insert(2, pb.SearchStreamRequest(request_id="bad", query=pb.SearchRequest(image=b"junk")))
    answers = {a.request_id: a for a in stub.SearchStream(iter(requests), timeout=60)}
    assert set(answers) == {r.request_id for r in requests}
    assert answers["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answers["bad"].error.code_name == "INVALID_ARGUMENT" and answers["bad"].error.message
    for i, p in enumerate(photos[:4]):
        result = answers[f"q{i}"].result
        assert not answers[f"q{i}"].HasField("error")
        for r in result.results:
            assert r.hits[0].id == ids[p.name]


def test_insert_stream_indexes_every_good_item_and_reports_the_bad_one(stub, prefix, photos):
    requests = [
        pb.InsertStreamRequest(request_id=p.name, item=pb.InsertItem(key=f"{prefix}{p.name}", image=variant(p, prefix)))
        for p in photos
    ]
    requests.append(pb.InsertStreamRequest(request_id="bad", item=pb.InsertItem(key=prefix + "bad", image=b"\x89PNG")))
    answers = {a.request_id: a for a in stub.InsertStream(iter(requests), timeout=120)}
    assert set(answers) == {r.request_id for r in requests}
    assert answers["bad"].error.code_name == "INVALID_ARGUMENT"
    good = [answers[p.name].result for p in photos]
    assert all(r.created for r in good) and len({r.id for r in good}) == len(photos)
    for p, r in zip(photos, good, strict=True):
        assert stub.Get(pb.GetRequest(id=r.id), timeout=10).key == f"{prefix}{p.name}"


def test_a_stream_whose_client_disappears_leaves_the_server_serving(live_server, stub, prefix, photos):
    ids = [r.id for r in insert(stub, prefix, photos[:2]).values()]
    before = snapshot(live_server, stub, ids)
    feed: queue.Queue = queue.Queue()

    def requests():
        while True:
            item = feed.get()
            if item is None:
                return
            yield item

    call = stub.InsertStream(requests(), timeout=60)
    feed.put(pb.InsertStreamRequest(request_id="x", item=pb.InsertItem(key=prefix + "x", image=b"junk")))
    first = next(call)
    assert first.request_id == "x" and first.error.code_name == "INVALID_ARGUMENT"
    call.cancel()  # the client goes away mid-stream
    threading.Timer(0.5, feed.put, args=(None,)).start()
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert snapshot(live_server, stub, ids) == before
    assert stub.ListModels(pb.ListModelsRequest(), timeout=10).models
