"""FindDuplicates on a small real index (live server: real models, Milvus Lite, Redis).

The expected groups are computed here, by brute force, from the models' own
embeddings of the same bytes (Embed RPC): all pairwise distances, then the
documented grouping (components of the pairs within the threshold, split by
leaders in id order). Every test works under a key prefix of its own, so the
shared session index holds other tests' items too without changing the answer.
"""

from __future__ import annotations

import io
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps
from PIL.PngImagePlugin import PngInfo

from lookalike.client import DuplicateGroup, DuplicatesSummary, LookalikeClient
from lookalike.errors import InvalidArgumentError, LookalikeError, NotFoundError, ResourceExhaustedError
from lookalike.v1 import lookalike_pb2 as pb
from tests import dupes_reference as reference

MODEL = "mobilenet_v2"


def _png(img: Image.Image, tag: str, **kw: object) -> bytes:
    info = PngInfo()
    info.add_text("test", tag)  # unique bytes per test run: content dedupe never merges with other tests
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info, **kw)
    return buf.getvalue()


def _jpeg(img: Image.Image, tag: str, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, comment=tag.encode())
    return buf.getvalue()


def planted_variants(path: Path, tag: str) -> dict[str, bytes]:
    """The photo (as a PNG tagged with ``tag``) and edited copies of it (the demo's planted copies)."""
    with Image.open(path) as im:
        img = ImageOps.exif_transpose(im).convert("RGB")
    w, h = img.size
    return {
        "orig": _png(img, tag),
        # Same pixels, other bytes: an exact copy by embedding (content dedupe does not apply).
        "resave": _png(img, tag, compress_level=1),
        "scale50": _png(img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS), tag),
        "jpeg60": _jpeg(img, tag, 60),
        "crop90": _png(img.crop((w // 20, h // 20, w - w // 20, h - h // 20)), tag),
        "bright": _png(ImageEnhance.Brightness(img).enhance(1.15), tag),
    }


def brute_force_groups(ids: list[int], vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """One model's groups by brute force (:func:`tests.dupes_reference.brute_force_groups`)."""
    return reference.brute_force_groups(ids, {"model": vectors}, {"model": threshold})


def run_dupes(client: LookalikeClient, **kw: object) -> tuple[list[DuplicateGroup], DuplicatesSummary]:
    out = list(client.find_duplicates(MODEL, **kw))  # type: ignore[arg-type]
    summary = out.pop()
    assert isinstance(summary, DuplicatesSummary)
    assert all(isinstance(g, DuplicateGroup) for g in out)
    return out, summary  # type: ignore[return-value]


@pytest.fixture(scope="module")
def planted(live_server, photos: list[Path]) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Four photos with edited copies, and four photos alone, indexed under a fresh prefix."""
    prefix = f"dupes-{uuid.uuid4().hex[:8]}/"
    items: dict[str, bytes] = {}
    for p in photos[:8]:
        variants = planted_variants(p, prefix) if p in photos[:4] else {"orig": planted_variants(p, prefix)["orig"]}
        for name, data in variants.items():
            items[f"{prefix}{p.stem}/{name}"] = data
    # Originals first, as in a library where copies come later: the earliest id represents a group.
    keys = sorted(items, key=lambda k: not k.endswith("/orig"))
    with LookalikeClient(live_server.target, timeout=120) as client:
        ids = {}
        for i in range(0, len(keys), 8):
            chunk = keys[i : i + 8]
            results = client.insert([(k, items[k], {"photo": k.split("/")[1]}) for k in chunk])
            for key, res in zip(chunk, results, strict=True):
                assert res.created, key
                ids[key] = res.id
        batches = [keys[i : i + 8] for i in range(0, len(keys), 8)]
        vectors = np.concatenate([client.embed([items[k] for k in b], MODEL) for b in batches])
    return {"prefix": prefix, "keys": keys, "ids": ids, "vectors": vectors, "items": items}


def test_groups_match_brute_force_and_mark_exact(live_server, planted) -> None:  # type: ignore[no-untyped-def]
    prefix, keys, ids = planted["prefix"], planted["keys"], planted["ids"]
    with LookalikeClient(live_server.target) as client:
        groups, summary = run_dupes(client, key_prefix=prefix)
    assert summary.items_scanned == len(keys)
    assert summary.default_threshold and summary.threshold > 0
    assert summary.search_mode == "range"  # Milvus Lite 3.2.2 answers range searches
    expected = brute_force_groups([ids[k] for k in keys], planted["vectors"], summary.threshold)
    assert sorted(sorted(m.id for m in g.members) for g in groups) == expected
    assert summary.groups == len(groups)

    by_key = {m.key: (g, m) for g in groups for m in g.members}
    for stem in sorted({k.split("/")[1] for k in keys}):
        family = [k for k in keys if k.split("/")[1] == stem]
        if len(family) == 1:
            assert family[0] not in by_key, f"distinct photo {family[0]} was grouped"
            continue
        # Every planted copy is found, in its original's group, the original representing it.
        group = by_key[f"{prefix}{stem}/orig"][0]
        assert {m.key for m in group.members} == set(family)
        assert group.representative.key == f"{prefix}{stem}/orig"
        assert group.representative_id == ids[f"{prefix}{stem}/orig"] == min(m.id for m in group.members)
        exact = {m.key.rsplit("/", 1)[1] for m in group.copies if m.exact}
        assert exact == {"resave"}, exact  # same pixels; every real edit is "similar"
        assert group.exact_count == 1
        dists = [m.distance for m in group.members]
        assert dists[0] == 0.0 and dists == sorted(dists) and max(dists) <= summary.threshold


def test_pagination_gives_whole_groups_and_pages_on_the_wire(live_server, planted) -> None:  # type: ignore[no-untyped-def]
    prefix = planted["prefix"]
    with LookalikeClient(live_server.target) as client:
        whole, _ = run_dupes(client, key_prefix=prefix)
        paged, _ = run_dupes(client, key_prefix=prefix, page_size=2)
        assert [[m.id for m in g.members] for g in paged] == [[m.id for m in g.members] for g in whole]
        # The raw stream: a group of n members comes in ceil(n / 2) messages.
        raw = list(
            client.stub.FindDuplicates(
                pb.FindDuplicatesRequest(model=MODEL, filter=pb.Filter(key_prefix=prefix), page_size=2), timeout=60
            )
        )
    pages = [r.group for r in raw if r.WhichOneof("kind") == "group"]
    assert raw[-1].WhichOneof("kind") == "summary"
    biggest = max(whole, key=lambda g: len(g.members))
    mine = [p for p in pages if p.representative_id == biggest.representative_id]
    n = len(biggest.members)
    assert [p.offset for p in mine] == list(range(0, n, 2))
    assert [p.more for p in mine] == [True] * (len(mine) - 1) + [False]
    assert all(p.size == n and len(p.members) <= 2 for p in mine)


def test_filters_and_exact_only(live_server, planted, photos: list[Path]) -> None:  # type: ignore[no-untyped-def]
    prefix = planted["prefix"]
    stem = photos[0].stem
    with LookalikeClient(live_server.target) as client:
        one, summary = run_dupes(client, key_prefix=f"{prefix}{stem}/")
        assert summary.items_scanned == 6
        family = sorted(k for k in planted["keys"] if f"/{stem}/" in k)
        assert [sorted(m.key for m in g.members) for g in one] == [family]
        by_attr, _ = run_dupes(client, key_prefix=prefix, attributes={"photo": stem})
        assert [g.representative_id for g in by_attr] == [g.representative_id for g in one]
        exact, _ = run_dupes(client, key_prefix=prefix, exact_only=True)
        assert exact and all(g.exact_count >= 1 for g in exact)
        # A tight threshold leaves only the exact copies.
        tight, s = run_dupes(client, key_prefix=prefix, threshold=1e-3)
        assert not s.default_threshold and s.threshold == pytest.approx(1e-3)
        assert all(all(m.exact for m in g.copies) for g in tight)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"threshold": 5.0}, InvalidArgumentError, "threshold"),
        ({"threshold": -0.5}, InvalidArgumentError, "threshold"),
        ({"page_size": 5000}, InvalidArgumentError, "page_size"),
        ({"attributes": {"no_such_attr_xyz": "1"}}, InvalidArgumentError, "unknown attribute"),
        ({"attributes": {"bad name": "1"}}, InvalidArgumentError, "attribute name"),
    ],
)
def test_bad_input_is_invalid_argument(live_server, kwargs, error, words) -> None:  # type: ignore[no-untyped-def]
    with LookalikeClient(live_server.target) as client, pytest.raises(error) as info:
        list(client.find_duplicates(MODEL, **kwargs))
    assert words in str(info.value)


def test_unknown_and_missing_model(live_server) -> None:  # type: ignore[no-untyped-def]
    with LookalikeClient(live_server.target) as client:
        with pytest.raises(NotFoundError):
            list(client.find_duplicates("no_such_model"))
        with pytest.raises(InvalidArgumentError) as info:
            list(client.find_duplicates(None))
        assert "model is required" in str(info.value) and MODEL in str(info.value)


def test_deadline_is_honoured(live_server, planted) -> None:  # type: ignore[no-untyped-def]
    with LookalikeClient(live_server.target) as client, pytest.raises(LookalikeError) as info:
        list(client.find_duplicates(MODEL, timeout=0.001))
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_cli_dupes_finds_every_planted_copy_on_a_demo_folder(  # type: ignore[no-untyped-def]
    live_server, photos: list[Path], tmp_path: Path, capsys
) -> None:
    """The issue's acceptance check: a demo folder plus copied and edited files."""
    from lookalike.cli import main

    name = f"clidemo-{uuid.uuid4().hex[:8]}"
    demo = tmp_path / name
    (demo / "copies").mkdir(parents=True)
    planted: dict[str, str] = {}  # planted copy's key -> its original's key
    for p in photos:
        (demo / f"{p.stem}.png").write_bytes(planted_variants(p, name)["orig"])
    for p in photos[:3]:
        for edit, data in planted_variants(p, name).items():
            if edit == "orig":
                continue
            copy = demo / "copies" / f"{p.stem}_{edit}.{'jpg' if edit.startswith('jpeg') else 'png'}"
            copy.write_bytes(data)
            planted[f"{name}/copies/{copy.name}"] = f"{name}/{p.stem}.png"
    # A byte-for-byte copy is the same content: the index recognises it, so it is no new item.
    (demo / "copies" / f"bytecopy_{photos[3].stem}.png").write_bytes((demo / f"{photos[3].stem}.png").read_bytes())

    target = ["--target", live_server.target]
    # The library first, then the folder of copies (so each original is the earliest of its group).
    assert main([*target, "index", str(demo), "--key-prefix", f"{name}/", "-q"]) == 0
    assert f"{len(photos)} indexed, 0 already indexed" in capsys.readouterr().out
    assert main([*target, "index", str(demo), "-r", "--key-prefix", f"{name}/", "-q"]) == 0
    # The originals again, and the byte-for-byte copy: same content, no new item.
    assert f"{len(planted)} indexed, {len(photos) + 1} already indexed" in capsys.readouterr().out
    page = tmp_path / "dupes.html"
    rc = main(
        [
            *target,
            "dupes",
            "--model",
            MODEL,
            "--prefix",
            f"{name}/",
            "--html",
            str(page),
            "--thumbs-root",
            str(tmp_path),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert f"{len(photos) + len(planted)} items scanned" in out

    with LookalikeClient(live_server.target) as client:
        groups, _ = run_dupes(client, key_prefix=f"{name}/")
    group_of = {m.key: g for g in groups for m in g.members}
    for copy, original in planted.items():
        assert copy in group_of, f"planted copy {copy} not found"
        assert group_of[copy].representative.key == original
        assert copy in out
    exact = {m.key for g in groups for m in g.copies if m.exact}
    assert exact == {k for k in planted if "_resave" in k}, "only pixel-identical copies are exact"
    distinct = {f"{name}/{p.stem}.png" for p in photos[3:]}
    assert not distinct & set(group_of), "a distinct photo was grouped"
    html = page.read_text()
    assert html.count('class="group"') == len(groups) == 3
    assert html.count("<img") == sum(len(g.members) for g in groups)  # every member has its thumbnail


OTHER = "efficientnet_lite0"


def test_several_models_match_brute_force(live_server, planted, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from lookalike.cli import main

    prefix, keys, ids, items = planted["prefix"], planted["keys"], planted["ids"], planted["items"]
    with LookalikeClient(live_server.target, timeout=120) as client:
        out = list(client.find_duplicates([MODEL, OTHER], key_prefix=prefix))
        other = np.concatenate(
            [client.embed([items[k] for k in keys[i : i + 8]], OTHER) for i in range(0, len(keys), 8)]
        )
        single, _ = run_dupes(client, key_prefix=prefix)
    summary = out.pop()
    groups = out
    assert isinstance(summary, DuplicatesSummary)
    assert summary.models == [MODEL, OTHER] and summary.model == MODEL and summary.default_threshold
    assert set(summary.thresholds) == {MODEL, OTHER} and summary.threshold == summary.thresholds[MODEL]
    assert summary.items_scanned == len(keys)
    vectors = {MODEL: planted["vectors"], OTHER: other}
    expected = reference.brute_force_groups([ids[k] for k in keys], vectors, dict(summary.thresholds))
    assert sorted(sorted(m.id for m in g.members) for g in groups) == expected
    # Every planted copy is still with its original (the one-model walk already found them all).
    group_of = {m.id: g.representative_id for g in groups for m in g.members}
    for g in single:
        assert {group_of.get(m.id) for m in g.members} == {g.representative_id}
    row = {ids[k]: i for i, k in enumerate(keys)}
    for g in groups:
        rep = row[g.representative_id]
        for m in g.members:
            for model, v in vectors.items():
                want = float(((v[row[m.id]].astype(np.float64) - v[rep]) ** 2).sum())
                assert m.distances[model] == pytest.approx(want, abs=1e-4)
            assert m.distance == m.distances[MODEL]
            assert any(m.distances[x] <= t for x, t in summary.thresholds.items())
        assert {m.key.rsplit("/", 1)[1] for m in g.copies if m.exact} <= {"resave"}

    # The CLI compares under every loaded model unless told otherwise.
    assert main(["--target", live_server.target, "dupes", "--prefix", prefix]) == 0
    text = capsys.readouterr().out
    assert f"{MODEL}/{OTHER}: near when {MODEL} within" in text
    assert f"{len(groups)} groups" in text
    rc = main(["--target", live_server.target, "dupes", "--prefix", prefix, "--threshold", "0.2"])
    assert rc != 0 and "--threshold applies to one model" in capsys.readouterr().err


def test_several_models_refuse_a_threshold(live_server) -> None:  # type: ignore[no-untyped-def]
    with LookalikeClient(live_server.target) as client, pytest.raises(InvalidArgumentError) as info:
        list(client.find_duplicates([MODEL, OTHER], threshold=0.3))
    assert "threshold must be 0" in str(info.value)
    stub_req = pb.FindDuplicatesRequest(model=OTHER, models=[MODEL, OTHER])
    channel = grpc.insecure_channel(live_server.target)
    try:
        from lookalike.v1 import lookalike_pb2_grpc

        with pytest.raises(grpc.RpcError) as err:
            list(lookalike_pb2_grpc.LookalikeStub(channel).FindDuplicates(stub_req, timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "disagree" in err.value.details()
    finally:
        channel.close()


def test_aio_client_gives_the_same_groups(live_server, planted) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from lookalike.aio import AsyncLookalikeClient

    async def walk() -> list[object]:
        async with AsyncLookalikeClient(live_server.target) as client:
            return [part async for part in client.find_duplicates(MODEL, key_prefix=planted["prefix"], page_size=2)]

    parts = asyncio.run(walk())
    with LookalikeClient(live_server.target) as client:
        groups, _ = run_dupes(client, key_prefix=planted["prefix"])
    assert isinstance(parts[-1], DuplicatesSummary)
    assert parts[:-1] == groups


def _when_admitted(fn):  # type: ignore[no-untyped-def]
    """``fn()``, retried while an earlier test's walk still holds the only walk slot."""
    import time

    for _ in range(100):
        try:
            return fn()
        except ResourceExhaustedError:
            time.sleep(0.1)  # a finished or cancelled walk's last step is still running
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            time.sleep(0.1)
    pytest.fail("no walk slot came free in 10 s")


def test_cancel_ends_the_walk_and_frees_its_slot(live_server, planted) -> None:  # type: ignore[no-untyped-def]
    request = pb.FindDuplicatesRequest(model=MODEL, filter=pb.Filter(key_prefix=planted["prefix"]), page_size=1)
    with LookalikeClient(live_server.target) as client:
        before = client.stats().requests_by_status

        def first_message():  # type: ignore[no-untyped-def]
            call = client.stub.FindDuplicates(request, timeout=60)
            return call, next(call)

        call, first = _when_admitted(first_message)
        assert first.WhichOneof("kind") == "group"
        call.cancel()  # the walk holds the only slot (limits.max_dupes_walks = 1) until it notices
        groups, _ = _when_admitted(lambda: run_dupes(client, key_prefix=planted["prefix"]))
        assert groups

        def grew(status: str) -> int:
            key = f"FindDuplicates:{status}"
            return counts.get(key, 0) - before.get(key, 0)

        # The cancelled walk is counted when its handler ends, which may come after the slot
        # is free and the second walk has run: wait for both walks to be counted.
        deadline = time.monotonic() + 10
        while True:
            counts = client.stats().requests_by_status
            if grew("CANCELLED") + grew("OK") >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    # The server counts the cancelled walk as CANCELLED, unless (a small index on a fast
    # box) it had already sent its last page when the cancel arrived: then both walks are OK.
    assert grew("CANCELLED") == 1 or grew("OK") == 2, counts
