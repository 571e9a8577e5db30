"""Caps under a sidecar's load: everything from ONE address, 127.0.0.1 (issue 13, item 1).

A pod's application queries its sidecar from loopback, so the per-client caps see
the whole pod as one client.  During an outage hundreds of its queries wait on the
same few names, or are answered stale: that costs the upstreams nothing and must
not count against a per-client cap.  When a cap really bites (a hostile client,
made here by exempting nobody), a cached name is answered stale and anything else
gets SERVFAIL with EDE 14 — never silence, never a hanging TCP query.

Real sockets: the in-process forwarder (tests/support/forwarder.py) with its fake
clock, a FakeUpstream that blackholes ("drop") or is 0.5 s slow, dnspython clients.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.client import eventually, read_msg

HOSTILE = {"client_limits_exempt": ()}  # 127.0.0.1 treated as any other address: no exemption
EXEMPTION = pytest.mark.parametrize("security", [{}, HOSTILE], ids=["loopback-exempt", "no-exemption"])


def make_query(name: str, qid: int, rtype: str = "A") -> bytes:
    msg = dns.message.make_query(name, rtype, use_edns=0)
    msg.id = qid
    return msg.to_wire()


def udp_burst(port: int, queries: list[bytes], timeout: float, batch: int = 50) -> dict[int, dns.message.Message]:
    """Send every query from one socket (one client address and port) and collect the replies
    by ID until all are in or ``timeout`` passes.  A reader thread drains the socket while
    the queries go out, in batches so neither side's receive buffer overflows."""
    replies: dict[int, dns.message.Message] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.connect(("127.0.0.1", port))
        s.settimeout(0.2)
        end = time.monotonic() + timeout

        def read():
            while len(replies) < len(queries) and time.monotonic() < end:
                try:
                    msg = dns.message.from_wire(s.recv(65535))
                except TimeoutError:
                    continue
                replies[msg.id] = msg

        reader = threading.Thread(target=read)
        reader.start()
        for i in range(0, len(queries), batch):
            for q in queries[i:i + batch]:
                s.send(q)
            time.sleep(0.01)
        reader.join()
    return replies


def ede_codes(msg: dns.message.Message) -> list[int]:
    return [o.code for o in msg.extended_errors()]


def warm(fwd, upstream, names: list[str]) -> None:
    for name in names:
        upstream.answer(name, "A", "192.0.2.1", ttl=300)
    for i, name in enumerate(names):
        reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=fwd.port, timeout=3)
        assert reply.answer, name


@EXEMPTION
def test_500_udp_queries_for_expired_names_in_a_blackhole_are_all_answered_stale(
        fake_upstream, start_forwarder, security):
    """Issue 13: 400 of 500 were never answered (each waiting query held a slot of the
    per-client cap).  Queries joining a fetch in flight, or answered stale, cost nothing."""
    fwd = start_forwarder([fake_upstream.address], security=security,
                          upstream={"attempt_timeout": 1.0, "total_timeout": 2.0})
    names = [f"n{i}.test" for i in range(10)]
    warm(fwd, fake_upstream, names)
    fake_upstream.mode("drop")
    fwd.advance(301)  # every TTL has expired
    queries = [make_query(names[i % 10], i) for i in range(500)]
    replies = udp_burst(fwd.port, queries, timeout=15)
    assert len(replies) == 500
    for msg in replies.values():
        assert msg.rcode() == dns.rcode.NOERROR and msg.answer and ede_codes(msg) == [3], msg
    assert fwd.metric("resolver_limited_queries_total", limit="max_inflight_per_client", answer="stale") == 0
    assert fwd.app.limits.inflight == {} or fwd.app.limits.inflight["127.0.0.1"] <= 10


def _pipeline_tcp(port: int, queries: list[bytes], timeout: float) -> dict[int, dns.message.Message]:
    replies: dict[int, dns.message.Message] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"".join(struct.pack(">H", len(q)) + q for q in queries))
        end = time.monotonic() + timeout
        while len(replies) < len(queries) and time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                msg = dns.message.from_wire(read_msg(s))
            except (TimeoutError, EOFError, OSError):
                break
            replies[msg.id] = msg
    return replies


@EXEMPTION
def test_300_pipelined_tcp_queries_in_a_blackhole_are_all_answered(fake_upstream, start_forwarder, security):
    """Issue 13: 200 of 300 pipelined queries were never answered and the connection hung.
    Cached names come back stale; never-cached ones SERVFAIL — every query gets a reply."""
    fwd = start_forwarder([fake_upstream.address], security=security,
                          upstream={"attempt_timeout": 0.5, "total_timeout": 1.0})
    cached = [f"c{i}.test" for i in range(30)]
    warm(fwd, fake_upstream, cached)
    fake_upstream.mode("drop")
    fwd.advance(301)
    queries = [make_query(cached[i % 30], i) for i in range(150)]
    queries += [make_query(f"new{i}.test", 150 + i) for i in range(150)]
    replies = _pipeline_tcp(fwd.port, queries, timeout=20)
    assert len(replies) == 300
    for qid, msg in replies.items():
        if qid < 150:
            assert msg.rcode() == dns.rcode.NOERROR and ede_codes(msg) == [3]
        else:
            assert msg.rcode() == dns.rcode.SERVFAIL


def test_300_concurrent_new_names_from_one_address_with_a_slow_upstream(fake_upstream, start_forwarder):
    """Issue 13: upstream healthy but 0.5 s slow, 300 never-cached names at once from one
    address: 200 were never answered.  The sidecar's pod (loopback) shares only the global caps."""
    names = [f"app{i}.test" for i in range(300)]
    for name in names:
        fake_upstream.answer(name, "A", "192.0.2.7")
    fake_upstream.delay(0.5)
    fwd = start_forwarder([fake_upstream.address])
    replies = udp_burst(fwd.port, [make_query(name, i) for i, name in enumerate(names)], timeout=15)
    assert len(replies) == 300
    assert all(m.rcode() == dns.rcode.NOERROR and m.answer for m in replies.values())
    assert fwd.metric("resolver_limited_queries_total", limit="max_inflight_per_client", answer="servfail") == 0


@EXEMPTION
def test_100_idle_tcp_connections_then_one_more_is_answered(fake_upstream, start_forwarder, security):
    """Issue 13: an application's pool of 100 idle connections from 127.0.0.1, then one
    more: it was closed before its answer.  Now the oldest idle one makes room (RFC 7766
    §6.2.3) where a cap is reached; loopback is not capped per client at all."""
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address], security=security, server={"tcp_idle_timeout": 60})
    pool = [socket.create_connection(("127.0.0.1", fwd.port), timeout=5) for _ in range(100)]
    try:
        time.sleep(0.2)  # all accepted
        msg = dns.query.tcp(dns.message.make_query("www.test", "A"), "127.0.0.1", port=fwd.port, timeout=3)
        assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.1"]
        closed = fwd.metric("resolver_tcp_connections_idle_closed_total", limit="tcp_max_connections_per_client")
        if security:  # per-client cap 16: each connection past it closed the oldest idle one
            assert closed == 100 + 1 - 16
            pool[0].settimeout(2)
            assert pool[0].recv(1) == b""
        else:
            assert closed == 0
    finally:
        for s in pool:
            s.close()
    assert fwd.metric("resolver_tcp_connections_client_limited_total") == 0


def test_hostile_client_over_its_cap_gets_stale_or_servfail(fake_upstream, start_forwarder):
    """A client that is not exempt, over max_inflight_per_client during a blackhole: its
    queries that would start more upstream work are answered at once — stale for a cached
    name, SERVFAIL with EDE 14 otherwise — and counted by limit and answer."""
    fwd = start_forwarder([fake_upstream.address], security={"max_inflight_per_client": 5, **HOSTILE},
                          upstream={"attempt_timeout": 2.0, "total_timeout": 3.0},
                          stale={"client_timeout": 2.5})
    cached = [f"c{i}.test" for i in range(10)]
    warm(fwd, fake_upstream, cached)
    fake_upstream.mode("drop")
    fwd.advance(301)
    fresh_names = [make_query(f"u{i}.test", i) for i in range(20)]  # the first 5 start fetches
    stale_names = [make_query(name, 100 + i) for i, name in enumerate(cached)]
    start = time.monotonic()
    replies = udp_burst(fwd.port, fresh_names + stale_names, timeout=1.5)
    assert time.monotonic() - start < 2.0
    capped = {qid: m for qid, m in replies.items() if qid >= 5}
    assert len(capped) == 25  # all but the 5 fetching ones, at once (before any timer)
    for qid, msg in capped.items():
        if qid < 100:
            assert msg.rcode() == dns.rcode.SERVFAIL and ede_codes(msg) == [14]
        else:
            assert msg.rcode() == dns.rcode.NOERROR and msg.answer and ede_codes(msg) == [3]
    assert fwd.metric("resolver_limited_queries_total", limit="max_inflight_per_client", answer="servfail") == 15
    assert fwd.metric("resolver_limited_queries_total", limit="max_inflight_per_client", answer="stale") == 10
    assert fwd.metric("resolver_stale_answers_total", reason="client_limit") == 10
    assert len({c[1] for c in fake_upstream.calls if c[1].startswith("u")}) == 5  # no upstream work past the cap


def test_global_max_inflight_answers_instead_of_dropping(fake_upstream, start_forwarder):
    """server.max_inflight reached: stale from the cache, else SERVFAIL (EDE 14), at once."""
    fwd = start_forwarder([fake_upstream.address], server={"max_inflight": 5},
                          upstream={"attempt_timeout": 2.0, "total_timeout": 3.0},
                          stale={"client_timeout": 2.5})
    cached = [f"c{i}.test" for i in range(10)]
    warm(fwd, fake_upstream, cached)
    fake_upstream.mode("drop")
    fwd.advance(301)
    queries = [make_query(f"u{i}.test", i) for i in range(20)] + [make_query(n, 100 + i) for i, n in enumerate(cached)]
    replies = udp_burst(fwd.port, queries, timeout=1.5)
    capped = {qid: m for qid, m in replies.items() if qid >= 5}
    assert len(capped) == 25
    for qid, msg in capped.items():
        if qid < 100:
            assert msg.rcode() == dns.rcode.SERVFAIL and ede_codes(msg) == [14]
        else:
            assert msg.rcode() == dns.rcode.NOERROR and ede_codes(msg) == [3]
    assert fwd.metric("resolver_limited_queries_total", limit="max_inflight", answer="servfail") == 15
    assert fwd.metric("resolver_limited_queries_total", limit="max_inflight", answer="stale") == 10
    assert fwd.metric("resolver_dropped_queries_total", reason="overload") == 0


def test_global_cap_answers_fresh_cached_names_when_the_hit_path_is_off(fake_upstream, start_forwarder):
    """With the query log on every query takes the slow path; at server.max_inflight a
    fresh cached name is still answered from the cache, not failed."""
    fwd = start_forwarder([fake_upstream.address], server={"max_inflight": 1}, logging={"queries": True},
                          upstream={"attempt_timeout": 2.0, "total_timeout": 3.0})
    warm(fwd, fake_upstream, ["www.test"])
    assert eventually(lambda: not fwd.app.listeners.tasks)  # the warming query's task has ended
    fake_upstream.mode("drop", name="hole.test")
    replies = udp_burst(fwd.port, [make_query("hole.test", 1), make_query("www.test", 2)], timeout=1.0)
    assert 1 not in replies  # still waiting on the blackhole: it holds the one slot
    assert replies[2].rcode() == dns.rcode.NOERROR and replies[2].answer and ede_codes(replies[2]) == []
    assert fwd.metric("resolver_limited_queries_total", limit="max_inflight", answer="cache") == 1
