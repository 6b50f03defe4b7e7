"""The drain after deregistering: how long it lasts by what requests still arrive (a clock of the test's own)."""

from __future__ import annotations

import pytest

from messenger import shutdown_drain


class Clock:
    """time.monotonic and time.sleep for the module: sleeping moves the clock, and the requests scheduled
    meanwhile arrive (each marked in the shared Traffic as a worker's pre_request hook marks it)."""

    def __init__(self, traffic: shutdown_drain.Traffic, arrivals: list[tuple[float, str]]):
        self.now = 1000.0
        self.start = self.now
        self.traffic = traffic
        self.arrivals = sorted(arrivals)
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        until = self.now + seconds
        while self.arrivals and self.start + self.arrivals[0][0] <= until:
            at, path = self.arrivals.pop(0)
            self.now = self.start + at
            self.traffic.seen(path)
        self.now = until


@pytest.fixture
def drain(monkeypatch):
    def run(arrivals: list[tuple[float, str]], minimum: float = 5.0) -> tuple[float, list[str], Clock]:
        traffic = shutdown_drain.Traffic()
        clock = Clock(traffic, arrivals)
        monkeypatch.setattr(shutdown_drain, "time", clock)
        warnings: list[str] = []
        extra = shutdown_drain.drain(traffic, minimum, warnings.append)
        return extra, warnings, clock

    return run


def test_a_load_balancer_that_dropped_the_instance_in_time_ends_the_drain_at_its_minimum(drain):
    extra, warnings, clock = drain([(t / 10, "/conversations/1/messages") for t in range(30)])  # until 2.9 s
    assert extra == 0.0 and warnings == [] and clock.slept == [5.0]


def test_health_checks_are_not_traffic(drain):
    extra, warnings, _ = drain([(4.5, "/health"), (4.9, "/health")])
    assert extra == 0.0 and warnings == []


def test_requests_that_still_arrive_keep_it_serving_until_a_quiet_second(drain):
    # A late render: requests go on until 7.2 s after deregistering.
    extra, warnings, clock = drain([(t / 10, "/conversations/1/messages") for t in range(73)])
    assert clock.now - clock.start == pytest.approx(8.2)  # the last request, then a quiet second
    assert extra == pytest.approx(3.2)
    assert len(warnings) == 1 and "requests still arrive 5.0s after deregistering" in warnings[0]


def test_a_load_balancer_that_never_stops_sending_is_left_after_twice_the_minimum(drain):
    extra, warnings, clock = drain([(t / 10, "/conversations") for t in range(300)])
    assert clock.now - clock.start == pytest.approx(10.0) and extra == pytest.approx(5.0)
    assert warnings[-1] == "requests still arrive 10.0s after deregistering; stopping anyway"
