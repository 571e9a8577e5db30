"""Upstreams that heal, over real sockets: fast in an outage, fast out of it.

The forwarder's cache clock is a FakeClock (TTLs expire by ``advance``); upstream
health, back-off and probes run on real event-loop time, so the recovery checks
poll with generous bounds instead of sleeping a fixed time.
"""

from __future__ import annotations

import time

import dns.rcode

from tests.support.client import ask, ede_codes, eventually, ttls

FAST = {"attempt_timeout": 0.3, "total_timeout": 0.6, "max_failures": 1,
        "probe_interval": 0.1, "probe_interval_max": 0.2}


def values(msg) -> list[str]:
    return [rr.to_text() for rrset in msg.answer for rr in rrset]


def test_prober_notices_recovery_and_held_names_refresh_without_waiting(fake_upstream, start_forwarder):
    """Down: stale at once.  Back: the prober sees it with no client traffic; fresh data at once."""
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=60)
    fake_upstream.answer("two.test", "A", "192.0.2.2", ttl=60)
    fwd = start_forwarder([fake_upstream.address], stale={"client_timeout": 2.0, "recheck": 300}, upstream=FAST)
    label = f"udp://{fake_upstream.address}"
    assert values(ask(fwd.port, "www.test")) == ["192.0.2.1"]
    assert values(ask(fwd.port, "two.test")) == ["192.0.2.2"]

    fake_upstream.mode("drop")
    fwd.advance(61)
    msg = ask(fwd.port, "www.test")  # the refresh times out (0.3 s): stale, upstream marked down
    assert values(msg) == ["192.0.2.1"] and ttls(msg) == {30} and ede_codes(msg) == [3]
    assert eventually(lambda: fwd.metric("resolver_upstream_up", upstream=label) == 0)

    # Known down: another expired name is answered stale at once, not after client_timeout (2 s).
    t = time.monotonic()
    msg = ask(fwd.port, "two.test")
    assert time.monotonic() - t < 1.0
    assert values(msg) == ["192.0.2.2"] and ede_codes(msg) == [3]
    assert fwd.metric("resolver_stale_answers_total", reason="upstreams_down") == 1
    assert eventually(lambda: fwd.metric("resolver_upstream_probes_total", upstream=label, result="fail") >= 1)

    # Recovery, with no client query and no clock move: the prober marks it up.  (First
    # let two.test's background fetch end: its retransmissions would notice it too.)
    assert eventually(lambda: fwd.metric("resolver_upstream_inflight") == 0)
    fake_upstream.clear().answer("www.test", "A", "192.0.2.100", ttl=60)  # clear(): mode normal
    assert eventually(lambda: fwd.metric("resolver_upstream_up", upstream=label) == 1, timeout=5)
    assert fwd.metric("resolver_upstream_probes_total", upstream=label, result="ok") == 1
    # www.test is held by a 300 s recheck timer, but the recovery ended the hold.
    msg = ask(fwd.port, "www.test")
    assert values(msg) == ["192.0.2.100"]
    assert not ede_codes(msg) and ttls(msg) == {60}


def test_dead_upstream_is_probed_at_a_bounded_rate(fake_upstream, start_forwarder):
    """A down upstream costs about one probe per probe_interval_max, whatever the client load."""
    fake_upstream.close_port()
    fwd = start_forwarder([fake_upstream.address], upstream=FAST)
    label = f"udp://{fake_upstream.address}"
    assert ask(fwd.port, "www.test").rcode() == dns.rcode.SERVFAIL
    assert eventually(lambda: fwd.metric("resolver_upstream_up", upstream=label) == 0)
    start = fwd.metric("resolver_upstream_probes_total", upstream=label, result="fail")
    t = time.monotonic()
    time.sleep(1.5)
    probes = fwd.metric("resolver_upstream_probes_total", upstream=label, result="fail") - start
    elapsed = time.monotonic() - t
    assert 1 <= probes <= elapsed / 0.2 + 2  # interval doubles 0.1 → 0.2, then stays


def test_never_cached_name_still_tries_an_upstream_when_all_are_down(fake_upstream, start_forwarder):
    """All down and nothing stale: one upstream is tried anyway, so a healed one answers at once."""
    fake_upstream.mode("drop")
    fwd = start_forwarder([fake_upstream.address], upstream={**FAST, "probe_interval": 30,
                                                             "probe_interval_max": 30})
    label = f"udp://{fake_upstream.address}"
    assert ask(fwd.port, "www.test").rcode() == dns.rcode.SERVFAIL
    assert eventually(lambda: fwd.metric("resolver_upstream_up", upstream=label) == 0)
    fake_upstream.answer("new.test", "A", "192.0.2.5").mode("normal")
    msg = ask(fwd.port, "new.test")  # no probe yet (30 s): the client's own query finds it healed
    assert values(msg) == ["192.0.2.5"]
    assert fwd.metric("resolver_upstream_up", upstream=label) == 1


def test_real_unbound_blackholed_then_back(unbound, start_forwarder):
    """A real Unbound stops, cached names stay answered at once, and fresh data is back within seconds."""
    fwd = start_forwarder([unbound.address], stale={"client_timeout": 1.8, "recheck": 30},
                          upstream={**FAST, "probe_name": "test."})
    label = f"udp://{unbound.address}"
    for name in ("www.test", "alias.test"):
        assert ask(fwd.port, name).answer
    unbound.kill()
    fwd.advance(301)
    assert ask(fwd.port, "www.test").answer  # this one marks the upstream down
    assert eventually(lambda: fwd.metric("resolver_upstream_up", upstream=label) == 0)
    t = time.monotonic()
    msg = ask(fwd.port, "alias.test")
    assert time.monotonic() - t < 1.0 and ede_codes(msg) == [3]
    unbound.set_record("www.test. 300 IN A 192.0.2.77")
    unbound.restart()
    back = time.monotonic()
    assert eventually(lambda: fwd.metric("resolver_upstream_up", upstream=label) == 1, timeout=5)
    noticed = time.monotonic() - back
    msg = ask(fwd.port, "www.test")
    assert values(msg) == ["192.0.2.77"] and ttls(msg) == {300}
    assert noticed < 3.0  # probe_interval_max 0.2 s: generous bound for a loaded machine


def test_prefetch_refreshes_a_popular_name_before_it_expires(unbound, start_forwarder):
    """Asked in the last 10% of its TTL, a name is refreshed behind the answer; it never expires."""
    fwd = start_forwarder([unbound.address])
    assert values(ask(fwd.port, "www.test")) == ["192.0.2.1"]
    unbound.set_record("www.test. 300 IN A 192.0.2.60")
    fwd.advance(280)
    msg = ask(fwd.port, "www.test")
    assert values(msg) == ["192.0.2.1"] and ttls(msg) in ({20}, {19})  # from cache at once (the clock flows too)
    assert eventually(lambda: values(ask(fwd.port, "www.test")) == ["192.0.2.60"])
    assert fwd.metric("resolver_prefetches_total") == 1
    assert fwd.metric("resolver_cache_misses_total") == 1  # only the first query missed


def test_client_timeout_zero_answers_stale_first(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=60)
    fwd = start_forwarder([fake_upstream.address], stale={"client_timeout": 0.0},
                          upstream={"attempt_timeout": 3.0, "total_timeout": 3.0})
    assert values(ask(fwd.port, "www.test")) == ["192.0.2.1"]
    fake_upstream.clear().answer("www.test", "A", "192.0.2.2", ttl=60).delay(1.5)
    fwd.advance(61)
    t = time.monotonic()
    msg = ask(fwd.port, "www.test")
    assert time.monotonic() - t < 1.2 and values(msg) == ["192.0.2.1"] and ede_codes(msg) == [3]
    assert fwd.metric("resolver_stale_answers_total", reason="answer_first") == 1
    assert eventually(lambda: values(ask(fwd.port, "www.test")) == ["192.0.2.2"], timeout=5)
