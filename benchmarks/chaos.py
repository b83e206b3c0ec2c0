"""Chaos harness: mixed load while processes are killed or frozen, then the write invariant checked.

Each round runs, for ``--round-s`` seconds, unary Insert, InsertStream, Search
and Delete clients plus a ``lookalike index`` run that is interrupted (SIGINT)
and re-run, while at a random moment one process gets SIGKILL or SIGSTOP
(continued a few seconds later):

* ``--stores embedded``: the server and its embedded redis-server (Milvus Lite
  runs inside the server process);
* ``--stores external``: the server(s), a real Redis (its own redis-server on a
  loopback port, AOF ``always`` as an operator would run it) and a Milvus
  standalone server (``scripts/milvus_server.py``); ``--replicas 2`` runs two
  server processes on them.

Killed processes are restarted (a server whose embedded Redis was killed is
restarted, as an operator or supervisor would). Then the round is settled: the
CLI re-run completes, a killed server's lease (30 s) is waited out, the
servers restart gracefully (their start-up sweep
runs), and the invariant is checked over every item whose insert was
acknowledged OK and not deleted since:

* **lost**: ``Get(key)`` does not return it under its acknowledged id;
* **ghosts**: its own stored vector does not find it first in every model it
  was acknowledged under, or (over every record in Redis) a complete record
  lacks its row in a collection it lists;
* **duplicates**: two records for one content hash, or a retried insert of
  acknowledged content answering another id;
* **orphan rows**: Milvus rows with no complete record listing that model;
* **pending**: records still pending after the sweep;
* **undeleted**: an acknowledged Delete whose item is still there;
* **orphan processes**: redis-servers or servers of this harness left running.

Usage::

    nice -n 10 python benchmarks/chaos.py --stores embedded --rounds 30
    nice -n 10 python benchmarks/chaos.py --stores external --rounds 30 --replicas 2

It prints one line per round and the table at the end (``--out`` writes it).
The short version in CI is ``tests/integration/test_chaos.py``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "client"))
sys.path.insert(0, str(ROOT / "server"))
sys.path.insert(0, str(ROOT))

from lookalike.v1 import lookalike_pb2 as pb  # noqa: E402
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc  # noqa: E402

KEY_PREFIX = "chaos:"
COLLECTION_PREFIX = "chaos"
MODEL = "mobilenet_v2"
_READY = re.compile(r"lookalike-server ready on (\S+)")


# ------------------------------------------------------------------ helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def processes_under(base: Path) -> list[tuple[int, str]]:
    """(pid, comm) of live processes whose working directory or command line is under ``base``."""
    found = []
    want = str(base.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if (cwd.startswith(want) or want in cmd) and alive(int(entry.name)):
            found.append((int(entry.name), comm))
    return found


def make_image(seed: int) -> bytes:
    """A small distinct PNG: a random gradient plus noise, so its embedding is distinct too."""
    rng = np.random.default_rng(seed)
    h = w = 64
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(yy * rng.uniform(0, 4) + xx * rng.uniform(0, 4) + rng.uniform(0, 255)) % 255] * 3, -1)
    img = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def redis_server_exe() -> str:
    from lookalike_server.store.embedded_redis_processes import redis_server_executable

    return shutil.which("redis-server") or redis_server_executable()


# ---------------------------------------------------------------- processes


@dataclass
class ServerProc:
    index: int
    args: list[str]
    log: Path
    proc: subprocess.Popen[str] | None = None
    target: str = ""

    def start(self, env: dict[str, str], timeout_s: float = 120.0) -> None:
        logf = self.log.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lookalike_server", *self.args],
            stdout=subprocess.PIPE,
            stderr=logf,
            text=True,
            env=env,
            cwd=ROOT,
        )
        logf.close()
        assert self.proc.stdout is not None
        box: list[str] = []

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                m = _READY.match(line)
                if m and not box:
                    box.append(m.group(1))

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not box:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.index} exited {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {self.index} not ready in {timeout_s} s; see {self.log}")
            time.sleep(0.05)
        self.target = box[0]

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@dataclass
class RedisProc:
    """A real Redis of the harness's own (external mode)."""

    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [redis_server_exe(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                import redis

                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None


# ------------------------------------------------------------------- ledger


@dataclass
class Ledger:
    """What clients were told: acknowledged items, acknowledged deletes, uncertain outcomes."""

    acked: dict[str, tuple[int, str, tuple[str, ...]]] = field(default_factory=dict)  # key -> id, sha, models
    images: dict[str, bytes] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    uncertain: set[str] = field(default_factory=set)
    # Keys a Delete was sent for. An insert of such a key that was in flight
    # while the Delete ran may be answered before or after it: its answer
    # proves nothing about what is stored now, so it is not counted.
    delete_targets: set[str] = field(default_factory=set)
    raced_deletes: int = 0
    id_changed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, key: str, res: Any) -> None:
        with self.lock:
            if key in self.delete_targets:
                self.raced_deletes += 1
                return
            prev = self.acked.get(key)
            if prev is not None and prev[0] != res.id:
                self.id_changed += 1  # a retry of acknowledged content answered another id
            self.acked[key] = (int(res.id), res.content_sha256, tuple(res.models))
            self.uncertain.discard(key)


# ------------------------------------------------------------------ harness


@dataclass
class RoundResult:
    faults: Counter[str]
    acknowledged: int
    lost: int
    ghosts: int
    duplicates: int
    orphan_rows: int
    pending: int
    undeleted: int
    orphan_processes: int
    self_recall: float
    notes: list[str]


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(tempfile.mkdtemp(prefix="chaos-", dir=args.workdir or None))
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT / 'client'}:{ROOT / 'server'}"}
        self.ledger = Ledger()
        self.seq = 0
        self.seq_lock = threading.Lock()
        self.redis: RedisProc | None = None
        self.milvus_uri = ""
        self.milvus_dir = self.work / "milvus"
        self.servers: list[ServerProc] = []
        self.cli_dir = self.work / "cli-images"
        self.orphans_seen = 0  # embedded redis-servers that outlived a killed server
        self.server_killed_at: float | None = None

    # -------------------------------------------------------------- set-up

    def server_args(self, i: int) -> list[str]:
        a = self.args
        args = ["--port", "0", "--models-only", MODEL, "--grace-s", "2", "--log-level", "INFO",
                "--redis-key-prefix", KEY_PREFIX, "--milvus-collection-prefix", COLLECTION_PREFIX,
                "--milvus-consistency-level", "Strong", "--redis-timeout-s", str(a.redis_timeout_s)]  # fmt: skip
        if a.stores == "external":
            assert self.redis is not None
            args += ["--data-dir", str(self.work / f"server{i}"), "--redis-url", f"redis://127.0.0.1:{self.redis.port}/0",
                     "--milvus-uri", self.milvus_uri]  # fmt: skip
        else:
            args += ["--data-dir", str(self.work / "data")]
        return args

    def setup(self) -> None:
        if self.args.stores == "external":
            self.redis = RedisProc(self.work / "redis")
            self.redis.start()
            self.start_milvus()
        for i in range(self.args.replicas):
            s = ServerProc(i, self.server_args(i), self.work / f"server{i}.log")
            s.start(self.env)
            self.servers.append(s)
        self.cli_dir.mkdir()

    def start_milvus(self) -> None:
        sys.path.insert(0, str(ROOT / "scripts"))
        import milvus_server

        self.milvus_uri = milvus_server.start(self.milvus_dir).uri

    def milvus_pid(self) -> int:
        try:
            return int((self.milvus_dir / "milvus.pid").read_text())
        except (OSError, ValueError):
            return 0

    def embedded_redis_pid(self) -> int:
        try:
            return int((self.work / "data" / "redis.pid").read_text())
        except (OSError, ValueError):
            return 0

    def teardown(self) -> int:
        """Stops everything; returns how many of its processes were still alive after."""
        for s in self.servers:
            s.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.milvus_uri:
            import milvus_server

            milvus_server.stop(self.milvus_dir, grace_s=5)
        deadline = time.monotonic() + 10
        while (left := processes_under(self.work)) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return len(left)

    # ---------------------------------------------------------------- load

    def next_seq(self) -> int:
        with self.seq_lock:
            self.seq += 1
            return self.seq

    def stub(self) -> pb_grpc.LookalikeStub:
        s = self.rng.choice(self.servers)
        return pb_grpc.LookalikeStub(grpc.insecure_channel(s.target))

    def new_item(self) -> pb.InsertItem:
        n = self.next_seq()
        key = f"item/{n}"
        img = make_image(self.args.seed * 1_000_003 + n)
        with self.ledger.lock:
            self.ledger.images[key] = img
            self.ledger.uncertain.add(key)
        return pb.InsertItem(key=key, image=img, attributes={"n": str(n)})

    def retry_item(self) -> pb.InsertItem | None:
        with self.ledger.lock:
            keys = [k for k in self.ledger.acked if k not in self.ledger.delete_targets]
        if not keys:
            return None
        key = self.rng.choice(keys)
        return pb.InsertItem(key=key, image=self.ledger.images[key])

    def unary_inserter(self, stop: threading.Event) -> None:
        while not stop.wait(self.args.insert_pause_s):
            items = [self.new_item() for _ in range(self.rng.randint(1, 3))]
            if self.rng.random() < 0.2 and (again := self.retry_item()) is not None:
                items.append(again)
            with contextlib.suppress(grpc.RpcError):
                resp = self.stub().Insert(pb.InsertRequest(items=items), timeout=20)
                for item, res in zip(items, resp.results, strict=True):
                    self.ledger.ack(item.key, res)

    def stream_inserter(self, stop: threading.Event) -> None:
        while not stop.wait(self.args.insert_pause_s):
            items = {str(i): self.new_item() for i in range(self.rng.randint(2, 6))}
            reqs = [pb.InsertStreamRequest(request_id=rid, item=it) for rid, it in items.items()]
            with contextlib.suppress(grpc.RpcError):
                for resp in self.stub().InsertStream(iter(reqs), timeout=30):
                    if resp.HasField("result"):
                        self.ledger.ack(items[resp.request_id].key, resp.result)

    def searcher(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self.ledger.lock:
                ids = [v[0] for v in self.ledger.acked.values()]
            if not ids:
                time.sleep(0.1)
                continue
            with contextlib.suppress(grpc.RpcError):
                self.stub().Search(pb.SearchRequest(id=self.rng.choice(ids), top_k=5), timeout=10)

    def deleter(self, stop: threading.Event) -> None:
        while not stop.wait(self.rng.uniform(0.3, 1.0)):
            with self.ledger.lock:
                keys = list(self.ledger.acked)
            if len(keys) < 5:
                continue
            key = self.rng.choice(keys)
            with self.ledger.lock:
                item_id = self.ledger.acked.pop(key)[0]
                self.ledger.uncertain.add(key)
                self.ledger.delete_targets.add(key)
            try:
                self.stub().Delete(pb.DeleteRequest(id=item_id), timeout=10)
            except grpc.RpcError:
                continue  # outcome unknown: stays uncertain
            with self.ledger.lock:
                self.ledger.deleted[key] = item_id

    def cli_run(self, interrupt_after: float | None) -> int:
        target = self.servers[0].target
        proc = subprocess.Popen(
            [sys.executable, "-m", "lookalike.cli", "--target", target, "index", str(self.cli_dir),
             "--key-prefix", "cli/", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.env, cwd=ROOT,
        )  # fmt: skip
        try:
            return proc.wait(interrupt_after) if interrupt_after is not None else proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                return proc.wait(10)
            proc.kill()
            return proc.wait()

    def add_cli_files(self, n: int) -> None:
        for _ in range(n):
            k = self.next_seq()
            (self.cli_dir / f"{k}.png").write_bytes(make_image(self.args.seed * 1_000_003 + k))

    # -------------------------------------------------------------- faults

    def targets(self) -> list[str]:
        t = [f"server{i}" for i in range(len(self.servers))]
        t += ["redis", "milvus"] if self.args.stores == "external" else ["embedded-redis"]
        return t

    def pid_of(self, target: str) -> int:
        if target.startswith("server"):
            return self.servers[int(target[6:])].pid
        if target == "redis":
            return self.redis.pid if self.redis else 0
        if target == "milvus":
            return self.milvus_pid()
        return self.embedded_redis_pid()

    def inject(self, faults: Counter[str], n: int) -> tuple[str, str]:
        plan = [p for p in self.args.fault_plan.split(",") if p]
        if n <= len(plan):
            target, kind = plan[n - 1].split(":")
        else:
            target = self.rng.choice(self.targets())
            # A Milvus standalone takes ~20-40 s to boot again: kill it rarely, freeze it instead.
            kind = "KILL" if self.rng.random() < (0.15 if target == "milvus" else 0.5) else "STOP"
        pid = self.pid_of(target)
        if not pid or not alive(pid):
            return target, "none"
        faults[f"{target.rstrip('0123456789')}:{kind}"] += 1
        if kind == "KILL" and (target.startswith("server") or target == "embedded-redis"):
            # Either way a server instance dies without ending its lease (a
            # server whose embedded Redis died is restarted, and cannot reach
            # its lease to end it).
            self.server_killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL if kind == "KILL" else signal.SIGSTOP)
        return target, kind

    def heal(self, target: str, kind: str) -> None:
        pid = self.pid_of(target)
        if kind == "STOP":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            return
        if kind != "KILL":
            return
        if target.startswith("server"):
            s = self.servers[int(target[6:])]
            assert s.proc is not None
            s.proc.wait()
            s.proc = None
            if self.args.stores == "embedded":
                # Its embedded redis-server must go by itself (parent-death signal), before any restart.
                redis_pid = self.embedded_redis_pid()
                deadline = time.monotonic() + 10
                while redis_pid and alive(redis_pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if redis_pid and alive(redis_pid):
                    self.orphans_seen += 1
            s.start(self.env)
        elif target == "redis":
            assert self.redis is not None
            if self.redis.proc is not None:
                self.redis.proc.wait()
            self.redis.start()
        elif target == "milvus":
            # A restarted standalone gets new free ports: point the servers at its new URI.
            self.start_milvus()
            for i, s in enumerate(self.servers):
                s.stop()
                s.args = self.server_args(i)
                s.start(self.env)
        else:  # embedded redis: the server cannot go on without it; restart it as a supervisor would
            s = self.servers[0]
            s.stop()
            s.start(self.env)

    # --------------------------------------------------------------- round

    def round(self, n: int) -> RoundResult:
        faults: Counter[str] = Counter()
        notes: list[str] = []
        stop = threading.Event()
        workers = [self.unary_inserter, self.stream_inserter, self.searcher, self.deleter]
        threads = [threading.Thread(target=w, args=(stop,), daemon=True) for w in workers]
        for t in threads:
            t.start()
        self.add_cli_files(self.args.cli_files)
        cli = threading.Thread(target=self.cli_run, args=(self.rng.uniform(0.5, self.args.round_s),), daemon=True)
        cli.start()
        time.sleep(self.rng.uniform(0.3, self.args.round_s * 0.6))
        target, kind = self.inject(faults, n)
        time.sleep(self.rng.uniform(1.0, self.args.stall_s))
        try:
            self.heal(target, kind)
        except Exception as exc:
            notes.append(f"heal {target} {kind}: {exc}")
        time.sleep(max(0.0, self.args.round_s - 2))
        stop.set()
        for t in threads:
            t.join(60)
        cli.join(60)
        self.settle(notes)
        return self.check(faults, notes)

    def settle(self, notes: list[str]) -> None:
        """Everything up, the CLI run completed, servers restarted gracefully (their sweep runs)."""
        for s in self.servers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(s.pid, signal.SIGCONT)
        if self.redis is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.redis.pid, signal.SIGCONT)
        if self.milvus_pid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.milvus_pid(), signal.SIGCONT)
        for attempt in range(3):
            if self.cli_run(None) == 0:
                files = sorted(self.cli_dir.glob("*.png"))
                self.cli_ack(files)
                break
            notes.append(f"cli re-run {attempt + 1} failed")
            time.sleep(2)
        if self.server_killed_at is not None:
            # A killed server's pending records are taken over once its lease
            # has expired; wait that out so the start-up sweep below sees it.
            time.sleep(max(0.0, self.server_killed_at + self.args.lease_wait_s - time.monotonic()))
            self.server_killed_at = None
        for s in self.servers:
            s.stop()
        for s in self.servers:
            s.start(self.env)

    def cli_ack(self, files: list[Path]) -> None:
        """After a CLI run that exited 0, every file counts as acknowledged: look their ids up."""
        stub = self.stub()
        for f in files:
            key = f"cli/{f.name}"
            if key in self.ledger.acked:
                continue
            try:
                item = stub.Get(pb.GetRequest(key=key), timeout=10)
            except grpc.RpcError:
                item = None
            with self.ledger.lock:
                self.ledger.images[key] = f.read_bytes()
                if item is None:
                    self.ledger.acked[key] = (-1, "", (MODEL,))  # reported indexed, not found: lost
                else:
                    self.ledger.acked[key] = (int(item.id), item.content_sha256, tuple(item.models) or (MODEL,))

    # --------------------------------------------------------------- check

    def check(self, faults: Counter[str], notes: list[str]) -> RoundResult:
        stub = self.stub()
        with self.ledger.lock:
            acked = dict(self.ledger.acked)
            deleted = dict(self.ledger.deleted)
            self.ledger.deleted.clear()
        lost = ghosts = undeleted = 0
        found_first = searched = 0
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for r_lost, r_ghosts, r_found, r_searched, r_notes in pool.map(
                lambda kv: self.verify(stub, kv[0], *kv[1]), acked.items()
            ):
                lost += r_lost
                ghosts += r_ghosts
                found_first += r_found
                searched += r_searched
                notes.extend(r_notes)
        for key, item_id in deleted.items():
            with contextlib.suppress(grpc.RpcError):
                item = stub.Get(pb.GetRequest(id=item_id), timeout=10)
                if item.id == item_id:
                    undeleted += 1
                    notes.append(f"undeleted {key} id {item_id}")
        with self.ledger.lock:
            if self.ledger.raced_deletes:
                notes.append(f"{self.ledger.raced_deletes} insert answer(s) raced a Delete of their key (not counted)")
            self.ledger.raced_deletes = 0
        store = self.store_check(notes)
        orphans = self.orphan_processes(notes) + self.orphans_seen
        if self.orphans_seen:
            notes.append(f"{self.orphans_seen} embedded redis-server(s) outlived their SIGKILLed server")
        self.orphans_seen = 0
        return RoundResult(
            faults=faults,
            acknowledged=len(acked),
            lost=lost,
            ghosts=ghosts + store["ghost_records"],
            duplicates=store["duplicates"] + self.ledger.id_changed,
            orphan_rows=store["orphan_rows"],
            pending=store["pending"],
            undeleted=undeleted,
            orphan_processes=orphans,
            self_recall=found_first / searched if searched else 1.0,
            notes=notes,
        )

    @staticmethod
    def _call(fn: Any, request: Any) -> Any:
        """One RPC, retried on transient errors (a server just restarted); None when NOT_FOUND."""
        for attempt in range(4):
            try:
                return fn(request, timeout=15)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND or attempt == 3:
                    return None
                time.sleep(0.5 * (attempt + 1))
        return None

    def verify(
        self, stub: pb_grpc.LookalikeStub, key: str, item_id: int, _sha: str, models: tuple[str, ...]
    ) -> tuple[int, int, int, int, list[str]]:
        """(lost, ghosts, found first, searched, notes) for one acknowledged item."""
        item = self._call(stub.Get, pb.GetRequest(key=key))
        if item is None or int(item.id) != item_id:
            return 1, 0, 0, 0, [f"lost {key} id {item_id} (got {None if item is None else item.id})"]
        ghosts = found = 0
        notes = []
        for model in models or (MODEL,):
            resp = self._call(stub.Search, pb.SearchRequest(id=item_id, models=[model], top_k=1))
            first = resp.results[0].hits[0].id if resp and resp.results and resp.results[0].hits else None
            if first == item_id:
                found += 1
            else:
                ghosts += 1
                notes.append(f"ghost {key} id {item_id} model {model} (first hit {first})")
        return 0, ghosts, found, len(models or (MODEL,)), notes

    def store_check(self, notes: list[str]) -> dict[str, int]:
        """Redis records against Milvus rows, read straight from the stores."""
        from pymilvus import MilvusClient

        if self.args.stores == "external":
            import redis

            assert self.redis is not None
            client = redis.Redis(port=self.redis.port, socket_timeout=10)
            return compare_stores(client, MilvusClient(self.milvus_uri), notes)
        # Embedded: only one process may open them (Milvus Lite and the
        # embedded Redis lock the data dir), so check with the server stopped,
        # in a child process that releases every lock when it exits.
        s = self.servers[0]
        s.stop()
        try:
            out = subprocess.run(
                [sys.executable, __file__, "--store-check", str(self.work / "data")],
                capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=300,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"store check failed: {out.stderr[-2000:]}")
            got = json.loads(out.stdout.strip().splitlines()[-1])
            notes.extend(got.pop("notes"))
            return {k: int(v) for k, v in got.items()}
        finally:
            s.start(self.env)

    def orphan_processes(self, notes: list[str]) -> int:
        """Processes under the work dir that no live process of ours owns (a server's embedded Redis is owned)."""
        ours = {s.pid for s in self.servers}
        if self.redis is not None:
            ours.add(self.redis.pid)
        ours.add(self.milvus_pid())
        orphans = 0
        for pid, comm in processes_under(self.work):
            if pid in ours:
                continue
            try:
                ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in ours or ppid == os.getpid():
                continue  # a child of a live server (its embedded Redis) or our CLI run
            # Milvus standalone's own helpers (etcd, minio...) descend from its pid.
            if self.milvus_pid() and self._descends(pid, self.milvus_pid()):
                continue
            orphans += 1
            notes.append(f"orphan process {pid} {comm} (ppid {ppid})")
        return orphans

    @staticmethod
    def _descends(pid: int, ancestor: int) -> bool:
        for _ in range(10):
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                return False
            if pid == ancestor:
                return True
            if pid <= 1:
                return False
        return False


def compare_stores(r: Any, milvus: Any, notes: list[str]) -> dict[str, int]:
    """Redis item records against Milvus rows: pending, duplicate hashes, ghost records, orphan rows."""

    records: dict[int, dict[str, str]] = {}
    for k in r.scan_iter(match=f"{KEY_PREFIX}item:*", count=1000):
        fields = {a.decode(): b.decode() for a, b in r.hgetall(k).items()}
        if fields:
            records[int(k.decode().rsplit(":", 1)[1])] = fields
    pending = sum(1 for f in records.values() if f.get("state") != "complete")
    shas = Counter(f.get("sha") for f in records.values())
    duplicates = sum(c - 1 for c in shas.values() if c > 1)
    rows: dict[str, set[int]] = {}
    for name in milvus.list_collections():
        if not name.startswith(f"{COLLECTION_PREFIX}_"):
            continue
        milvus.load_collection(name)  # Lite reopens collections released
        got = milvus.query(name, filter="id >= 0", output_fields=["id"], limit=16384, consistency_level="Strong")
        rows[name] = {int(x["id"]) for x in got}
    ghost_records = orphan_rows = 0
    for name, ids in rows.items():
        model = name[len(COLLECTION_PREFIX) + 1 :].rsplit("_v", 1)[0]
        listed = {
            i
            for i, f in records.items()
            if f.get("state") == "complete"
            and any(m.split(":")[0].replace("-", "_") == model for m in json.loads(f.get("models") or "[]"))
        }
        orphan = ids - listed
        missing = listed - ids
        orphan_rows += len(orphan)
        ghost_records += len(missing)
        if orphan:
            notes.append(f"orphan rows in {name}: {sorted(orphan)[:10]}")
        if missing:
            notes.append(f"complete records without rows in {name}: {sorted(missing)[:10]}")
    if pending:
        notes.append(f"pending after sweep: {[i for i, f in records.items() if f.get('state') != 'complete'][:10]}")
    return {"pending": pending, "duplicates": duplicates, "ghost_records": ghost_records, "orphan_rows": orphan_rows}


# -------------------------------------------------------------------- table


SNAPSHOT_COLUMNS = ("lost", "ghosts", "duplicates", "orphan_rows", "pending")


def summarize(results: list[RoundResult], final_orphans: int, args: argparse.Namespace, wall_s: float) -> str:
    faults: Counter[str] = Counter()
    for r in results:
        faults.update(r.faults)
    last = results[-1] if results else None
    # lost, ghosts, duplicates, orphan rows and pending are checked over the
    # whole store each round, so a fault that persists shows in every later
    # round: report the worst round. Undeleted and orphan processes are per
    # round: report the sum.
    totals = {c: max((getattr(r, c) for r in results), default=0) for c in SNAPSHOT_COLUMNS}
    totals["undeleted"] = sum(r.undeleted for r in results)
    totals["orphan_processes"] = sum(r.orphan_processes for r in results) + final_orphans
    recall = min((r.self_recall for r in results), default=1.0)
    lines = [
        f"stores={args.stores} replicas={args.replicas} rounds={len(results)} round_s={args.round_s} "
        f"seed={args.seed} wall={wall_s:.0f}s",
        "",
        "| rounds | faults by kind | acknowledged (at the end) | lost | ghosts | duplicates | orphan rows | "
        "pending | undeleted | orphan processes | min self-recall |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {len(results)} | {', '.join(f'{k} {v}' for k, v in sorted(faults.items()))} | "
        f"{last.acknowledged if last else 0} | {totals['lost']} | {totals['ghosts']} | {totals['duplicates']} | "
        f"{totals['orphan_rows']} | {totals['pending']} | {totals['undeleted']} | {totals['orphan_processes']} | "
        f"{recall:.4f} |",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> tuple[list[RoundResult], int, str]:
    """Runs the rounds; returns per-round results, orphan processes after teardown, and the table."""
    if args.stores == "embedded" and args.replicas != 1:
        raise SystemExit("--replicas 2 needs --stores external (one embedded Redis has one owner)")
    chaos = Chaos(args)
    started = time.monotonic()
    results: list[RoundResult] = []
    final_orphans = 0
    try:
        chaos.setup()
        for n in range(1, args.rounds + 1):
            r = chaos.round(n)
            results.append(r)
            print(
                f"round {n:3d} faults={dict(r.faults)} acked={r.acknowledged} lost={r.lost} ghosts={r.ghosts} "
                f"dup={r.duplicates} orphan_rows={r.orphan_rows} pending={r.pending} undeleted={r.undeleted} "
                f"orphan_procs={r.orphan_processes} self_recall={r.self_recall:.4f}",
                flush=True,
            )
            for note in r.notes[:20]:
                print(f"    {note}", flush=True)
    finally:
        final_orphans = chaos.teardown()
    table = summarize(results, final_orphans, args, time.monotonic() - started)
    return results, final_orphans, table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", choices=("embedded", "external"), default="embedded")
    p.add_argument("--replicas", type=int, default=1, choices=(1, 2))
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--round-s", type=float, default=6.0, help="load seconds per round")
    p.add_argument("--stall-s", type=float, default=6.0, help="longest SIGSTOP / downtime, seconds")
    p.add_argument("--cli-files", type=int, default=8, help="images added to the CLI's directory per round")
    p.add_argument(
        "--insert-pause-s",
        type=float,
        default=0.0,
        help="pause between insert calls of each inserter: on a fast machine the store grows so quickly that "
        "each round's check (every acknowledged item, every round) dominates the run",
    )
    p.add_argument("--redis-timeout-s", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--lease-wait-s",
        type=float,
        default=32.0,
        help="after a server SIGKILL, wait this long (its lease, 30 s, expires) before the settling restart",
    )
    p.add_argument(
        "--fault-plan",
        default="",
        help="faults of the first rounds, e.g. server0:KILL,embedded-redis:STOP (then random)",
    )
    p.add_argument("--workdir", default="", help="parent of the work dir (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, data)")
    p.add_argument("--out", default="", help="append the table to this file")
    return p


def store_check(data_dir: str) -> None:
    """``--store-check DIR``: compare the embedded stores of a stopped server; print JSON."""
    from pymilvus import MilvusClient

    from lookalike_server.store import embedded_redis

    handle = embedded_redis.acquire(data_dir)
    milvus = MilvusClient(str(Path(data_dir) / "milvus.db"))
    notes: list[str] = []
    try:
        got: dict[str, Any] = compare_stores(handle.client(10.0), milvus, notes)
    finally:
        milvus.close()
        embedded_redis.release(handle)
    got["notes"] = notes
    print(json.dumps(got))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--store-check":
        store_check(sys.argv[2])
        return
    args = parser().parse_args()
    # SIGTERM (and SIGINT, which a background job ignores) end the run through
    # its teardown, so no server, Redis or Milvus of the harness is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _, _, table = run(args)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
