"""Fused search over gRPC against a brute-force computation over every stored vector.

Runs against ``live_server`` (the shipped models, Milvus Lite, Redis). The test indexes
16 items of its own (8 photos and a crop of each) under a key prefix, reads their stored
vectors back from Milvus and recomputes, with numpy, what the fused list must be.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import uuid

import grpc
import numpy as np
import pytest
from PIL import Image

from lookalike.client import AsyncLookalikeClient, Fusion, InvalidArgumentError, LookalikeClient, SearchQuery
from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc

MODELS = ["mobilenet_v2", "efficientnet_lite0"]


def _jpeg(img: Image.Image, salt: str) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=92, comment=salt.encode())
    return buf.getvalue()


@pytest.fixture(scope="module")
def indexed(live_server, photos):
    """16 items under a fresh prefix: id -> key, and each model's stored vectors by id."""
    prefix = f"fused-{uuid.uuid4().hex[:8]}/"
    items = []
    for p in photos:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        crop = img.crop((w // 6, h // 6, w - w // 6, h - h // 6))
        items.append(pb.InsertItem(key=f"{prefix}{p.stem}.jpg", image=_jpeg(img, prefix)))
        items.append(pb.InsertItem(key=f"{prefix}{p.stem}-crop.jpg", image=_jpeg(crop, prefix)))
    stub = pb_grpc.LookalikeStub(grpc.insecure_channel(live_server.target))
    resp = stub.Insert(pb.InsertRequest(items=items, models=MODELS), timeout=120)
    keys = {r.id: it.key for r, it in zip(resp.results, items, strict=True)}
    service = live_server.server.service
    vectors = {m: service.milvus.get_vectors(service.collections[m], list(keys)) for m in MODELS}
    assert all(len(v) == len(keys) for v in vectors.values())
    return prefix, keys, vectors


def brute_force(vectors, query_id, candidates: int | None, weights=None):
    """Expected fused order: each model's exact nearest ``candidates``, their union, summed distances."""
    weights = weights or dict.fromkeys(MODELS, 1.0)
    dist: dict[str, dict[int, float]] = {}
    for m in MODELS:
        ids = sorted(i for i in vectors[m] if i != query_id)
        mat = np.stack([vectors[m][i] for i in ids]).astype(np.float64)
        q = vectors[m][query_id].astype(np.float64)
        dist[m] = dict(zip(ids, ((mat - q) ** 2).sum(axis=1).tolist(), strict=True))
    union: set[int] = set()
    for m in MODELS:
        ranked = sorted(dist[m], key=dist[m].__getitem__)
        union |= set(ranked if candidates is None else ranked[:candidates])
    fused = {i: sum(weights[m] * dist[m][i] for m in MODELS) for i in union}
    return sorted(fused, key=lambda i: (fused[i], i)), fused, dist


def test_distance_fusion_matches_brute_force_over_all_stored_vectors(live_server, indexed):
    prefix, keys, vectors = indexed
    query_id = next(iter(keys))
    with LookalikeClient(live_server.target) as client:
        res = client.search(id=query_id, exclude_self=True, key_prefix=prefix, top_k=10, fusion="distance")
    order, fused, dist = brute_force(vectors, query_id, candidates=None)
    assert res.fusion_method == "distance"
    # candidates default to 50 >= the 15 other items: the union is everything, so the fused
    # list is the exact brute-force ranking.
    assert [h.id for h in res.fused] == order[:10]
    for h in res.fused:
        assert h.key == keys[h.id]
        assert h.score == pytest.approx(fused[h.id], abs=1e-4)
        assert [s.model for s in h.models] == MODELS
        for s in h.models:
            assert s.distance == pytest.approx(dist[s.model][h.id], abs=1e-4)
    # The per-model lists are still there, unchanged in shape.
    assert [mh.model for mh in res.results] == MODELS
    assert all(len(mh.hits) == 10 for mh in res.results)


def test_few_candidates_fetch_the_missing_distances_from_stored_vectors(live_server, indexed):
    prefix, keys, vectors = indexed
    fetched_somewhere = False
    with LookalikeClient(live_server.target) as client:
        for query_id in list(keys)[:6]:
            res = client.search(
                id=query_id,
                exclude_self=True,
                key_prefix=prefix,
                top_k=3,
                fusion=Fusion("distance", weights={"mobilenet_v2": 2.0}, candidates=3),
            )
            weights = {"mobilenet_v2": 2.0, "efficientnet_lite0": 1.0}
            order, fused, dist = brute_force(vectors, query_id, candidates=3, weights=weights)
            assert [h.id for h in res.fused] == order[:3]
            for h in res.fused:
                assert h.score == pytest.approx(fused[h.id], abs=1e-4)
                for s in h.models:
                    # rank 0 = the model did not return it: its distance came from the stored vector
                    fetched_somewhere |= s.rank == 0
                    assert s.distance == pytest.approx(dist[s.model][h.id], abs=1e-4)
    assert fetched_somewhere, "no query needed a distance that its model had not returned"


def test_rrf_over_grpc_and_search_stream(live_server, indexed):
    prefix, keys, vectors = indexed
    query_id = list(keys)[1]
    stub = pb_grpc.LookalikeStub(grpc.insecure_channel(live_server.target))
    req = pb.SearchRequest(
        id=query_id,
        exclude_self=True,
        top_k=5,
        filter=pb.Filter(key_prefix=prefix),
        fusion=pb.Fusion(method=pb.FUSION_METHOD_RRF, candidates=15),
    )
    resp = stub.Search(req, timeout=60)
    assert resp.fusion_method == pb.FUSION_METHOD_RRF
    _, _, dist = brute_force(vectors, query_id, candidates=None)
    ranks = {m: {i: r for r, i in enumerate(sorted(dist[m], key=dist[m].__getitem__), start=1)} for m in MODELS}
    expected = {i: sum(1 / (60 + ranks[m][i]) for m in MODELS) for i in dist[MODELS[0]]}
    order = sorted(expected, key=lambda i: (-expected[i], sum(dist[m][i] for m in MODELS), i))
    assert [h.id for h in resp.fused] == order[:5]
    assert [h.score for h in resp.fused] == pytest.approx([expected[i] for i in order[:5]])
    # The same request on SearchStream gets the same fused list.
    answers = list(stub.SearchStream(iter([pb.SearchStreamRequest(request_id="q", query=req)]), timeout=60))
    assert [h.id for h in answers[0].result.fused] == [h.id for h in resp.fused]
    # No fusion asked: no fused list, method unspecified.
    plain = stub.Search(pb.SearchRequest(id=query_id, top_k=3, filter=pb.Filter(key_prefix=prefix)), timeout=60)
    assert len(plain.fused) == 0 and plain.fusion_method == pb.FUSION_METHOD_UNSPECIFIED


def test_image_query_fuses_a_crop_to_its_original_first(live_server, indexed, photos):
    prefix, _, _ = indexed
    img = Image.open(photos[0]).convert("RGB")
    w, h = img.size
    query = _jpeg(img.crop((w // 10, h // 10, w - w // 10, h - h // 10)), "query")
    with LookalikeClient(live_server.target) as client:
        res = client.search(query, key_prefix=prefix, top_k=3, fusion=True)
    assert res.fusion_method in ("distance", "rrf")
    assert res.fused[0].key in (f"{prefix}{photos[0].stem}.jpg", f"{prefix}{photos[0].stem}-crop.jpg")


def test_an_item_under_one_model_only(live_server, indexed, photos):
    prefix, _, _ = indexed
    stub = pb_grpc.LookalikeStub(grpc.insecure_channel(live_server.target))
    solo_prefix = f"{prefix}solo/"
    img = Image.open(photos[2]).convert("RGB")
    (solo,) = stub.Insert(
        pb.InsertRequest(
            items=[pb.InsertItem(key=f"{solo_prefix}x.jpg", image=_jpeg(img, solo_prefix))], models=[MODELS[0]]
        ),
        timeout=60,
    ).results
    with LookalikeClient(live_server.target) as client:
        common = {"key_prefix": prefix, "top_k": 20, "models": MODELS}
        by_distance = client.search(img, fusion="distance", **common)
        by_rrf = client.search(img, fusion="rrf", **common)
    # Distance fusion cannot score it (no efficientnet vector) and leaves it out; RRF ranks it
    # on the one model that has it, and says so.
    assert solo.id not in [h.id for h in by_distance.fused]
    (entry,) = [h for h in by_rrf.fused if h.id == solo.id]
    assert [s.model for s in entry.models] == [MODELS[0]]
    assert entry.score == pytest.approx(1 / (60 + entry.models[0].rank))


@pytest.mark.parametrize(
    ("fusion", "extra", "message"),
    [
        (pb.Fusion(), {"models": ["mobilenet_v2"]}, "fusion combines two or more models"),
        (pb.Fusion(weights={"resnet": 1.0}), {}, r"weights name model\(s\) \['resnet'\]"),
        (pb.Fusion(weights={"mobilenet_v2": -0.5}), {}, "must be a finite number >= 0"),
        (pb.Fusion(weights={"mobilenet_v2": 0, "efficientnet_lite0": 0}), {}, "all 0"),
        (pb.Fusion(candidates=2), {"top_k": 5}, r"candidates must be 0 \(default\) or in top_k"),
        (pb.Fusion(method=7), {}, "unknown fusion method 7"),  # type: ignore[arg-type]
    ],
)
def test_invalid_fusion_is_invalid_argument_with_a_reason(live_server, indexed, fusion, extra, message):
    prefix, keys, _ = indexed
    stub = pb_grpc.LookalikeStub(grpc.insecure_channel(live_server.target))
    req = pb.SearchRequest(id=next(iter(keys)), filter=pb.Filter(key_prefix=prefix), fusion=fusion, **extra)
    with pytest.raises(grpc.RpcError) as err:
        stub.Search(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(message, err.value.details()), err.value.details()


def test_a_vector_query_cannot_fuse(live_server, indexed):
    _, keys, vectors = indexed
    vec = vectors[MODELS[0]][next(iter(keys))]
    with LookalikeClient(live_server.target) as client, pytest.raises(InvalidArgumentError, match="two or more"):
        client.search(vector=vec, models=[MODELS[0]], fusion="rrf")


def test_cli_search_shows_a_fused_column_and_json(live_server, indexed, photos, tmp_path, capsys):
    from lookalike.cli import main

    prefix, keys, _ = indexed
    query_id = next(iter(keys))
    base = ["--target", live_server.target, "search", "--id", str(query_id), "--exclude-self"]
    base += ["--key-prefix", prefix, "--top-k", "3"]
    assert main([*base, "--fuse", "rrf", "--rrf-k", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[1:] == [*MODELS, "fused", "(rrf)"]
    assert len(lines) == 2 + 3
    page = tmp_path / "page.html"
    argv = [*base, "--fuse", "--weight", "mobilenet_v2=0.5", "--json", "--html", str(page)]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fusion_method"] == "distance" and len(data["fused"]) == 3
    first = data["fused"][0]
    assert {s["model"] for s in first["models"]} == set(MODELS)
    assert first["score"] == pytest.approx(
        sum((0.5 if s["model"] == "mobilenet_v2" else 1) * s["distance"] for s in first["models"]), abs=1e-5
    )
    assert "fused (distance)" in page.read_text()
    # A fusion option without --fuse is a usage error, said in one line.
    assert main([*base, "--weight", "mobilenet_v2=2"]) == 1
    assert "add --fuse" in capsys.readouterr().err


def test_async_client_and_search_stream_carry_fusion(live_server, indexed):
    prefix, keys, _ = indexed
    ids = list(keys)[:3]
    with LookalikeClient(live_server.target) as client:
        expected = {i: client.search(id=i, exclude_self=True, key_prefix=prefix, top_k=4, fusion="rrf") for i in ids}
        queries = [SearchQuery(id=i, exclude_self=True, top_k=4) for i in ids]
        # The stream's default fusion applies to every query; a query's own value wins.
        queries[2] = SearchQuery(id=ids[2], exclude_self=True, top_k=4, fusion=False)
        streamed = {r.index: r for r in client.search_stream(queries, key_prefix=prefix, fusion="rrf")}
    for index in (0, 1):
        got = streamed[index].result
        assert got is not None and got.fusion_method == "rrf"
        assert [h.id for h in got.fused] == [h.id for h in expected[ids[index]].fused]
    last = streamed[2].result
    assert last is not None and last.fusion_method is None and last.fused == []

    async def main() -> None:
        async with AsyncLookalikeClient(live_server.target) as client:
            res = await client.search(id=ids[0], exclude_self=True, key_prefix=prefix, top_k=4, fusion="rrf")
            assert [h.id for h in res.fused] == [h.id for h in expected[ids[0]].fused]
            assert res.fused[0].models[0].model == MODELS[0]

    asyncio.run(main())
