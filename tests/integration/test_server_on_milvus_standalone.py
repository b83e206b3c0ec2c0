"""The whole server on a real Milvus standalone server (not Lite) and a real Redis.

Same code path as the embedded default, different URI: this is what a
networked deployment runs.
"""

from __future__ import annotations

import io
import uuid

import grpc
import pytest
from PIL import Image

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from lookalike_server.config import MilvusConfig, RedisConfig
from tests.conftest import redis_url_or_none, start_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def networked_server(milvus_server_uri, tmp_path_factory):
    prefix = f"it{uuid.uuid4().hex[:6]}"
    live = start_server(
        data_dir=str(tmp_path_factory.mktemp("net")),
        milvus=MilvusConfig(uri=milvus_server_uri, collection_prefix=prefix, consistency_level="Strong"),
        redis=RedisConfig(url=redis_url_or_none() or "", key_prefix=f"{prefix}:"),
    )
    yield live
    live.server.stop(0)


def test_insert_search_delete_on_milvus_standalone(networked_server, photos):
    stub = pb_grpc.LookalikeStub(grpc.insecure_channel(networked_server.target))
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert all(m.collection.startswith("it") for m in models.values())
    items = [pb.InsertItem(key=p.name, image=p.read_bytes(), attributes={"n": str(i)}) for i, p in enumerate(photos)]
    results = stub.Insert(pb.InsertRequest(items=items), timeout=120).results
    ids = {p.name: r.id for p, r in zip(photos, results, strict=True)}
    assert all(r.created for r in results)

    img = Image.open(photos[1]).convert("RGB")
    w, h = img.size
    buf = io.BytesIO()
    img.crop((w // 10, h // 10, w - w // 10, h - h // 10)).save(buf, "JPEG", quality=85)
    resp = stub.Search(pb.SearchRequest(image=buf.getvalue(), top_k=3), timeout=60)
    assert {r.model for r in resp.results} == set(models)
    for r in resp.results:
        assert r.hits[0].id == ids[photos[1].name] and r.hits[0].key == photos[1].name

    filtered = stub.Search(
        pb.SearchRequest(id=ids[photos[0].name], top_k=5, filter=pb.Filter(attributes={"n": "2"})), timeout=60
    )
    for r in filtered.results:
        assert [h.id for h in r.hits] == [ids[photos[2].name]]

    stub.Delete(pb.DeleteRequest(id=ids[photos[1].name]), timeout=60)
    resp = stub.Search(pb.SearchRequest(image=buf.getvalue(), top_k=3), timeout=60)
    for r in resp.results:
        assert ids[photos[1].name] not in [h.id for h in r.hits]
