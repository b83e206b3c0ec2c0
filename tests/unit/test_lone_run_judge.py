"""LoneRunJudge: which session a lone batch goes to, re-judged from the lone runs themselves."""

from __future__ import annotations

import pytest

from lookalike_server.autotune import LoneRunJudge


def seeded(narrow_ms: float, wide_ms: float, runs: int = 15, **kw: int) -> LoneRunJudge:
    judge = LoneRunJudge(0.05, **kw)
    for _ in range(runs):
        judge.record(1, False, narrow_ms)
        judge.record(1, True, wide_ms)
    return judge


def test_a_faster_wide_session_gets_the_lone_runs_but_one_in_probe_every() -> None:
    judge = seeded(narrow_ms=5.4, wide_ms=3.3, probe_every=4)
    picks = [judge.wide(1) for _ in range(12)]
    assert picks.count(False) == 3  # the probes of the narrow session
    assert picks[3] is False and picks[7] is False and picks[11] is False


def test_a_wide_session_not_5_percent_faster_is_probed_only() -> None:
    judge = seeded(narrow_ms=5.85, wide_ms=5.67, probe_every=4)  # 3% faster: not enough
    picks = [judge.wide(1) for _ in range(8)]
    assert picks == [False, False, False, True] * 2


def test_a_stale_verdict_is_overturned_by_the_recent_runs_and_reported_once() -> None:
    # Warm-up met a noisy moment: wide looked slower. Then the lone runs find it fast.
    judge = seeded(narrow_ms=5.9, wide_ms=5.7, window=5)
    assert judge.wide(1) is False
    changes = [judge.record(1, True, 3.3) for _ in range(5)]
    # The median of the last 5 wide runs drops below 95% of narrow's at the third.
    assert changes == [None, None, True, None, None]
    assert judge.wide(1) is True
    assert judge.medians(1) == (5.9, 3.3)


def test_a_new_bucket_tries_both_sessions_before_the_medians_decide() -> None:
    judge = LoneRunJudge(0.05, min_runs=2)
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
        LoneRunJudge(0.05, window=2, min_runs=3)
    with pytest.raises(ValueError):
        LoneRunJudge(0.05, probe_every=1)


def test_a_verdict_holds_in_a_tie_and_turns_only_when_the_other_side_is_5_percent_faster() -> None:
    judge = seeded(narrow_ms=6.0, wide_ms=4.4, window=5)  # warm-up: wide
    assert judge.wide(1) is True
    # Real lone runs: the two sessions nearly tie. The verdict stays wide.
    for _ in range(5):
        assert judge.record(1, True, 6.1) is None
        assert judge.record(1, False, 6.3) is None
    assert judge.wide(1) is True
    # Narrow pulls ahead by more than 5%: the verdict turns, once.
    assert [judge.record(1, False, 5.5) for _ in range(5)] == [None, None, False, None, None]
    # And turns back only when wide is 5% faster than narrow again.
    assert judge.record(1, True, 5.4) is None
    assert [judge.record(1, True, 5.0) for _ in range(4)] == [None, None, True, None]
