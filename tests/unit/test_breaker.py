"""The fleet tier's circuit breaker (resolver/cache/breaker.py): every transition, with ``now`` by hand."""

from __future__ import annotations

from resolver.cache.breaker import CLOSED, HALF_OPEN, OPEN, Breaker


def test_closed_lets_everything_through_and_a_success_resets_the_count():
    b = Breaker(failures=3, reset=10.0)
    for _ in range(2):
        b.failed(0.0)
    b.succeeded()
    b.failed(1.0)
    b.failed(1.0)
    assert b.state == CLOSED and b.allow(1.0)


def test_failures_in_a_row_open_it_and_nothing_goes_until_reset():
    b = Breaker(failures=3, reset=10.0)
    for t in (0.0, 0.1, 0.2):
        assert b.allow(t)
        b.failed(t)
    assert b.state == OPEN and b.opened == 1
    assert not b.allow(5.0) and not b.allow(10.19)


def test_after_reset_one_probe_goes_and_its_success_closes_it():
    b = Breaker(failures=1, reset=10.0)
    b.failed(0.0)
    assert b.allow(10.0) and b.state == HALF_OPEN
    assert not b.allow(10.0), "one probe at a time"
    b.succeeded()
    assert b.state == CLOSED and b.allow(10.1) and b.allow(10.1)


def test_a_failed_probe_opens_it_for_another_reset():
    b = Breaker(failures=5, reset=10.0)
    for _ in range(5):
        b.failed(0.0)
    assert b.allow(10.0)
    b.failed(10.5)  # one failure is enough in half-open
    assert b.state == OPEN and b.opened == 2
    assert not b.allow(20.0) and b.allow(20.5)
