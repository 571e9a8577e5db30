"""Conditional forwarding end to end: two real Unbound servers with different data
behind one forwarder, each zone reaching its own, with failover and serve-stale per
group; a reverse zone routed like any other.

Unbound "A" serves the default (top-level ``upstreams``); Unbound "B" serves the
zone ``corp.test`` (``forward``).  Both serve the zone ``test.``, with different
addresses for ``www.test``, so a misrouted query shows in the answer itself.
"""

from __future__ import annotations

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.client import ask, ede_codes
from tests.support.unbound import HAVE_UNBOUND, UnboundServer, free_port

pytestmark = pytest.mark.skipif(not HAVE_UNBOUND, reason="the unbound binary is not installed")

A_RECORDS = ["www.test. 300 IN A 192.0.2.1"]
B_RECORDS = ["www.test. 300 IN A 198.51.100.1", "db.corp.test. 300 IN A 198.51.100.5",
             "deep.x.corp.test. 300 IN A 198.51.100.6"]


@pytest.fixture
def two_unbounds(tmp_path):
    a = UnboundServer(tmp_path / "a", A_RECORDS).start()
    try:
        b = UnboundServer(tmp_path / "b", B_RECORDS).start()
        try:
            yield a, b
        finally:
            b.close()
    finally:
        a.close()


@pytest.fixture
def routed(start_forwarder):
    """``routed(upstreams, forward=[{zone, upstreams}], **sections)`` → a running forwarder."""
    return lambda upstreams, forward, **sections: start_forwarder(upstreams, forward=forward, **sections)


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rr.to_text() for rrset in msg.answer for rr in rrset)


def label(server) -> str:
    return f"udp://{server.address}"


def test_each_zone_reaches_its_own_upstream(two_unbounds, routed):
    a, b = two_unbounds
    fwd = routed([a.address], [{"zone": "corp.test", "upstreams": [b.address]}])
    assert addresses(ask(fwd.port, "www.test")) == ["192.0.2.1"]          # A's data
    assert addresses(ask(fwd.port, "db.corp.test")) == ["198.51.100.5"]   # B's data (A has none)
    assert addresses(ask(fwd.port, "deep.x.CORP.test")) == ["198.51.100.6"]
    assert ask(fwd.port, "nosuch.corp.test").rcode() == dns.rcode.NXDOMAIN  # B's denial, with its SOA
    assert fwd.metric("resolver_upstream_requests_total", upstream=label(a)) == 1
    assert fwd.metric("resolver_upstream_requests_total", upstream=label(b)) == 3
    assert fwd.metric("resolver_upstream_up", upstream=label(b)) == 1


def test_longest_zone_wins(two_unbounds, routed):
    a, b = two_unbounds
    # test. → B, but www.test. → A (a zone may name the default upstreams: it shares their group).
    fwd = routed([a.address], [{"zone": "test", "upstreams": [b.address]},
                               {"zone": "www.test", "upstreams": [a.address]}])
    assert addresses(ask(fwd.port, "www.test")) == ["192.0.2.1"]          # longest: www.test → A
    assert addresses(ask(fwd.port, "db.corp.test")) == ["198.51.100.5"]   # test → B
    assert fwd.metric("resolver_upstream_requests_total", upstream=label(a)) == 1
    assert fwd.metric("resolver_upstream_requests_total", upstream=label(b)) == 1


def test_failover_inside_a_group_leaves_the_other_group_alone(two_unbounds, routed):
    a, b = two_unbounds
    dead = f"127.0.0.1:{free_port()}"  # nothing listens: ICMP port unreachable
    fwd = routed([a.address], [{"zone": "corp.test", "upstreams": [dead, b.address]}],
                 upstream={"max_failures": 1})
    assert addresses(ask(fwd.port, "db.corp.test")) == ["198.51.100.5"]   # dead tried, then B
    assert fwd.metric("resolver_upstream_errors_total", upstream=f"udp://{dead}", reason="unreachable") == 1
    assert fwd.metric("resolver_upstream_up", upstream=f"udp://{dead}") == 0
    assert addresses(ask(fwd.port, "deep.x.corp.test")) == ["198.51.100.6"]  # dead is skipped now
    assert fwd.metric("resolver_upstream_requests_total", upstream=f"udp://{dead}") == 1
    # The default group never saw the failure.
    assert addresses(ask(fwd.port, "www.test")) == ["192.0.2.1"]
    assert fwd.metric("resolver_upstream_up", upstream=label(a)) == 1
    assert fwd.metric("resolver_upstream_errors_total", upstream=label(a), reason="unreachable") == 0


def test_serve_stale_per_group(two_unbounds, routed):
    """B dies: names in corp.test are served stale; names elsewhere refresh from A as usual."""
    a, b = two_unbounds
    fwd = routed([a.address], [{"zone": "corp.test", "upstreams": [b.address]}])
    assert addresses(ask(fwd.port, "db.corp.test")) == ["198.51.100.5"]
    assert addresses(ask(fwd.port, "www.test")) == ["192.0.2.1"]
    b.kill()
    a.set_record("www.test. 300 IN A 192.0.2.99")
    fwd.advance(400)  # both entries expire
    stale = ask(fwd.port, "db.corp.test")
    assert addresses(stale) == ["198.51.100.5"] and stale.answer[0].ttl == 30 and ede_codes(stale) == [3]
    fresh = ask(fwd.port, "www.test")
    assert addresses(fresh) == ["192.0.2.99"] and ede_codes(fresh) == []
    assert fwd.metric("resolver_stale_answers_total", reason="unreachable") == 1
    assert fwd.metric("resolver_upstream_errors_total", upstream=label(b), reason="unreachable") == 1
    assert fwd.metric("resolver_upstream_errors_total", upstream=label(a), reason="unreachable") == 0
    # A never-cached name in the dead group: SERVFAIL (never NXDOMAIN), and A is not asked.
    before = fwd.metric("resolver_upstream_requests_total", upstream=label(a))
    assert ask(fwd.port, "new.corp.test").rcode() == dns.rcode.SERVFAIL
    assert fwd.metric("resolver_upstream_requests_total", upstream=label(a)) == before


def test_reverse_zone_is_routed_like_any_zone(unbound, fake_upstream, routed):
    fake_upstream.answer("5.2.0.192.in-addr.arpa", "PTR", "db.corp.test.")
    fwd = routed([unbound.address], [{"zone": "2.0.192.in-addr.arpa", "upstreams": [fake_upstream.address]}])
    assert addresses(ask(fwd.port, "5.2.0.192.in-addr.arpa", "PTR")) == ["db.corp.test."]
    assert addresses(ask(fwd.port, "www.test")) == ["192.0.2.1"]
    assert [c[1] for c in fake_upstream.calls] == ["5.2.0.192.in-addr.arpa"]
    # Outside the reverse zone: the default upstream (Unbound refuses it: SERVFAIL, never NXDOMAIN).
    assert ask(fwd.port, "5.3.0.192.in-addr.arpa", "PTR").rcode() == dns.rcode.SERVFAIL
    assert len(fake_upstream.calls) == 1
