"""Insert throughput of the embedded Redis: ``appendfsync everysec`` vs ``always``.

Each "insert" is what the server does in Redis for one new item: the reserve
script then the mark-complete script (two acknowledged writes), through
:class:`~lookalike_server.store.redis.RedisStore`, from ``--threads`` threads
(the server's executor). Modes alternate ``--repeats`` times in one run, each
on a fresh data directory, so drift on a shared machine hits both alike.

Usage::

    nice -n 10 python benchmarks/embedded_redis_fsync.py --seconds 5 --repeats 2
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from lookalike_server.config import RedisConfig
from lookalike_server.store.redis import RedisStore


def run(mode: str, seconds: float, threads: int) -> float:
    tmp = Path(tempfile.mkdtemp(prefix=f"fsync-{mode}-"))
    store = RedisStore(RedisConfig(key_prefix="bench:", appendfsync=mode), str(tmp))
    counter = itertools.count()
    done = [0] * threads
    stop = time.monotonic() + seconds

    def work(slot: int) -> None:
        while time.monotonic() < stop:
            n = next(counter)
            rec, _ = store.reserve(f"k{n}", f"sha{n}", {"n": str(n)}, "content")
            store.mark_complete(rec.id, ["m:1"])
            done[slot] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    rate = sum(done) / (time.monotonic() - t0)
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"everysec": [], "always": []}
    for _ in range(args.repeats):
        for mode in rates:
            rate = run(mode, args.seconds, args.threads)
            rates[mode].append(rate)
            print(f"appendfsync {mode:8s} {rate:8.0f} inserts/s", flush=True)
    print("\n| appendfsync | inserts/s (median) | runs |\n| --- | ---: | --- |")
    for mode, values in rates.items():
        print(f"| {mode} | {statistics.median(values):.0f} | {', '.join(f'{v:.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
