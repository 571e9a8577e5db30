"""Last-known-good over real sockets: an upstream that answers empty for a name it had.

The fake upstream's ``empty`` mode (NOERROR, no records, SOA) and NXDOMAIN are the
AWS-style failure; the metrics must show it whatever the mode.
"""

from __future__ import annotations

import dns.rcode

from resolver.config import LastKnownGoodConfig
from tests.support.client import ask, dig, ede_codes, ttls


def test_enforce_keeps_records_through_an_empty_answer_storm(fake_upstream, start_forwarder):
    fake_upstream.answer("dynamodb.us-east-1.amazonaws.com", "A", "192.0.2.10", ttl=60)
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=60)
    lkg = LastKnownGoodConfig(zones=("amazonaws.com",), max_age=3600.0, mode="enforce")
    fwd = start_forwarder([fake_upstream.address], stale={"last_known_good": lkg})
    assert ask(fwd.port, "dynamodb.us-east-1.amazonaws.com").answer
    assert ask(fwd.port, "www.test").answer
    fake_upstream.mode("empty")
    fwd.advance(61)
    msg = ask(fwd.port, "dynamodb.us-east-1.amazonaws.com")
    assert msg.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.10"] and ttls(msg) == {30}
    assert ede_codes(msg) == [3]
    out = dig(fwd.port, "dynamodb.us-east-1.amazonaws.com")
    assert "serving last known good records" in out and "192.0.2.10" in out
    # Outside the listed zones the empty answer goes through, and is counted.
    msg = ask(fwd.port, "www.test")
    assert msg.rcode() == dns.rcode.NOERROR and not msg.answer
    assert fwd.metric("resolver_answers_vanished_total") == 2
    assert fwd.metric("resolver_last_known_good_total", mode="enforce") == 1
    assert fwd.metric("resolver_stale_answers_total", reason="last_known_good") == 1
    assert fwd.metric("resolver_stale_answers_total", reason="recheck") == 1  # the dig, held


def test_shadow_passes_nxdomain_and_counts(fake_upstream, start_forwarder):
    fake_upstream.answer("api.example.amazonaws.com", "A", "192.0.2.11", ttl=60)
    lkg = LastKnownGoodConfig(zones=("amazonaws.com",), mode="shadow")
    fwd = start_forwarder([fake_upstream.address], stale={"last_known_good": lkg})
    assert ask(fwd.port, "api.example.amazonaws.com").answer
    fake_upstream.clear()  # the name is gone: NXDOMAIN
    fwd.advance(61)
    assert ask(fwd.port, "api.example.amazonaws.com").rcode() == dns.rcode.NXDOMAIN
    assert fwd.metric("resolver_last_known_good_total", mode="shadow") == 1
    assert fwd.metric("resolver_answers_vanished_total") == 1


def post(fwd, target: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{fwd.admin_port}{target}", method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_operator_pins_and_unpins_over_http(fake_upstream, start_forwarder):
    """No zones configured: the pin alone holds the records through an NXDOMAIN."""
    fake_upstream.answer("pay.example", "A", "192.0.2.20", ttl=60)
    fwd = start_forwarder([fake_upstream.address])
    assert ask(fwd.port, "pay.example").answer
    assert post(fwd, "/lkg/pin?name=pay.example&type=A") == (200, "pinned (records held)\n")
    assert fwd.admin_http("/lkg/pins") == (200, "pay.example. A\n")
    assert post(fwd, "/lkg/pin?name=bad..name")[0] == 400
    fake_upstream.clear()
    fwd.advance(61)
    msg = ask(fwd.port, "pay.example")
    assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.20"] and ede_codes(msg) == [3]
    assert post(fwd, "/lkg/unpin?name=pay.example&type=A") == (200, "unpinned\n")
    fwd.advance(31)  # past the recheck hold
    assert ask(fwd.port, "pay.example").rcode() == dns.rcode.NXDOMAIN
