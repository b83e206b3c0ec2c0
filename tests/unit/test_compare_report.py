"""benchmarks/compare.py's headline rows and machine profile line, on made-up series."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import compare  # noqa: E402


def series(kind: str, points: dict[str, tuple[float, float]]) -> dict:
    """A series with one point per label: (images/s, p50 ms)."""
    return {
        "kind": kind,
        "points": [
            {"label": label, "images_per_s": ips, "latency_ms": {"p50": p50}} for label, (ips, p50) in points.items()
        ],
    }


def test_headline_reads_issue_12_targets_and_the_worst_concurrency() -> None:
    found = {
        "on": series("server", {"c=1": (100, 7.5), "c=4": (120, 30), "c=32": (130, 240)}),
        "off": series("server", {"c=1": (101, 7.4), "c=4": (110, 33), "c=32": (131, 241)}),
        "ceiling": series("ceiling", {"b=1": (125, 6.0), "b=4": (128, 30)}),
    }
    rows = compare.headline(found, 32)
    ceiling = next(r for r in rows if r["what"].startswith("Embed c=32 throughput / in-process ceiling"))
    assert ceiling["value"] == 130 / 128 and ceiling["met"] is True  # ≥ 1.0×
    c1 = next(r for r in rows if r["what"].startswith("Embed c=1 p50"))
    assert c1["value"] == 1.5 and c1["met"] is True  # ≤ +2 ms
    worst = next(r for r in rows if r["what"].startswith("batching on / off, worst"))
    # c=1: 100/101 = 0.990 is the worst; c=32: 0.992; c=4: 1.09.
    assert worst["value"] == 100 / 101 and worst["met"] is True
    assert worst["detail"] == "c=1 0.99, c=4 1.09, c=32 0.99"
    found["on"]["points"][0]["images_per_s"] = 95  # 0.94 at c=1
    worst = next(r for r in compare.headline(found, 32) if r["what"].startswith("batching on / off, worst"))
    assert worst["met"] is False


def test_profile_line_names_cores_affinity_threads_and_flags() -> None:
    profile = {
        "cores": "1 usable of 2 (affinity 0; no CPU quota)",
        "server_args": ["--models-wide-session=off"],
        "server_threads": {
            "preprocess_threads": 1,
            "batch_workers": 1,
            "intra_op_threads": 1,
            "wide_intra_op_threads": 0,
        },
        "ceiling_intra_op_threads": 1,
        "server_cpus": "0",
        "load_generator_cpus": "1",
    }
    line = compare.profile_line(profile)
    assert line == (
        "1 usable of 2 (affinity 0; no CPU quota); server 1 decoding, 1 worker(s) x 1 intra-op, wide session none; "
        "extra server flags: --models-wide-session=off; ceiling 1 intra-op thread(s); "
        "server CPUs 0, load generator CPUs 1"
    )


def test_parse_cpus_reads_taskset_notation() -> None:
    assert compare.parse_cpus("0") == {0}
    assert compare.parse_cpus("0,2-4") == {0, 2, 3, 4}
    assert compare.parse_cpus("") == set()


def test_alone_share_reads_each_points_batcher_counters() -> None:
    on = {
        "points": [
            {"label": "c=1", "server": {"batchers": {"m": {"batches": 50, "alone_batches": 50}}}},
            {"label": "c=32", "server": {"batchers": {"m": {"batches": 400, "alone_batches": 0}}}},
            {"label": "c=64", "server": None},
        ]
    }
    assert compare.alone_share(on, "m") == "c=1 100%, c=32 0%"
    assert compare.alone_share(None, "m") == ""


def test_headline_adds_the_paired_c1_reading_when_it_ran() -> None:
    found = {
        "on": series("server", {"c=1": (100, 12.0), "c=32": (130, 240)}),
        "ceiling": series("ceiling", {"b=1": (125, 8.0)}),
    }
    assert not any("paired" in r["what"] for r in compare.headline(found, 32))
    found["c1_paired"] = {
        "pairs": 400, "median_ms": 2.47, "ci90": [2.40, 2.56],
        "server_p50_ms": 15.8, "ceiling_p50_ms": 13.3, "met": False,
    }  # fmt: skip
    row = next(r for r in compare.headline(found, 32) if "paired" in r["what"])
    assert row["value"] == 2.47 and row["met"] is False
    assert "+2.40 to +2.56 ms over 400 pairs" in row["detail"]
    found["c1_paired"]["median_ms"] = 1.9
    row = next(r for r in compare.headline(found, 32) if "paired" in r["what"])
    assert row["met"] is True
