"""``benchmarks/gpu_sweep.sh --cpu-structure``: the GPU sweep's every step runs and its report has every lever.

No GPU is needed: the structure mode runs each step on the CPU provider with a
tiny model and sub-second windows (about 20-40 s on 2 cores). What it checks is
the script (the one command, the steps, the variants it makes, the report
files), not any lever's figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEVERS = [
    "variants", "baseline", "ceiling", "uint8", "io_binding", "fp16", "combined", "replicas", "decode", "nvjpeg",
    "tensorrt",
]  # fmt: skip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu-sweep")
    env = {**os.environ, "PYTHON": sys.executable, "GPU_SWEEP_CPU": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_sweep.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_every_step_is_recorded_in_order_with_a_status(report: Path) -> None:
    results = json.loads((report / "results.json").read_text())
    assert results["mode"] == "cpu-structure"
    steps = {s["lever"]: s for s in results["steps"]}
    assert [s["lever"] for s in results["steps"]] == LEVERS
    # Everything the CPU provider can run ran: no step failed or ran out of budget.
    for lever in ("baseline", "ceiling", "uint8", "io_binding", "fp16", "combined", "replicas", "decode"):
        assert steps[lever]["status"] == "measured", steps[lever]
    assert steps["variants"]["status"] == "done", steps["variants"]
    # TensorRT cannot run on the CPU: a skipped line with the reason, never a silent gap.
    assert steps["tensorrt"]["status"] == "skipped" and "CPU structure mode" in steps["tensorrt"]["reason"]
    assert steps["nvjpeg"]["status"] in ("skipped", "measured")
    if steps["nvjpeg"]["status"] == "skipped":
        assert "installs nothing" in steps["nvjpeg"]["reason"]


def test_each_server_lever_ran_its_own_model_and_settings(report: Path) -> None:
    results = json.loads((report / "results.json").read_text())
    steps = {s["lever"]: s for s in results["steps"]}
    by_lever = {s.get("lever"): s for s in results["series"]}
    assert set(by_lever) == {"baseline", "ceiling", "uint8", "io_binding", "fp16", "combined", "replicas"}
    for lever in ("baseline", "uint8", "io_binding", "fp16", "combined", "replicas"):
        points = by_lever[lever]["points"]
        assert [p["label"] for p in points] == ["c=1", "c=2"]
        assert all(p["ok"] > 0 and p["errors"] == 0 for p in points), lever
        assert steps[lever]["images_per_s"] > 0 and steps[lever]["providers"] == ["CPUExecutionProvider"]
        # Which threads kept the host busy: the loop and the decoding threads by the names the server gives them.
        cores = steps[lever]["server_cores"]
        assert cores["loop"] > 0 and cores["decode"] > 0 and cores["busiest_thread"], (lever, cores)
        # The load generator's own CPU (two processes here): near their count, the figure would be the client's.
        assert steps[lever]["client_cores"] > 0, lever
        assert [p["load_processes"] for p in points] == [1, 2], lever  # c=1 needs one process
    # Two server processes, and the load generator's calls reached both (round_robin).
    replicas = steps["replicas"]
    assert replicas["replicas"] == 2 and len(replicas["replica_cores"]) == 2
    assert all(c["decode"] > 0 for c in replicas["replica_cores"]), replicas["replica_cores"]
    # The variants the uint8 and fp16 steps served were made and parity-checked by the exporter.
    variants = steps["variants"]["variants"]
    assert variants["uint8"]["entry"] == "tiny_u8" and variants["uint8"]["min_cosine"] >= 0.99999
    assert variants["fp16"]["entry"] == "tiny_fp16" and variants["combined"]["entry"] == "tiny_u8_fp16"
    served = results["machine"]["models"]
    assert {"tiny", "tiny_u8", "tiny_fp16", "tiny_u8_fp16"} <= set(served)
    decode = steps["decode"]["decode"]
    assert [r["workers"] for r in decode["rows"]] == [1, 2]
    assert all(r["threads_images_per_s"] > 0 and r["processes_images_per_s"] > 0 for r in decode["rows"])


def test_the_report_leads_with_the_lever_table(report: Path) -> None:
    text = (report / "report.md").read_text()
    assert "CPU structure mode" in text
    table = text.split("## Levers, each alone against the baseline", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| lever")]
    assert [r.split(" | ")[0].removeprefix("| ") for r in rows] == LEVERS
    assert "## Host decoding: threads vs processes" in text
    assert (report / "latency_vs_throughput.png").is_file()
    assert (report / "work" / "tiny" / "tiny_u8.onnx").is_file()  # the run's own files stay in its folder
