"""The batching plan's rule on synthetic per-bucket costs, and the thread budget (pure functions, no ORT)."""

from __future__ import annotations

import pytest

from lookalike_server.autotune import choose_plan, keep_buckets, median, take_table
from lookalike_server.config import BatchingConfig
from lookalike_server.thread_budget import thread_budget, usable_cores

CANDIDATES = (1, 2, 4, 8, 16, 32)


def per_image(ms: dict[int, float]) -> dict[int, float]:
    """Costs given per image → per run, as the warm-up measures them."""
    return {b: c * b for b, c in ms.items()}


# A quiet 2-core machine, MobileNetV2 on ORT/CPU: no batch size is cheaper per
# image than batch 1 (233 img/s at b=1, 205 at b=32 in the notebook's figures).
FLAT_CPU = per_image({1: 4.3, 2: 4.4, 4: 4.5, 8: 4.6, 16: 4.8, 32: 4.9})
# A GPU: a run costs nearly the same whatever its size.
GPU = {1: 2.0, 2: 2.1, 4: 2.2, 8: 2.4, 16: 3.0, 32: 4.5}


def test_flat_cpu_costs_turn_batching_off_and_do_not_wait() -> None:
    plan = choose_plan(FLAT_CPU, CANDIDATES)
    assert plan.buckets == (1,) and plan.max_batch_size == 1
    assert plan.max_delay_ms == 0.0
    assert "batching off" in plan.reason and "delay 0" in plan.reason
    assert plan.items_to_take(5) == 1
    # The measured costs are reported for every candidate, kept or not.
    assert set(plan.costs_ms) == set(CANDIDATES)
    assert plan.per_image_ms(32) == pytest.approx(4.9)


def test_gpu_costs_keep_every_bucket_pad_and_wait_at_most_one_solo_run() -> None:
    plan = choose_plan(GPU, CANDIDATES)
    assert plan.buckets == CANDIDATES and plan.max_batch_size == 32
    # min(2 ms default, 2.0 ms for one image alone)
    assert plan.max_delay_ms == pytest.approx(2.0)
    # Padding 5 up to 8 (0.48 ms/image) beats running 4 (0.55 ms/image).
    assert plan.items_to_take(5) == 5
    assert plan.items_to_take(100) == 32


def test_delay_is_capped_by_one_image_alone() -> None:
    plan = choose_plan({1: 0.8, 2: 1.0, 4: 1.2}, (1, 2, 4))
    assert plan.max_delay_ms == pytest.approx(0.8)
    assert choose_plan({1: 0.8, 2: 1.0}, (1, 2), default_delay_ms=0.5).max_delay_ms == pytest.approx(0.5)


def test_a_bucket_is_kept_only_if_it_beats_the_best_smaller_kept_bucket_by_epsilon() -> None:
    # per image: 1:10, 2:9.5 (5% better: dropped), 4:9.0 (10% better than 1: kept),
    # 8:8.5 (5.6% better than 4: dropped), 16:7.0 (22% better than 4: kept)
    costs = per_image({1: 10.0, 2: 9.5, 4: 9.0, 8: 8.5, 16: 7.0})
    assert keep_buckets(costs, 0.10) == (1, 4, 16)
    assert keep_buckets(costs, 0.0) == (1, 2, 4, 8, 16)
    assert keep_buckets(costs, 0.5) == (1,)
    plan = choose_plan(costs, (1, 2, 4, 8, 16))
    assert plan.buckets == (1, 4, 16) and plan.max_batch_size == 16
    assert "dropped [2, 8]" in plan.reason


def test_take_rule_runs_the_cheaper_of_padding_up_and_a_full_smaller_bucket() -> None:
    # Per run: 1:10, 4:36, 16:112 ms. 5 queued: padded to 16 = 22.4 ms/image,
    # 4 of them = 9 ms/image, so run 4 and leave 1. 15 queued: padded = 7.5 < 9.
    costs = {1: 10.0, 4: 36.0, 16: 112.0}
    table = take_table(costs, (1, 4, 16))
    assert len(table) == 16
    assert table[:4] == (1, 1, 1, 4)  # 2 or 3 queued: padded to 4 costs more than running 1
    assert table[4] == 4
    assert table[14] == 15 and table[15] == 16


def test_explicit_settings_win_over_the_measurements() -> None:
    plan = choose_plan(FLAT_CPU, CANDIDATES[:4], max_batch_size=8, max_delay_ms=3.0)
    assert plan.buckets == (1, 2, 4, 8) and plan.max_batch_size == 8
    assert plan.max_delay_ms == 3.0
    assert plan.items_to_take(5) == 5  # as configured: whatever is queued runs, padded
    assert "max batch 8 set by config" in plan.reason and "delay 3 ms set by config" in plan.reason
    # An explicit delay with an automatic size, and the other way round.
    assert choose_plan(FLAT_CPU, CANDIDATES, max_delay_ms=1.5).max_batch_size == 1
    assert choose_plan(FLAT_CPU, CANDIDATES, max_delay_ms=1.5).max_delay_ms == 1.5
    assert choose_plan(GPU, CANDIDATES, max_batch_size=4).max_delay_ms == pytest.approx(2.0)


def test_batching_turned_off_by_the_tuner_is_the_no_batching_configuration() -> None:
    # docs/performance.md says batching "on" cannot lose to "off" where the tuner turns it off,
    # because the two are then the same plan: what benchmarks/batching_ab.py compares.
    tuned = choose_plan(FLAT_CPU, CANDIDATES)
    off = choose_plan({1: FLAT_CPU[1]}, (1,), max_batch_size=1)  # --batching-max-batch-size 1
    assert (tuned.buckets, tuned.max_batch_size, tuned.max_delay_ms) == (off.buckets, off.max_batch_size, 0.0)
    assert off.max_delay_ms == 0.0
    assert [tuned.items_to_take(n) for n in range(1, 65)] == [off.items_to_take(n) for n in range(1, 65)]


def test_unmeasured_plan_keeps_the_candidates_and_the_default_delay() -> None:
    plan = choose_plan({}, CANDIDATES)
    assert plan.buckets == CANDIDATES and plan.max_batch_size == 32 and plan.max_delay_ms == 2.0
    assert "not measured" in plan.reason
    assert plan.items_to_take(5) == 5


def test_config_auto_values_and_explicit_ones() -> None:
    auto = BatchingConfig()
    assert auto.auto_batch_size and auto.auto_delay and auto.resolved_buckets() == CANDIDATES
    set_ = BatchingConfig(max_batch_size=8, max_delay_ms=0.0)
    assert not set_.auto_batch_size and not set_.auto_delay and set_.resolved_buckets() == (1, 2, 4, 8)
    assert BatchingConfig(auto_max_batch_size=4).resolved_buckets() == (1, 2, 4)


def test_median() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5


# ------------------------------------------------------------ thread budget --


def test_budget_on_one_core() -> None:
    b = thread_budget(1)
    assert (b.preprocess_threads, b.intra_op_threads, b.inter_op_threads, b.batch_workers) == (1, 1, 1, 1)


def test_budget_on_two_cores_runs_single_threaded_inference_on_each_core_beside_decoding() -> None:
    b = thread_budget(2)
    assert (b.cores, b.preprocess_threads, b.intra_op_threads, b.inter_op_threads, b.batch_workers) == (
        2,
        1,
        1,
        1,
        2,
    )
    assert "CPU inference" in b.reason
    assert thread_budget(4).batch_workers == 4 and thread_budget(4).intra_op_threads == 1


def test_budget_on_sixteen_cores_runs_batches_side_by_side() -> None:
    b = thread_budget(16)
    assert b.preprocess_threads == 4
    assert b.batch_workers == 3 and b.intra_op_threads == 4  # 12 inference cores
    assert b.preprocess_threads + b.batch_workers * b.intra_op_threads == 16


def test_budget_on_a_gpu_gives_the_cores_to_decoding() -> None:
    b = thread_budget(16, on_gpu=True)
    assert (b.preprocess_threads, b.intra_op_threads, b.batch_workers) == (15, 1, 1)
    assert thread_budget(1, on_gpu=True).preprocess_threads == 1


def test_explicit_thread_settings_win_and_are_named() -> None:
    b = thread_budget(2, intra_op_threads=2, preprocess_threads=3)
    # Explicit intra-op threads: workers fill the inference cores with them.
    assert (b.preprocess_threads, b.intra_op_threads, b.batch_workers) == (3, 2, 1)
    assert thread_budget(16, intra_op_threads=2).batch_workers == 6
    assert thread_budget(2, intra_op_threads=2, batch_workers=2).batch_workers == 2
    assert "set by config: preprocess_threads=3, intra_op_threads=2" in b.reason


def test_usable_cores_is_at_least_one() -> None:
    assert usable_cores() >= 1
