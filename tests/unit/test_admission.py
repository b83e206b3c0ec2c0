"""Front-door admission: budgets, the wait estimate, the deadline check (fake clock, fake images)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from lookalike_server.admission import Admission
from lookalike_server.config import LimitsConfig
from lookalike_server.errors import InvalidArgument, Overloaded, TooLarge


def png(w: int = 32, h: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, "PNG")
    return buf.getvalue()


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_model_budget_refuses_and_release_restores():
    adm = Admission(LimitsConfig(max_images_per_request=4), {"m": 4})
    p = adm.admit([png()] * 4, ["m"])
    with pytest.raises(Overloaded, match="4 images in flight"):
        adm.admit([png()], ["m"])
    p.release()
    p.release()  # idempotent
    adm.admit([png()], ["m"]).release()
    st = adm.stats()
    assert st.rejected == {"model:m": 1} and st.inflight_images == 0 and st.inflight_pixels == 0


def test_bad_headers_and_oversized_requests_are_invalid_argument_not_overload():
    adm = Admission(LimitsConfig(max_pixels=10_000, request_pixels=10_000), {"m": 64})
    with pytest.raises(InvalidArgument, match=r"image 1: .*aspect ratio"):
        adm.admit([png(), png(4000, 2)], ["m"])
    with pytest.raises(TooLarge, match="limit per request is 10000"):
        adm.admit([png(100, 100), png(10, 10)], ["m"])
    assert adm.stats().inflight_images == 0


def test_throughput_counts_every_image_of_multi_image_calls_after_the_window_opens():
    clock = Clock()
    adm = Admission(LimitsConfig(), {"m": 256}, clock=clock)
    sizes = [1, 4, 2, 8, 3, 5, 6, 7]
    permits = [adm.admit([png()] * n, ["m"]) for n in sizes]
    for p in permits:
        clock.t += 0.25
        p.release()
    # The first release opens the window; the other 35 images took 7 x 0.25 s.
    assert adm.throughput("m") == pytest.approx(35 / 1.75)
    clock.t += 4.0  # busy time stands still while idle; releases before t = 1.0 leave the 5-s window
    # The window now opens at the release of 8 images (t = 1.0): 3 + 5 + 6 + 7 images in 1 busy second.
    assert adm.throughput("m") == pytest.approx(21 / 1.0)


def test_wait_estimate_and_deadline():
    clock = Clock()
    adm = Admission(LimitsConfig(max_queue_wait_ms=500), {"m": 64}, clock=clock)
    # 20 images finish over 2 busy seconds: 10 images/s.
    permits = [adm.admit([png()], ["m"]) for _ in range(21)]
    for p in permits:
        clock.t += 0.1
        p.release()
    clock.t += 30  # idle time does not dilute the estimate... but old samples leave the window
    assert adm.throughput("m") is None
    permits = [adm.admit([png()], ["m"]) for _ in range(21)]
    for p in permits:
        clock.t += 0.1
        p.release()
    clock.t += 1.0  # an idle second: busy time, not wall time, divides
    assert adm.throughput("m") == pytest.approx(10.0, rel=0.01)
    held = [adm.admit([png()], ["m"]) for _ in range(5)]  # 5 in flight: admitted up to the floor and under 500 ms
    with pytest.raises(Overloaded, match="wait about 600 ms"):
        adm.admit([png()], ["m"])  # (5 + 1) / 10 = 0.6 s
    held.pop().release()
    adm.admit([png()], ["m"]).release()  # (4 + 1) / 10 = 0.5 s: admitted
    # The call's own deadline is a limit too.
    with pytest.raises(Overloaded):
        adm.admit([png()], ["m"], remaining_s=0.2)
    assert set(adm.stats().rejected) == {"wait:m"}
