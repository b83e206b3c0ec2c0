"""The chaos harness, short: a few rounds of mixed load while the server or its embedded Redis is killed or frozen.

The full runs (30+ rounds, real Redis, Milvus standalone, two replicas) are
``benchmarks/chaos.py``; this keeps the invariant under test in CI.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _chaos_module():
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "benchmarks" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = module
    spec.loader.exec_module(module)
    return module


def test_embedded_stores_keep_every_acknowledged_item_through_kills_and_stalls(tmp_path: Path) -> None:
    chaos = _chaos_module()
    args = chaos.parser().parse_args(
        ["--stores", "embedded", "--rounds", "2", "--round-s", "3", "--stall-s", "3", "--cli-files", "4",
         "--seed", "5", "--workdir", str(tmp_path),
         "--fault-plan", "server0:KILL,embedded-redis:STOP"]
    )  # fmt: skip
    results, final_orphans, table = chaos.run(args)
    print(table)
    assert len(results) == 2
    # Two rounds keep it short: a server SIGKILL costs a 30 s lease wait before
    # the settling sweep. test_embedded_redis.py kills the embedded Redis itself.
    assert [dict(r.faults) for r in results] == [{"server:KILL": 1}, {"embedded-redis:STOP": 1}]
    assert results[-1].acknowledged > 10, "too little load to prove anything"
    for r in results:
        assert (r.lost, r.ghosts, r.duplicates, r.orphan_rows, r.pending, r.undeleted) == (0, 0, 0, 0, 0, 0), r.notes
        assert r.orphan_processes == 0, r.notes
        assert r.self_recall == 1.0, r.notes
    assert final_orphans == 0, "a process of the harness outlived the teardown"
