"""Hostile and broken clients: garbage in, a clear answer (or silence) out, and the listener lives.

Every test ends by checking that a normal query still gets its answer: a bad
packet must never cost anyone else their service.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.client import read_msg, tcp_connect, udp_exchange


@pytest.fixture
def fwd(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    return start_forwarder([fake_upstream.address],
                           server={"tcp_idle_timeout": 0.5, "tcp_max_connections": 4})


def still_works(port: int) -> None:
    msg = dns.query.udp(dns.message.make_query("www.test", "A"), "127.0.0.1", port=port, timeout=3)
    assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.1"]
    msg = dns.query.tcp(dns.message.make_query("www.test", "A"), "127.0.0.1", port=port, timeout=3)
    assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.1"]


def header(qid=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack(">HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x03www\x04test\x00\x00\x01\x00\x01"


def rcode_of(reply: bytes) -> int:
    return reply[3] & 0x0F


@pytest.mark.slow
def test_random_garbage_never_kills_the_listener(fwd):
    rng = random.Random(1)
    for size in list(range(0, 40)) + [100, 512, 1500, 4000]:
        for _ in range(3):
            data = bytes(rng.getrandbits(8) for _ in range(size))
            reply = udp_exchange(fwd.port, data, timeout=0.05)
            if reply is not None:
                assert reply[:2] == data[:2]  # whatever it is, it answers that query
    still_works(fwd.port)
    assert fwd.metric("resolver_internal_errors_total") == 0


@pytest.mark.parametrize("name, data, rcode", [
    ("two questions", header(qd=2) + QUESTION + QUESTION, dns.rcode.FORMERR),
    ("no question", header(qd=0), dns.rcode.FORMERR),
    ("truncated question", header() + QUESTION[:7], dns.rcode.FORMERR),
    ("compression loop", header() + b"\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR),
    ("pointer to itself in a label chain", header() + b"\x03www\xc0\x0d\x00\x01\x00\x01", dns.rcode.FORMERR),
    ("label over 63 (extended label type)", header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",
     dns.rcode.FORMERR),
    ("answer record in a query", header(an=1) + QUESTION, dns.rcode.FORMERR),
    ("trailing junk", header() + QUESTION + b"junk", dns.rcode.FORMERR),
    ("opcode STATUS", header(flags=0x1100) + QUESTION, dns.rcode.NOTIMP),
    ("opcode UPDATE", header(flags=0x2900) + QUESTION, dns.rcode.NOTIMP),
])
def test_malformed_queries_get_an_error_rcode(fwd, name, data, rcode):
    reply = udp_exchange(fwd.port, data)
    assert reply is not None, name
    assert reply[:2] == data[:2]
    assert reply[2] & 0x80  # QR
    assert rcode_of(reply) == rcode, name
    still_works(fwd.port)


def test_unknown_edns_version_gets_badvers(fwd):
    q = dns.message.make_query("www.test", "A", use_edns=1)
    reply = dns.message.from_wire(udp_exchange(fwd.port, q.to_wire()))
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0


def test_responses_and_tiny_packets_are_dropped(fwd):
    assert udp_exchange(fwd.port, header(flags=0x8180) + QUESTION) is None  # QR=1: no reflection
    assert udp_exchange(fwd.port, b"\x12\x34\x01") is None
    still_works(fwd.port)
    assert fwd.metric("resolver_dropped_queries_total", reason="malformed") == 2


def test_client_case_and_id_are_echoed(fwd):
    q = dns.message.make_query("WwW.TeSt", "A")
    reply = udp_exchange(fwd.port, q.to_wire())
    assert reply[:2] == q.to_wire()[:2]
    assert reply[12:12 + len(QUESTION)] == q.to_wire()[12:12 + len(QUESTION)]
    # And once cached, through the hit path, with another spelling:
    q2 = dns.message.make_query("WWW.TEST", "A")
    reply2 = udp_exchange(fwd.port, q2.to_wire())
    assert reply2[12:12 + len(QUESTION)] == b"\x03WWW\x04TEST\x00\x00\x01\x00\x01"


def test_tcp_pipelined_queries_all_answered(fwd):
    """RFC 7766 §6.2.1.1: several queries on one connection, sent at once, all answered."""
    ids = [101, 102, 103, 104]
    with tcp_connect(fwd.port) as s:
        payload = b""
        for qid in ids:
            q = dns.message.make_query("www.test" if qid % 2 else "nosuch.test", "A")
            q.id = qid
            w = q.to_wire()
            payload += struct.pack(">H", len(w)) + w
        s.sendall(payload)
        got = {dns.message.from_wire(read_msg(s)).id for _ in ids}
    assert got == set(ids)


def test_stalled_tcp_client_is_closed_and_does_not_block_others(fwd):
    """A client that sends half a message and stops is cut off at the idle timeout."""
    with tcp_connect(fwd.port) as stalled:
        stalled.sendall(b"\x00\x30\x12")  # promises 48 bytes, sends 1
        still_works(fwd.port)
        stalled.settimeout(3)
        t = time.monotonic()
        assert stalled.recv(10) == b""  # closed by the server
        assert time.monotonic() - t < 2.5


def test_idle_tcp_connection_closed(fwd):
    with tcp_connect(fwd.port) as idle:
        idle.settimeout(3)
        assert idle.recv(10) == b""


def test_tcp_connection_cap(fwd, fake_upstream):
    """Past tcp_max_connections with every connection busy, a new one is closed at once;
    the rest keep working (with an idle one, that one makes room: see the next test)."""
    fake_upstream.mode("drop", name="silent.test")
    q = dns.message.make_query("silent.test", "A").to_wire()
    held = [tcp_connect(fwd.port) for _ in range(4)]
    try:
        for s in held:  # a query pending on each: none idle
            s.sendall(struct.pack(">H", len(q)) + q)
        time.sleep(0.1)
        extra = tcp_connect(fwd.port)
        extra.settimeout(2)
        try:
            data = extra.recv(10)
        except ConnectionResetError:
            data = b""
        assert data == b""
        extra.close()
        assert fwd.metric("resolver_tcp_connections_refused_total") >= 1
    finally:
        for s in held:
            s.close()
    time.sleep(0.1)
    still_works(fwd.port)


def test_tcp_connection_cap_closes_oldest_idle(fwd):
    """RFC 7766 §6.2.3: at the cap, the least recently active idle connection is closed for
    the new one (issue 13: an application's pool of idle connections locked out its next)."""
    held = [tcp_connect(fwd.port) for _ in range(4)]
    try:
        time.sleep(0.1)
        msg = dns.query.tcp(dns.message.make_query("www.test", "A"), "127.0.0.1", port=fwd.port, timeout=3)
        assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.1"]
        held[0].settimeout(2)
        assert held[0].recv(10) == b""  # the oldest idle one was closed
        assert fwd.metric("resolver_tcp_connections_idle_closed_total", limit="tcp_max_connections") == 1
        assert fwd.metric("resolver_tcp_connections_refused_total") == 0
    finally:
        for s in held:
            s.close()


def test_garbage_over_tcp(fwd):
    with tcp_connect(fwd.port) as s:
        junk = os.urandom(30)
        s.sendall(struct.pack(">H", len(junk)) + junk)
        w = dns.message.make_query("www.test", "A").to_wire()
        s.sendall(struct.pack(">H", len(w)) + w)
        s.settimeout(3)
        replies = []
        try:
            while len(replies) < 2:
                replies.append(read_msg(s))
        except (TimeoutError, ConnectionError):
            pass
        assert any(r[:2] == w[:2] and dns.message.from_wire(r).answer for r in replies)
    still_works(fwd.port)


@pytest.mark.parametrize("request_bytes", [
    b"\x00\xff garbage\r\n\r\n",
    b"GET /metrics\r\n\r\n",                      # no HTTP version
    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",  # over the request size limit
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n",        # never finishes its headers
    b"",
])
def test_admin_listener_survives_garbage(fwd, request_bytes):
    with socket.create_connection(("127.0.0.1", fwd.metrics_port), timeout=3) as s:
        s.sendall(request_bytes)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(8)
        reply = b""
        try:
            while chunk := s.recv(4096):
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert reply == b"" or reply.startswith(b"HTTP/1.1 4")
    assert fwd.http("/healthz") == (200, "ok\n")
