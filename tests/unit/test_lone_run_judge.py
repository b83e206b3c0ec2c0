"""LoneRunJudge: which session a lone batch goes to, re-judged from the lone runs themselves."""

from __future__ import annotations

import pytest

from lookalike_server.autotune import LoneRunJudge


def seeded(narrow_ms: float, wide_ms: float, runs: int = 15, **kw: int) -> LoneRunJudge:
    judge = LoneRunJudge(0.05, 0.25, **kw)
    for _ in range(runs):
        judge.record(1, False, narrow_ms)
        judge.record(1, True, wide_ms)
    return judge


def test_a_faster_wide_session_gets_the_lone_runs_but_one_in_probe_every() -> None:
    judge = seeded(narrow_ms=5.4, wide_ms=3.3, probe_every=4)
    picks = [judge.wide(1) for _ in range(12)]
    assert picks.count(False) == 3  # the probes of the narrow session
    assert picks[3] is False and picks[7] is False and picks[11] is False


def test_a_near_tie_keeps_the_wide_session() -> None:
    # The warm-up that once dropped it: 5.67 against 5.85 ms.
    judge = seeded(narrow_ms=5.85, wide_ms=5.67, probe_every=4)
    assert [judge.wide(1) for _ in range(4)] == [True, True, True, False]


def test_a_wide_session_stalled_by_a_neighbour_is_left_and_only_probed() -> None:
    judge = seeded(narrow_ms=4.3, wide_ms=8.3, probe_every=4)  # narrow 48% faster
    picks = [judge.wide(1) for _ in range(8)]
    assert picks == [False, False, False, True] * 2


def test_a_stale_verdict_is_overturned_by_the_recent_runs_and_reported_once() -> None:
    # Warm-up met a neighbour on the other core: wide looked slow. Then it leaves.
    judge = seeded(narrow_ms=4.3, wide_ms=8.3, window=5)
    assert judge.wide(1) is False
    changes = [judge.record(1, True, 3.3) for _ in range(5)]
    # The median of the last 5 wide runs drops below 95% of narrow's at the third.
    assert changes == [None, None, True, None, None]
    assert judge.wide(1) is True and judge.verdict(1) is True
    assert judge.medians(1) == (4.3, 3.3)


def test_a_new_bucket_tries_both_sessions_before_the_medians_decide() -> None:
    judge = LoneRunJudge(0.05, 0.25, min_runs=2)
    assert judge.medians(4) == (None, None)
    sides = []
    for ms in (10.0, 20.0, 10.0, 20.0):
        side = judge.wide(4)
        sides.append(side)
        judge.record(4, side, ms if side else 2 * ms)  # wide twice as fast
    assert sorted(sides) == [False, False, True, True]
    assert judge.wide(4) is True


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        LoneRunJudge(window=2, min_runs=3)
    with pytest.raises(ValueError):
        LoneRunJudge(probe_every=1)


def test_wide_is_left_only_for_a_narrow_session_25_percent_faster_and_taken_back_at_5() -> None:
    judge = seeded(narrow_ms=6.0, wide_ms=4.4, window=5)  # warm-up: wide
    assert judge.wide(1) is True
    # Real lone runs: the two sessions nearly tie, or narrow wins by 10%. Wide stays.
    for _ in range(5):
        assert judge.record(1, True, 6.1) is None
        assert judge.record(1, False, 5.5) is None
    assert judge.wide(1) is True
    # Narrow pulls ahead by more than 25%: the verdict turns, once.
    assert [judge.record(1, False, 4.0) for _ in range(5)] == [None, None, False, None, None]
    # And turns back only when wide is 5% faster than narrow (4.0 ms): 3.9 is not enough.
    assert judge.record(1, True, 3.9) is None
    assert [judge.record(1, True, 3.5) for _ in range(4)] == [None, None, True, None]
