"""Slow is not dead, and a lost datagram is not a lost query (issue 13, items 2 and 3).

Real upstreams are sometimes 1.5-3 s slow and lose datagrams.  With the default
settings (attempt_timeout 1 s = the initial RTO, total_timeout 4 s) the forwarder
must still resolve every never-cached name through an upstream that answers every
query 1.5 s or 3 s late, must let a background refresh take the late answer, and
must retransmit a lost datagram (fresh ID and source port, RFC 5452) to its only
upstream within the deadline.  Clients are one address (127.0.0.1), with a stub
resolver's patience (dnspython, 6 s).  The cache clock is the harness's FakeClock;
the slowness is real time.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import dns.rcode
import pytest

from tests.support.client import ask, ede_codes, eventually

STUB_TIMEOUT = 6.0  # a stub resolver's patience (glibc: 5 s per try)


def values(msg) -> list[str]:
    return [rr.to_text() for rrset in msg.answer for rr in rrset]


@pytest.mark.parametrize("delay", [1.5, 3.0])
def test_slow_upstream_resolves_never_cached_names(fake_upstream, start_forwarder, delay):
    """Every reply `delay` late: the first sends pass their RTO (1 s) and are
    retransmitted, but keep listening; the late answers win, no SERVFAIL."""
    names = [f"slow{i}.test" for i in range(6)]
    for i, name in enumerate(names):
        fake_upstream.answer(name, "A", f"192.0.2.{i + 1}", ttl=300)
    fake_upstream.delay(delay)
    fwd = start_forwarder([fake_upstream.address])
    with ThreadPoolExecutor(len(names)) as pool:
        replies = list(pool.map(lambda n: ask(fwd.port, n, timeout=STUB_TIMEOUT), names))
    assert [r.rcode() for r in replies] == [dns.rcode.NOERROR] * len(names)
    assert [values(r) for r in replies] == [[f"192.0.2.{i + 1}"] for i in range(len(names))]
    label = f"udp://{fake_upstream.address}"
    assert fwd.metric("resolver_upstream_up", upstream=label) == 1  # slow, answering: healthy
    assert fwd.metric("resolver_upstream_errors_total", upstream=label, reason="timeout") == 0


def test_slow_upstream_refreshes_a_stale_entry(fake_upstream, start_forwarder):
    """The client is answered stale after client_timeout; the refresh keeps listening
    up to total_timeout and stores the 3 s late answer."""
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=60)
    fwd = start_forwarder([fake_upstream.address])
    assert values(ask(fwd.port, "www.test")) == ["192.0.2.1"]
    fake_upstream.clear().answer("www.test", "A", "192.0.2.99", ttl=60).delay(3.0)
    fwd.advance(61)
    msg = ask(fwd.port, "www.test", timeout=STUB_TIMEOUT)
    assert values(msg) == ["192.0.2.1"] and ede_codes(msg) == [3]  # stale after client_timeout (1.8 s)
    # No clock move: the entry is fresh again only if the late answer was kept.
    assert eventually(lambda: values(ask(fwd.port, "www.test", timeout=STUB_TIMEOUT)) == ["192.0.2.99"],
                      timeout=8.0)


def test_lost_first_datagram_is_retransmitted_with_a_fresh_id_and_port(fake_upstream, start_forwarder):
    """The only upstream loses the first query: it is sent again within the deadline."""
    fake_upstream.answer("lossy.test", "A", "192.0.2.7", ttl=300)
    fwd = start_forwarder([fake_upstream.address])
    fake_upstream.lose_next(1)
    before = len(fake_upstream.received)
    msg = ask(fwd.port, "lossy.test", timeout=STUB_TIMEOUT)
    assert msg.rcode() == dns.rcode.NOERROR and values(msg) == ["192.0.2.7"]
    sends = fake_upstream.received[before:]
    assert len(sends) == 2 and len(fake_upstream.calls_for("lossy.test")) == 2
    (id1, port1), (id2, port2) = sends
    assert id1 != id2 and port1 != port2  # RFC 5452 §9.2: fresh ID, fresh source port
    label = f"udp://{fake_upstream.address}"
    assert fwd.metric("resolver_upstream_up", upstream=label) == 1


def test_thirty_percent_loss_never_cached_names_all_resolve(fake_upstream, start_forwarder):
    """30% of queries lost, one client address, names asked one after another."""
    names = [f"l{i}.test" for i in range(30)]
    for name in names:
        fake_upstream.answer(name, "A", "192.0.2.30", ttl=300)
    fake_upstream.answer("warm.test", "A", "192.0.2.31", ttl=300)
    fwd = start_forwarder([fake_upstream.address])
    assert values(ask(fwd.port, "warm.test")) == ["192.0.2.31"]  # one RTT measured
    fake_upstream.loss(0.3, seed=13)
    rcodes = [ask(fwd.port, name, timeout=STUB_TIMEOUT).rcode() for name in names]
    assert rcodes == [dns.rcode.NOERROR] * len(names)
    assert len(fake_upstream.calls) > len(names) + 1  # some were lost and sent again


def test_retransmissions_stop_at_the_deadline(fake_upstream, start_forwarder):
    """A silent upstream: a bounded number of sends per query, SERVFAIL at total_timeout."""
    fake_upstream.mode("drop")
    fwd = start_forwarder([fake_upstream.address], upstream={"total_timeout": 2.0})
    started = time.monotonic()
    msg = ask(fwd.port, "gone.test", timeout=STUB_TIMEOUT)
    assert msg.rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started >= 1.9
    # Initial RTO 1 s, doubled: sends at 0 and 1 s (the next would be at 3 s).
    assert len(fake_upstream.calls_for("gone.test")) == 2


def test_a_lossy_upstream_gets_expired_names_answered_stale_at_once(fake_upstream, start_forwarder):
    """Half the datagrams lost: never-cached names still resolve through retransmissions
    (and teach the pool the loss rate, on /metrics); then an expired name is answered stale at
    once (stale.lossy_upstream, EDE 3) instead of its client waiting out an RTO, and the
    refresh behind it lands once the loss ends."""
    cached = [f"c{i}.test" for i in range(5)]
    learn = [f"n{i}.test" for i in range(24)]
    for name in cached:
        fake_upstream.answer(name, "A", "192.0.2.40", ttl=60)
    for name in learn:
        fake_upstream.answer(name, "A", "192.0.2.41", ttl=60)
    fwd = start_forwarder([fake_upstream.address])
    for name in cached:
        assert values(ask(fwd.port, name)) == ["192.0.2.40"]
    label = f"udp://{fake_upstream.address}"
    assert fwd.metric("resolver_upstream_lost_ratio", upstream=label) == 0
    fake_upstream.loss(0.5, seed=11)
    for name in learn:
        ask(fwd.port, name, timeout=STUB_TIMEOUT)
    assert fwd.metric("resolver_upstream_lost_ratio", upstream=label) >= 0.2
    fwd.advance(61)
    fake_upstream.clear()
    for name in cached:
        fake_upstream.answer(name, "A", "192.0.2.99", ttl=60)
    fake_upstream.loss(0.5, seed=11)
    replies = [ask(fwd.port, name, timeout=STUB_TIMEOUT) for name in cached]
    assert [values(m) for m in replies] == [["192.0.2.40"]] * len(cached)
    assert [ede_codes(m) for m in replies] == [[3]] * len(cached)
    assert fwd.metric("resolver_stale_answers_total", reason="lossy_upstream") == len(cached)
    assert fwd.metric("resolver_upstream_up", upstream=label) == 1  # lossy, answering: not down
    fake_upstream.loss(0.0)
    assert eventually(lambda: all(values(ask(fwd.port, n, timeout=STUB_TIMEOUT)) == ["192.0.2.99"] for n in cached),
                      timeout=10.0)
