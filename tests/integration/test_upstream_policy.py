"""Upstream policies and hedging over real sockets, with two fake upstreams."""

from __future__ import annotations

import time

from tests.support.client import ask


def names(n):
    return [f"n{i}.test" for i in range(n)]


def serve(*ups, n=12):
    for up in ups:
        for i, name in enumerate(names(n)):
            up.answer(name, "A", f"192.0.2.{i + 1}")


def test_hedge_asks_the_second_upstream_when_the_first_is_slow(fake_upstream, second_upstream, start_forwarder):
    serve(fake_upstream, second_upstream, n=1)
    fake_upstream.delay(1.5)  # slower than the hedge delay, within attempt_timeout
    fwd = start_forwarder([fake_upstream.address, second_upstream.address],
                          upstream={"attempt_timeout": 2.0, "total_timeout": 3.0, "hedge_after": 0.1})
    t = time.monotonic()
    msg = ask(fwd.port, "n0.test")
    assert msg.answer and time.monotonic() - t < 1.2
    assert fwd.metric("resolver_upstream_hedges_total") == 1
    assert [c[1] for c in second_upstream.calls] == ["n0.test"]


def test_no_hedge_when_off(fake_upstream, second_upstream, start_forwarder):
    serve(fake_upstream, second_upstream, n=1)
    fake_upstream.delay(0.4)
    fwd = start_forwarder([fake_upstream.address, second_upstream.address],
                          upstream={"attempt_timeout": 2.0, "total_timeout": 3.0, "hedge_after": 0.0})
    assert ask(fwd.port, "n0.test").answer
    assert fwd.metric("resolver_upstream_hedges_total") == 0 and second_upstream.calls == []


def test_round_robin_spreads_queries(fake_upstream, second_upstream, start_forwarder):
    serve(fake_upstream, second_upstream)
    fwd = start_forwarder([fake_upstream.address, second_upstream.address], upstream={"policy": "round_robin"})
    for name in names(12):
        assert ask(fwd.port, name).answer
    assert len(fake_upstream.calls) == 6 and len(second_upstream.calls) == 6


def test_fastest_prefers_the_lower_latency_upstream(fake_upstream, second_upstream, start_forwarder):
    serve(fake_upstream, second_upstream)
    fake_upstream.delay(0.15)
    fwd = start_forwarder([fake_upstream.address, second_upstream.address],
                          upstream={"policy": "fastest", "hedge_after": 0.0})
    for name in names(12):
        assert ask(fwd.port, name).answer
    # Each is measured once (unmeasured first), then the fast one takes the rest.
    assert len(fake_upstream.calls) <= 2 and len(second_upstream.calls) >= 10
