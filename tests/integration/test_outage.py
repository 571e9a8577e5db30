"""The outage story end to end, over real sockets, with real clients.

Warm the cache through a real Unbound, break the upstream each way it can break,
let the TTLs expire (by moving the forwarder's clock), and every cached name must
still resolve — with TTL 30, EDE 3, and the stale counter saying so — until the
upstream returns and fresh data flows again.
"""

from __future__ import annotations

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.client import ask, dig, ede_codes, eventually, ttls

NAMES = ["www.test", "v6.test", "alias.test"]
TYPES = {"www.test": "A", "v6.test": "AAAA", "alias.test": "A"}


def test_dig_through_forwarder_to_unbound(unbound, start_forwarder):
    """The plain forwarding path with dig: A, AAAA, CNAME chain, NXDOMAIN, TC → TCP."""
    fwd = start_forwarder([unbound.address])
    assert dig(fwd.port, "+short", "www.test").split() == ["192.0.2.1"]
    assert dig(fwd.port, "+short", "v6.test", "AAAA").split() == ["2001:db8::1"]
    assert dig(fwd.port, "+short", "alias.test").split() == ["www.test.", "192.0.2.1"]
    assert "status: NXDOMAIN" in dig(fwd.port, "nosuch.test")
    # big.test does not fit in UDP: dig sees TC and retries over TCP by itself.
    txt = dig(fwd.port, "+short", "big.test", "TXT", "+ignore")
    assert txt.strip() == ""
    assert len(dig(fwd.port, "+short", "big.test", "TXT").splitlines()) == 40
    assert len(dig(fwd.port, "+short", "+tcp", "big.test", "TXT").splitlines()) == 40
    header = dig(fwd.port, "www.test")
    assert "flags: qr rd ra;" in header  # never AA: a forwarder is not authoritative


def test_outage_unbound_killed_then_back(unbound, start_forwarder):
    """Kill the real upstream: cached names answer stale (TTL 30, EDE 3); restart it: fresh again."""
    fwd = start_forwarder([unbound.address], stale={"client_timeout": 0.3, "recheck": 30},
                          upstream={"attempt_timeout": 0.5, "total_timeout": 1.0,
                                    "probe_name": "test."})  # the test Unbound refuses ". NS"
    for name in NAMES:
        assert ask(fwd.port, name, TYPES[name]).answer
    unbound.kill()
    fwd.advance(301)  # every TTL (300) has expired
    for name in NAMES:
        msg = ask(fwd.port, name, TYPES[name])
        assert msg.rcode() == dns.rcode.NOERROR, name
        assert msg.answer and ttls(msg) == {30}, name
        assert ede_codes(msg) == [3], name
    out = dig(fwd.port, "www.test")
    assert "192.0.2.1" in out and "EDE: 3 (Stale Answer)" in out
    stale_total = sum(fwd.metric("resolver_stale_answers_total", reason=r)
                      for r in ("timeout", "unreachable", "recheck"))
    assert stale_total >= len(NAMES) + 1
    # A name never cached gets SERVFAIL (never NXDOMAIN) within the deadline.
    assert ask(fwd.port, "never.test").rcode() == dns.rcode.SERVFAIL

    unbound.set_record("www.test. 300 IN A 192.0.2.100")
    unbound.restart()
    # No clock move: the prober notices the return, which ends the recheck hold at once.
    label = f"udp://{unbound.address}"
    assert eventually(lambda: fwd.metric("resolver_upstream_up", upstream=label) == 1, timeout=5)
    msg = ask(fwd.port, "www.test")
    assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.100"]
    assert ttls(msg) == {300} and not ede_codes(msg)


@pytest.mark.parametrize("mode, reason", [
    ("drop", "timeout"), ("servfail", "servfail"), ("refused", "refused"), ("garbage", "timeout"),
    ("wrong_id", "timeout"), ("closed", "unreachable"),
])
def test_outage_each_failure_mode(fake_upstream, start_forwarder, mode, reason):
    """Every way an upstream can fail leads to a stale answer with the right reason label."""
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=60)
    fwd = start_forwarder([fake_upstream.address], stale={"client_timeout": 0.2},
                          upstream={"attempt_timeout": 0.4, "total_timeout": 0.4})
    assert ttls(ask(fwd.port, "www.test")) == {60}
    if mode == "closed":
        fake_upstream.close_port()
    else:
        fake_upstream.mode(mode)
    fwd.advance(61)
    msg = ask(fwd.port, "www.test")
    assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.1"]
    assert ttls(msg) == {30} and ede_codes(msg) == [3]
    assert fwd.metric("resolver_stale_answers_total", reason=reason) == 1
    label = f"udp://{fake_upstream.address}"
    if mode in ("garbage", "wrong_id"):
        # Replies that fail the ID/question check are ignored, not trusted.
        assert fwd.metric("resolver_upstream_mismatched_replies_total", upstream=label) >= 1
    else:
        # The refresh fails after the client already got its stale answer: poll for it.
        assert eventually(lambda: fwd.metric("resolver_upstream_errors_total", upstream=label, reason=reason) >= 1)


def test_changed_record_is_picked_up_after_ttl(unbound, start_forwarder):
    """A record changed at the source is served once the cached TTL runs out, not before."""
    fwd = start_forwarder([unbound.address])
    assert [rr.to_text() for rr in ask(fwd.port, "www.test").answer[0]] == ["192.0.2.1"]
    unbound.set_record("www.test. 300 IN A 192.0.2.50")
    fwd.advance(299)
    assert [rr.to_text() for rr in ask(fwd.port, "www.test").answer[0]] == ["192.0.2.1"]
    # That ask was in the prefetch window: let the refresh behind it land before time
    # jumps on (a jump past client_timeout would find it in flight and answer stale).
    assert eventually(lambda: not fwd.app.pipeline.inflight)
    fwd.advance(2)
    assert [rr.to_text() for rr in ask(fwd.port, "www.test").answer[0]] == ["192.0.2.50"]


def test_failover_to_second_upstream_and_dead_one_is_skipped(fake_upstream, unbound, start_forwarder):
    """A dead first upstream costs a few failures, then is skipped while it is down."""
    fake_upstream.close_port()
    fwd = start_forwarder([fake_upstream.address, unbound.address],
                          upstream={"attempt_timeout": 0.3, "total_timeout": 1.0, "max_failures": 2,
                                    "backoff": 60})
    for i in range(6):
        unbound.add_record(f"n{i}.test. 300 IN A 192.0.2.{10 + i}")
    for i in range(6):
        msg = ask(fwd.port, f"n{i}.test")
        assert [rr.to_text() for rr in msg.answer[0]] == [f"192.0.2.{10 + i}"]
    label = f"udp://{fake_upstream.address}"
    assert fwd.metric("resolver_upstream_requests_total", upstream=label) == 2
    assert fwd.metric("resolver_upstream_up", upstream=label) == 0
    assert fwd.metric("resolver_upstream_up", upstream=f"udp://{unbound.address}") == 1


def test_truncated_upstream_reply_is_retried_over_tcp(fake_upstream, start_forwarder):
    """An upstream UDP reply with TC=1 is never cached or passed on: the forwarder asks again over TCP."""
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fake_upstream.mode("truncate")
    fwd = start_forwarder([fake_upstream.address])
    msg = ask(fwd.port, "www.test")
    assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.1"]
    transports = [c[0] for c in fake_upstream.calls]
    assert transports == ["udp", "tcp"]


def test_tcp_only_upstream(unbound, start_forwarder):
    fwd = start_forwarder([f"tcp://{unbound.address}"])
    assert [rr.to_text() for rr in ask(fwd.port, "www.test").answer[0]] == ["192.0.2.1"]


def test_slow_upstream_for_new_name_gets_servfail_in_bounded_time(fake_upstream, start_forwarder):
    """Never silence: a name with nothing cached gets SERVFAIL once total_timeout passes."""
    import time

    fake_upstream.mode("drop")
    fwd = start_forwarder([fake_upstream.address], upstream={"attempt_timeout": 0.3, "total_timeout": 0.6})
    t = time.monotonic()
    msg = ask(fwd.port, "www.test", timeout=3)
    assert msg.rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - t < 1.5
