"""Client queries are not upstream failures (issue 13, item 5).

Questions a forwarder does not serve are answered here, without asking upstream,
as Unbound does (daemon/worker.c): zone transfers REFUSED, qtype OPT and the other
meta-types FORMERR (RFC 6891 §6.1.1, RFC 6895 §3.1), and non-IN classes REFUSED.
A reply about what the client asked — REFUSED for a name outside an authoritative
upstream's zones — never marks the upstream down.  Nothing a client sends, from one
address, changes how the upstream is judged.
"""

from __future__ import annotations

import logging
import random
import socket

import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from tests.support.client import ask

LOCAL_RCODES = [
    ("version.bind", "TXT", "CH", dns.rcode.REFUSED),
    ("hostname.bind", "TXT", "CH", dns.rcode.REFUSED),
    ("id.server", "TXT", "CH", dns.rcode.REFUSED),
    ("www.test", "A", "HS", dns.rcode.REFUSED),
    ("www.test", "A", "ANY", dns.rcode.REFUSED),
    ("www.test", "A", 0, dns.rcode.REFUSED),
    ("test", "AXFR", "IN", dns.rcode.REFUSED),
    ("test", "IXFR", "IN", dns.rcode.REFUSED),
    ("www.test", "OPT", "IN", dns.rcode.FORMERR),
    ("www.test", "TSIG", "IN", dns.rcode.FORMERR),
]


def upstream_judged_healthy(fwd, up) -> bool:
    label = f"udp://{up.address}"
    failures = sum(fwd.metric("resolver_upstream_errors_total", upstream=label, reason=r)
                   for r in ("timeout", "servfail", "unreachable", "rcode", "bad_response"))
    return fwd.metric("resolver_upstream_up", upstream=label) == 1 and failures == 0


def test_unserved_questions_are_answered_locally_and_never_reach_the_upstream(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address])
    for _ in range(3):  # three rounds: more than max_failures
        for name, rdtype, rdclass, rcode in LOCAL_RCODES:
            q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype) if isinstance(rdtype, str) else rdtype,
                                       rdclass=dns.rdataclass.from_text(rdclass) if isinstance(rdclass, str)
                                       else rdclass, use_edns=0)
            r = dns.query.udp(q, "127.0.0.1", port=fwd.port, timeout=3)
            assert r.rcode() == rcode, (name, rdtype, rdclass, dns.rcode.to_text(r.rcode()))
            assert r.id == q.id and r.question == q.question
            assert r.edns == 0  # the client's EDNS is answered with EDNS (RFC 6891 §7)
    assert fake_upstream.calls == []
    assert upstream_judged_healthy(fwd, fake_upstream)
    assert [rr.to_text() for rr in ask(fwd.port, "www.test").answer[0]] == ["192.0.2.1"]


def test_refused_for_the_question_does_not_mark_the_upstream_down(fake_upstream, start_forwarder):
    """An authoritative upstream REFUSES names outside its zones: the client gets
    SERVFAIL (nothing cached), and the upstream stays up for everything else."""
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address])
    for i in range(10):
        assert ask(fwd.port, f"name{i}.outside-zone.example").rcode() == dns.rcode.SERVFAIL
    assert len(fake_upstream.calls) == 10  # asked, refused
    assert upstream_judged_healthy(fwd, fake_upstream)
    assert fwd.metric("resolver_upstream_errors_total", upstream=f"udp://{fake_upstream.address}",
                      reason="refused") == 10
    assert fwd.metric("resolver_stale_answers_total", reason="upstreams_down") == 0
    assert [rr.to_text() for rr in ask(fwd.port, "www.test").answer[0]] == ["192.0.2.1"]


def _odd_queries(rng: random.Random, count: int) -> list[bytes]:
    """Valid queries, mutated: bit flips, odd classes and types, outside-zone names."""
    base = [dns.message.make_query(n, t, use_edns=e).to_wire()
            for n in ("www.test", "nosuch.test", "x.outside.example", "version.bind")
            for t in ("A", "AAAA", "TXT", "ANY", "SOA") for e in (False, 0)]
    out = []
    for i in range(count):
        data = bytearray(rng.choice(base))
        kind = i % 4
        if kind == 0:  # a few random bit flips anywhere (header included)
            for _ in range(rng.randint(1, 3)):
                pos = rng.randrange(len(data))
                data[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:  # any class
            end = data.index(0, 12) + 5
            data[end - 2:end] = rng.randrange(65536).to_bytes(2, "big")
        elif kind == 2:  # any type
            end = data.index(0, 12) + 5
            data[end - 4:end - 2] = rng.randrange(65536).to_bytes(2, "big")
        else:  # random label bytes
            pos = rng.randrange(13, data.index(0, 12))
            data[pos] = rng.randrange(256)
        out.append(bytes(data))
    return out


def test_a_flood_of_odd_queries_from_one_address_never_marks_the_upstream_down(
        fake_upstream, start_forwarder, caplog):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address])
    rng = random.Random(1313)
    queries = _odd_queries(rng, 600)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    answered = 0
    with caplog.at_level(logging.WARNING, logger="resolver.pool"):
        try:
            for start in range(0, len(queries), 20):  # 20 outstanding at a time, one address
                for data in queries[start:start + 20]:
                    sock.sendto(data, ("127.0.0.1", fwd.port))
                try:
                    for _ in range(20):
                        sock.recvfrom(65535)
                        answered += 1
                except socket.timeout:
                    pass
                assert upstream_judged_healthy(fwd, fake_upstream), f"after {start + 20} odd queries"
        finally:
            sock.close()
    assert answered > 0 and len(fake_upstream.calls) > 0  # some reached the upstream
    assert "marked down" not in caplog.text
    assert fwd.metric("resolver_upstream_probes_total", upstream=f"udp://{fake_upstream.address}",
                      result="fail") == 0
    assert [rr.to_text() for rr in ask(fwd.port, "www.test").answer[0]] == ["192.0.2.1"]
