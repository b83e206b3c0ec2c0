"""The interleaved batching A/B (benchmarks/batching_ab.py): medians of per-round ratios, and the
one-process registry that serves the model twice."""

from __future__ import annotations

import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from lookalike_server.config import BatchingConfig
from lookalike_server.registry_reader import ModelSpec, load_registry

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import batching_ab  # noqa: E402


def _round(on: float, off: float) -> dict[str, float]:
    return {"on_images_per_s": on, "off_images_per_s": off, "on_p50_ms": 1000 / on, "off_p50_ms": 1000 / off}


def test_the_ratio_is_the_median_of_per_round_ratios_not_a_ratio_of_medians() -> None:
    # Per-round ratios 0.5, 1.11, 1.2: median 1.11. The medians of each side are 100 and 100,
    # whose ratio (1.0) would hide that the middle round favoured batching.
    rounds = [_round(50, 100), _round(100, 90), _round(120, 100)]
    got = batching_ab._summary(rounds)
    assert got["ratio_median"] == pytest.approx(100 / 90)
    assert (got["ratio_min"], got["ratio_max"]) == (pytest.approx(0.5), pytest.approx(1.2))
    assert got["on_images_per_s"] == 100 and got["off_images_per_s"] == 100
    assert got["met"] is True


def test_below_the_target_is_not_met() -> None:
    got = batching_ab._summary([_round(96, 100), _round(95, 100), _round(99, 100)])
    assert got["ratio_median"] == pytest.approx(0.96)
    assert got["met"] is False


def test_the_median_interval_widens_with_the_spread_of_the_rounds_and_holds_the_median() -> None:
    tight = [1.00, 1.01, 0.99, 1.00, 1.01, 0.99, 1.00]
    wide = [0.85, 1.15, 0.95, 1.05, 0.90, 1.10, 1.00]
    lo_t, hi_t = batching_ab.median_interval(tight)
    lo_w, hi_w = batching_ab.median_interval(wide)
    assert lo_t <= 1.0 <= hi_t and lo_w <= 1.0 <= hi_w
    assert hi_w - lo_w > 3 * (hi_t - lo_t)
    assert batching_ab.median_interval(wide) == (lo_w, hi_w)  # seeded: the same rounds, the same interval


def test_the_summary_reports_each_side_s_mean_batch_where_the_server_gave_one() -> None:
    rounds = [_round(100, 100) | {"on_mean_batch": 1.5, "off_mean_batch": 1.0}, _round(100, 100)]
    got = batching_ab._summary(rounds)
    assert (got["on_mean_batch"], got["off_mean_batch"]) == (1.5, 1.0)
    assert batching_ab._summary([_round(100, 100)])["on_mean_batch"] is None


# ------------------------------------------------- the one-process registry --

REGISTRY = ROOT / "models" / "models.toml"


def _read(path: Path) -> dict[str, ModelSpec]:
    return {s.name: s for s in load_registry(path, BatchingConfig())}


def test_the_one_process_registry_holds_the_model_twice_the_second_at_batch_1(tmp_path: Path) -> None:
    dest = tmp_path / "elsewhere" / "models.toml"  # another folder: the path must not stay relative
    names = batching_ab.write_ab_registry(REGISTRY, "mobilenet_v2", dest)
    assert names == {"on": "mobilenet_v2", "off": "mobilenet_v2_b1"}
    shipped = _read(REGISTRY)["mobilenet_v2"]
    got = _read(dest)
    assert list(got) == ["mobilenet_v2", "mobilenet_v2_b1"]  # "on" loads first unless --off-first
    on, off = got["mobilenet_v2"], got["mobilenet_v2_b1"]
    # The server reads "on" exactly as it reads the shipped entry: same file, digest, preprocessing.
    assert on == shipped
    assert on.path.is_absolute() and on.path.exists()
    assert (off.path, off.sha256, off.preprocess) == (on.path, on.sha256, on.preprocess) and on.sha256
    assert off.batching.max_batch_size == 1
    # Nothing else differs: the name and the batching limit are the whole difference.
    assert replace(off, name=on.name, batching=on.batching) == on


def test_the_aa_registry_leaves_the_second_entry_s_batching_alone_and_off_first_loads_it_first(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "models.toml"
    names = batching_ab.write_ab_registry(REGISTRY, "mobilenet_v2", dest, aa=True, off_first=True)
    assert names == {"on": "mobilenet_v2", "off": "mobilenet_v2_aa"}
    got = _read(dest)
    assert list(got) == ["mobilenet_v2_aa", "mobilenet_v2"]
    on, twin = got["mobilenet_v2"], got["mobilenet_v2_aa"]
    assert "batching" not in tomllib.loads(dest.read_text())["models"][0]  # no override at all
    assert replace(twin, name=on.name) == on


def test_the_off_entry_keeps_the_source_s_other_batching_overrides(tmp_path: Path) -> None:
    source = tmp_path / "src" / "models.toml"
    source.parent.mkdir()
    (source.parent / "m.onnx").write_bytes(b"")  # the reader does not open it
    source.write_text(
        '[[models]]\nname = "m"\npath = "m.onnx"\ndim = 8\n[models.batching]\nmax_batch_size = 16\nmax_delay_ms = 3.0\n'
    )
    batching_ab.write_ab_registry(source, "m", tmp_path / "ab.toml")
    got = _read(tmp_path / "ab.toml")
    assert (got["m"].batching.max_batch_size, got["m"].batching.max_delay_ms) == (16, 3.0)
    assert (got["m_b1"].batching.max_batch_size, got["m_b1"].batching.max_delay_ms) == (1, 3.0)
    assert got["m_b1"].path == source.parent / "m.onnx"


def test_an_unknown_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no model named 'nope'"):
        batching_ab.write_ab_registry(REGISTRY, "nope", tmp_path / "models.toml")


def _choice(max_batch: int, buckets: list[int], wide: int, reason: str = "") -> dict[str, object]:
    threads = {"cores": 2, "preprocess": 1, "batch_workers": 2, "intra_op": 1, "wide_intra_op": wide, "reason": reason}
    return {"max_batch_size": max_batch, "batch_buckets": buckets, "max_delay_ms": 0.0, "threads": threads}


def test_threads_and_plans_alike_compare_the_numbers_not_the_wording() -> None:
    a, b = _choice(1, [1], 0, "wide session dropped: 9 ms"), _choice(1, [1], 0, "wide session dropped: 8 ms")
    assert batching_ab._threads_alike(a, b) and batching_ab._plans_alike(a, b)
    assert not batching_ab._threads_alike(a, _choice(1, [1], 2))
    assert not batching_ab._plans_alike(a, _choice(2, [1, 2], 0))
