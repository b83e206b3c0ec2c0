"""The invariant under real faults: a Redis stall past two timeouts, and a SIGINT of ``lookalike index``.

After each fault every acknowledged item must be complete, with a row in every
model it lists, and found first by a search with its own vector; a retry of
what failed must succeed; nothing unfinished may remain after the sweep.
"""

from __future__ import annotations

import io
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from PIL import Image

from lookalike_server.config import MilvusConfig, ModelsConfig, RedisConfig
from lookalike_server.domain import InsertItem, InsertResult, RequestContext, SearchQuery
from lookalike_server.errors import ServiceError
from lookalike_server.service import LookalikeService
from tests.conftest import ROOT, start_server
from tests.integration.test_store_outages import own_redis  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def distinct_photo(path: Path, rng: random.Random, size: int = 160) -> bytes:
    """A JPEG of a real photo with a few random pixels: distinct content and vector."""
    img = Image.open(path).convert("RGB")
    img.thumbnail((size, size))
    for _ in range(16):
        img.putpixel((rng.randrange(img.width), rng.randrange(img.height)), tuple(rng.randrange(256) for _ in "rgb"))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def assert_invariant(service: LookalikeService, acked: dict[int, InsertResult]) -> None:
    """Every acknowledged item is complete, has its rows, and its own vector finds it first."""
    assert service.redis is not None and service.milvus is not None
    records = service.redis.get_many(list(acked))
    for item_id, result in acked.items():
        rec = records.get(item_id)
        assert rec is not None and rec.state == "complete", f"acknowledged item {item_id} is {rec}"
        for name in result.models:
            collection = service.collections[name]
            assert item_id in service.milvus.get_vectors(collection, [item_id]), f"ghost: {item_id} in {name}"
            (hits,) = service.search(SearchQuery(item_id=item_id, models=(name,), top_k=1), RequestContext(60))[0]
            assert hits.hits and hits.hits[0].id == item_id


def test_a_redis_stall_past_two_timeouts_during_inserts_leaves_no_ghost(tmp_path, own_redis, photos) -> None:  # noqa: F811
    proc, url = own_redis
    live = start_server(
        data_dir=str(tmp_path),
        models=ModelsConfig(only=("mobilenet_v2",)),
        redis=RedisConfig(url=url, timeout_s=1.0),
        milvus=MilvusConfig(uri=str(tmp_path / "milvus.db"), consistency_level="Strong"),
    )
    service: LookalikeService = live.server.service  # type: ignore[attr-defined]
    acked: dict[int, InsertResult] = {}
    failed: list[InsertItem] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        i = 0
        rng = random.Random(n)
        while not stop.is_set():
            data = distinct_photo(photos[(n + i) % len(photos)], rng)
            item = InsertItem(f"stall/{n}/{i}", data)
            i += 1
            try:
                (r,), _ = service.insert([item], [], RequestContext(30))
                with lock:
                    acked[r.id] = r
            except ServiceError:
                with lock:
                    failed.append(item)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    try:
        for t in threads:
            t.start()
        for _ in range(2):  # two rounds: on the first release this left a ghost in 2 of 2 runs
            time.sleep(1.5)
            proc.send_signal(signal.SIGSTOP)
            time.sleep(3.0)  # > 2 × the 1 s Redis timeout
            proc.send_signal(signal.SIGCONT)
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(60)
        assert acked and failed, f"the stall should hit some inserts: {len(acked)} acked, {len(failed)} failed"
        assert_invariant(service, acked)
        # What failed succeeds when retried, and is then whole too.
        for item in failed:
            (r,), _ = service.insert([item], [], RequestContext(30))
            acked[r.id] = r
        assert_invariant(service, acked)
        service.repair(verify=True)
        assert service.redis.list_unfinished() == []
        assert_invariant(service, acked)
        rows = service.milvus.count(service.collections["mobilenet_v2"])
        assert rows == len(acked), "one row per acknowledged item, no orphan"
    finally:
        stop.set()
        live.server.stop(0)  # type: ignore[attr-defined]


def _photo_dir(root: Path, photos: list[Path], n: int, seed: int = 7) -> Path:
    root.mkdir()
    rng = random.Random(seed)
    for i in range(n):
        # Photo-sized files, so the server is still busy with the cancelled
        # inserts when the re-run arrives (the race of issue 8 item 1).
        (root / f"p{i:03d}.jpg").write_bytes(distinct_photo(photos[i % len(photos)], rng, size=640))
    return root


def _cli(target: str, *args: str) -> list[str]:
    code = "import sys; from lookalike.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code, "--target", target, "--timeout", "60", *args]


# The CLI as a terminal starts it: SIGINT delivered and raising KeyboardInterrupt. A child
# inherits an ignored or blocked SIGINT from its parent, and a suite started as a background
# job of a script (`nohup bash .ci/run &`) runs with SIGINT ignored from the start: the CLI
# then ran to the end through every SIGINT. What it inherited is printed to stderr, for the
# failure message.
_INTERACTIVE_CLI = (
    "import signal, sys; "
    "print('inherited SIGINT:', signal.getsignal(signal.SIGINT), "
    "'blocked:', sorted(signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})), file=sys.stderr); "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from lookalike.cli import main; sys.exit(main())"
)


def _interruptible_cli(target: str, *args: str) -> list[str]:
    return [sys.executable, "-c", _INTERACTIVE_CLI, "--target", target, "--timeout", "60", *args]


def test_an_interrupted_index_then_a_re_run_loses_nothing_and_tells_the_truth(tmp_path, photos) -> None:
    from tests.conftest import redis_url_or_none

    url = redis_url_or_none()
    live = start_server(
        data_dir=str(tmp_path / "data"),
        models=ModelsConfig(only=("mobilenet_v2",)),
        redis=RedisConfig(url=url or "", key_prefix=f"lookalike-sigint-{uuid.uuid4().hex[:8]}:"),
        milvus=MilvusConfig(uri=str(tmp_path / "milvus.db"), consistency_level="Strong"),
    )
    service: LookalikeService = live.server.service  # type: ignore[attr-defined]
    n = 96
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'client'}{os.pathsep}{ROOT / 'server'}"}
    try:
        stored, traces = 0, []
        for trial in range(2):
            # On a fast, quiet machine the whole run can finish before the SIGINT lands
            # (CI once saw all 96 indexed, exit 0): that run proves nothing here, so it
            # counts as stored and another folder is tried, up to 4 times.
            for attempt in range(4):
                root = _photo_dir(tmp_path / f"photos{trial}-{attempt}", photos, n, seed=10 * trial + attempt)
                assert service.redis is not None
                reserved_key = service.redis._keys.prefix + "idx:sha"
                # Read before the CLI starts: read after, it may already count some of this run.
                start = service.redis.client.hlen(reserved_key)
                proc = subprocess.Popen(
                    _interruptible_cli(live.target, "index", str(root), "--batch", "32", "-q"),
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                deadline, polls = time.monotonic() + 120, []
                # Interrupt mid-run, once a first few items have been reserved (a window
                # of 32 is in flight by then). On the first release this left 13 of 96
                # files ABORTED on the re-run.
                while time.monotonic() < deadline and proc.poll() is None:
                    polls.append(service.redis.client.hlen(reserved_key) - start)
                    if polls[-1] >= 8:
                        break
                    time.sleep(0.005)
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=60)
                stored += n
                if proc.returncode == 0 and f"{n} indexed" in out:
                    seen = f"reserved counts seen {polls[:5]}...{polls[-5:]} of {len(polls)}"
                    traces.append(f"attempt {attempt}: {seen}; {err.strip()[:200]}")
                    continue
                assert proc.returncode == 130, f"not interrupted mid-run: {proc.returncode} {out} {err}"
                break
            else:
                pytest.fail(f"the index run finished before the interrupt in all 4 attempts of trial {trial}: {traces}")
            # The immediate re-run: everything ends stored, and the summary says so.
            rerun = subprocess.run(
                _cli(live.target, "index", str(root), "--batch", "32", "-q"),
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert rerun.returncode == 0, rerun.stdout + rerun.stderr
            m = re.search(r"(\d+) indexed, (\d+) already indexed, (\d+) failed", rerun.stdout)
            assert m and int(m[1]) + int(m[2]) == n and m[3] == "0", rerun.stdout
            for path in sorted(root.iterdir()):
                item = service.get(key=str(path))
                assert item.models == ("mobilenet_v2",)
            assert service.milvus is not None
            assert service.milvus.count(service.collections["mobilenet_v2"]) == stored
        service.repair(verify=True)
        assert service.redis.list_unfinished() == []
    finally:
        live.server.stop(0)  # type: ignore[attr-defined]
