"""The client's adaptive throttle (SRE book): counts, probability, window, recovery."""

from __future__ import annotations

import pytest

from lookalike.throttle import AdaptiveThrottle, ThrottleSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_healthy_server_is_never_throttled() -> None:
    t = AdaptiveThrottle(rng=lambda: 0.0)  # the most eager draw: refuses whenever p > 0
    for _ in range(1000):
        assert t.admit()
        t.record(True)
    assert t.refusal_probability() == 0.0 and t.local_refusals == 0


def test_probability_follows_requests_and_accepts() -> None:
    clock = Clock()
    t = AdaptiveThrottle(ThrottleSettings(k=2.0), clock=clock, rng=lambda: 0.999)
    # 100 calls sent, 20 accepted: p = (100 - 2 * 20) / 101.
    for i in range(100):
        assert t.admit()
        t.record(i < 20)
    assert t.refusal_probability() == pytest.approx(60 / 101)


def test_local_refusals_track_k_times_the_accepted_rate() -> None:
    # A server that accepts a quarter of what is offered (4x overload): with k=2 the client
    # ends up sending about twice what is accepted, so about half the calls stay local.
    import random

    rng = random.Random(7)
    t = AdaptiveThrottle(ThrottleSettings(k=2.0, window_s=1000), rng=rng.random)
    capacity_per_offered = 0.25
    sent = accepted = 0
    budget = 0.0
    for _ in range(20_000):
        budget += capacity_per_offered
        if not t.admit():
            continue
        sent += 1
        ok = budget >= 1
        if ok:
            budget -= 1
            accepted += 1
        t.record(ok)
    assert 1.8 <= sent / accepted <= 2.3


def test_old_counts_leave_the_window() -> None:
    clock = Clock()
    t = AdaptiveThrottle(ThrottleSettings(k=2.0, window_s=5), clock=clock, rng=lambda: 0.999)
    for _ in range(50):
        t.admit()
        t.record(False)
    assert t.refusal_probability() > 0.9
    clock.now += 6  # all of it is now older than the window
    assert t.refusal_probability() == 0.0


def test_off_admits_everything() -> None:
    t = AdaptiveThrottle(ThrottleSettings(k=0), rng=lambda: 0.0)
    for _ in range(100):
        assert t.admit()
        t.record(False)
    assert t.local_refusals == 0


@pytest.mark.parametrize("kwargs", [{"k": 0.5}, {"k": float("nan")}, {"window_s": 0}])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ThrottleSettings(**kwargs)


def test_calls_in_flight_do_not_count_against_the_server() -> None:
    # 50 slow calls start before any has answered: nothing has been refused, so none of
    # them may be refused locally (counting them as requests without accepts would).
    t = AdaptiveThrottle(rng=lambda: 0.0)
    assert all(t.admit() for _ in range(50))
    for _ in range(50):
        t.record(True)
    assert t.local_refusals == 0
