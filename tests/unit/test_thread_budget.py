"""Thread budget: the wide session offered for lone batches, and the cores a process may use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lookalike_server import thread_budget as tb
from lookalike_server.thread_budget import CpuLimits, cgroup_cpu_quota, cpu_limits, thread_budget


def test_small_cpu_machine_offers_a_wide_session_of_every_core() -> None:
    b = thread_budget(2)
    assert (b.intra_op_threads, b.batch_workers, b.wide_intra_op_threads) == (1, 2, 2)
    assert "wide session of 2 intra-op thread(s) offered" in b.reason
    assert thread_budget(16).wide_intra_op_threads == 16


def test_no_wide_session_where_it_would_not_be_wider() -> None:
    b = thread_budget(1)
    assert b.wide_intra_op_threads == 0 and "no wide session (a worker already has 1" in b.reason
    assert thread_budget(2, intra_op_threads=2).wide_intra_op_threads == 0


def test_no_wide_session_on_a_gpu_or_when_turned_off() -> None:
    assert thread_budget(16, on_gpu=True).wide_intra_op_threads == 0
    off = thread_budget(2, wide_session="off")
    assert off.wide_intra_op_threads == 0 and "off by config" in off.reason


def test_wide_session_threads_and_on_are_honoured() -> None:
    assert thread_budget(8, wide_intra_op_threads=4).wide_intra_op_threads == 4
    # "on" keeps it even where it is not wider (a test or an experiment asked for it).
    assert thread_budget(1, wide_session="on", wide_intra_op_threads=2).wide_intra_op_threads == 2
    assert thread_budget(1, wide_session="on").wide_intra_op_threads == 1


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_read_from_the_process_cgroup_and_its_parents(tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/kubepods/pod1/ctr\n")
    root = tmp_path / "cg"
    write(root / "cpu.max", "max 100000\n")
    write(root / "kubepods" / "pod1" / "cpu.max", "150000 100000\n")
    write(root / "kubepods" / "pod1" / "ctr" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(root, proc) == pytest.approx(1.5)
    write(root / "kubepods" / "cpu.max", "50000 100000\n")  # a tighter parent wins
    assert cgroup_cpu_quota(root, proc) == pytest.approx(0.5)


def test_cgroup_v2_without_a_quota_and_v1_quota(tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/\n")
    write(tmp_path / "cg" / "cpu.max", "max 100000\n")
    assert cgroup_cpu_quota(tmp_path / "cg", proc) is None
    write(proc, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    v1 = tmp_path / "v1"
    write(v1 / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "200000\n")
    write(v1 / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    write(v1 / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    write(v1 / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_quota(v1, proc) == pytest.approx(2.0)
    assert cgroup_cpu_quota(v1, tmp_path / "no-such-file") is None


def test_usable_cores_follow_affinity_and_a_quota_rounded_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tb.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 5})
    monkeypatch.setattr(tb.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(tb, "cgroup_cpu_quota", lambda: None)
    limits = cpu_limits()
    assert limits == CpuLimits(machine=8, affinity=(0, 1, 2, 5), quota=None, usable=4)
    assert limits.describe() == "4 usable of 8 (affinity 0-2,5; no CPU quota)"
    monkeypatch.setattr(tb, "cgroup_cpu_quota", lambda: 1.5)
    assert cpu_limits().usable == 2
    monkeypatch.setattr(tb, "cgroup_cpu_quota", lambda: 0.2)
    assert cpu_limits().usable == 1


def test_usable_cores_here_match_this_process_affinity() -> None:
    assert cpu_limits().affinity == tuple(sorted(os.sched_getaffinity(0)))
    assert 1 <= tb.usable_cores() <= len(os.sched_getaffinity(0))
