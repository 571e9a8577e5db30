"""Hostile clients on real sockets: access control, per-client caps, slow TCP clients.

Loopback traffic always comes from 127.0.0.1, so "a client outside the allow-list"
is made by configuring an allow-list that leaves 127.0.0.1 out.
"""

from __future__ import annotations

import socket
import struct
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from resolver.config import SecurityConfig
from tests.support import client
from tests.support.client import read_msg, udp_exchange

OUTSIDE = {"allow": ("192.0.2.0/24",)}  # 127.0.0.1 is not in it


def query(name="www.test", qtype="A", qid=None, edns=False) -> bytes:
    msg = dns.message.make_query(name, qtype, use_edns=0 if edns else None)
    if qid is not None:
        msg.id = qid
    return msg.to_wire()


def udp_ask(port: int, data: bytes, timeout: float = 0.7) -> bytes | None:
    return udp_exchange(port, data, timeout)


def tcp_connect(port: int) -> socket.socket:
    s = client.tcp_connect(port)
    s.settimeout(5)
    return s


def closed_by_peer(s: socket.socket, within: float) -> bool:
    """True if the server closes ``s`` within ``within`` seconds."""
    s.settimeout(within)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def configure_acl(fwd, **values) -> None:
    async def apply():
        fwd.app.acl.configure(SecurityConfig(**values))
    fwd.call(apply())


# -- access control ------------------------------------------------------------------


def test_client_outside_allow_list_gets_refused_udp(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address], security=OUTSIDE)
    reply = dns.message.from_wire(udp_ask(fwd.port, query(qid=777)))
    assert reply.id == 777 and reply.rcode() == dns.rcode.REFUSED and not reply.answer
    assert fake_upstream.calls == []  # no upstream work for strangers
    assert fwd.metric("resolver_acl_refused_total", transport="udp") == 1


def test_cached_answers_are_not_served_outside_the_allow_list(fake_upstream, start_forwarder):
    """The hit path checks the client too; a reconfiguration forgets earlier verdicts."""
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address])
    assert dns.message.from_wire(udp_ask(fwd.port, query())).answer  # cached, 127.0.0.1 admitted
    configure_acl(fwd, allow=("192.0.2.0/24",))
    reply = dns.message.from_wire(udp_ask(fwd.port, query()))
    assert reply.rcode() == dns.rcode.REFUSED and not reply.answer
    configure_acl(fwd)  # back to the defaults: served from cache again
    assert dns.message.from_wire(udp_ask(fwd.port, query())).answer
    assert len(fake_upstream.calls) == 1


def test_drop_action_sends_nothing(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address], security={**OUTSIDE, "refused_action": "drop"})
    assert udp_ask(fwd.port, query()) is None
    with tcp_connect(fwd.port) as s:
        s.sendall(struct.pack(">H", len(query())) + query())
        assert closed_by_peer(s, 3)
    assert fwd.metric("resolver_acl_refused_total", transport="udp") == 1
    assert fwd.metric("resolver_acl_refused_total", transport="tcp") == 1
    assert fake_upstream.calls == []


def test_client_outside_allow_list_gets_refused_tcp(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address], security=OUTSIDE)
    with tcp_connect(fwd.port) as s:
        for qid in (1, 2):  # every query on the connection is refused
            s.sendall(struct.pack(">H", len(query(qid=qid))) + query(qid=qid))
            reply = dns.message.from_wire(read_msg(s))
            assert reply.id == qid and reply.rcode() == dns.rcode.REFUSED
    assert fake_upstream.calls == []
    assert fwd.metric("resolver_acl_refused_total", transport="tcp") == 1


def test_garbage_from_outside_is_dropped_not_answered(fake_upstream, start_forwarder):
    fwd = start_forwarder([fake_upstream.address], security=OUTSIDE)
    for junk in (b"", b"\x00", b"\xff" * 11, b"\x12\x34\x01\x00\x00\x01" + b"\x00" * 6 + b"\x3f"):
        assert udp_ask(fwd.port, junk, timeout=0.2) is None
    assert dns.message.from_wire(udp_ask(fwd.port, query())).rcode() == dns.rcode.REFUSED


# -- per-client limits -----------------------------------------------------------------


HOSTILE = {"client_limits_exempt": ()}  # 127.0.0.1 stands for a stranger: no exemption


def test_per_client_inflight_cap(fake_upstream, start_forwarder):
    """A client may have only max_inflight_per_client upstream fetches started; a query that
    would start one more gets SERVFAIL with EDE 14 at once (changed by issue 13: it was
    dropped in silence), while one that joins a fetch in flight is free."""
    for i in range(6):
        fake_upstream.answer(f"n{i}.test", "A", "192.0.2.1")
    fake_upstream.delay(1.0)
    fwd = start_forwarder([fake_upstream.address], security={"max_inflight_per_client": 2, **HOSTILE},
                          upstream={"attempt_timeout": 3.0, "total_timeout": 3.0})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        for i in range(6):
            s.sendto(query(f"n{i}.test", qid=i, edns=True), ("127.0.0.1", fwd.port))
        s.sendto(query("n0.test", qid=100, edns=True), ("127.0.0.1", fwd.port))  # joins n0's fetch: not capped
        replies = {m.id: m for m in (dns.message.from_wire(s.recv(65535)) for _ in range(7))}
    assert sorted(replies) == [0, 1, 2, 3, 4, 5, 100]
    for qid in (0, 1, 100):
        assert replies[qid].rcode() == dns.rcode.NOERROR and replies[qid].answer
    for qid in (2, 3, 4, 5):
        assert replies[qid].rcode() == dns.rcode.SERVFAIL
        assert [(o.code, o.text) for o in replies[qid].extended_errors()] == [
            (14, "too many queries in flight from this client")]
    assert len(fake_upstream.calls) == 2
    assert fwd.metric("resolver_limited_queries_total", limit="max_inflight_per_client", answer="servfail") == 4
    assert fwd.app.limits.inflight == {}  # released once done


def test_per_client_tcp_connection_cap(fake_upstream, start_forwarder):
    """Over tcp_max_connections_per_client the client's least recently used idle connection
    is closed for the new one (RFC 7766 §6.2.3; changed by issue 13: the new one was closed);
    with none idle, the new one is refused."""
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fake_upstream.answer("slow.test", "A", "192.0.2.2")
    fwd = start_forwarder([fake_upstream.address], security={"tcp_max_connections_per_client": 2, **HOSTILE})
    held = [tcp_connect(fwd.port) for _ in range(2)]
    try:
        for s in held:  # make sure both are accepted before the third
            s.sendall(struct.pack(">H", len(query())) + query())
            assert dns.message.from_wire(read_msg(s)).answer
        with tcp_connect(fwd.port) as extra:
            extra.sendall(struct.pack(">H", len(query())) + query())
            assert dns.message.from_wire(read_msg(extra)).answer
            assert closed_by_peer(held[0], 3)  # the least recently used one made room
            assert fwd.metric("resolver_tcp_connections_idle_closed_total",
                              limit="tcp_max_connections_per_client") == 1
        assert fwd.metric("resolver_tcp_connections_client_limited_total") == 0
        # No idle connection to close: both slots have a query pending (the upstream is silent).
        fake_upstream.mode("drop", name="slow.test")
        busy = [tcp_connect(fwd.port) for _ in range(2)]
        for s in busy:
            s.sendall(struct.pack(">H", len(query("slow.test"))) + query("slow.test"))
        time.sleep(0.3)
        with tcp_connect(fwd.port) as extra:
            assert closed_by_peer(extra, 3)
        assert fwd.metric("resolver_tcp_connections_client_limited_total") == 1
        for s in busy:
            s.close()
    finally:
        for s in held:
            s.close()


def test_trickling_tcp_client_is_closed_after_read_timeout(fake_upstream, start_forwarder):
    """A message that has started must finish within tcp_read_timeout, whatever the idle timeout."""
    fwd = start_forwarder([fake_upstream.address], server={"tcp_idle_timeout": 60},
                          security={"tcp_read_timeout": 0.3})
    with tcp_connect(fwd.port) as s:
        s.sendall(b"\x00\x20\x12")  # length 32, then one byte of it, then nothing
        assert closed_by_peer(s, 10)
    assert fwd.metric("resolver_tcp_connections_closed_slow_total") == 1


@pytest.mark.slow
def test_tcp_client_that_never_reads_is_closed(fake_upstream, start_forwarder):
    """Pipelining queries without reading the replies cannot grow our buffers without bound."""
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address])
    udp_ask(fwd.port, query())  # cached: every TCP query below is a hit
    framed = struct.pack(">H", len(query())) + query()
    batch = framed * 500
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", fwd.port))
    s.settimeout(5)
    closed = False
    deadline = time.monotonic() + 60
    try:
        for _ in range(2000):  # at most 1M queries, 60 s
            s.sendall(batch)
            if time.monotonic() > deadline:
                break
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        closed = True
    finally:
        s.close()
    assert closed
    assert fwd.metric("resolver_tcp_connections_closed_slow_total") >= 1


# -- spoofing resistance toward upstreams ---------------------------------------------------


def test_0x20_sends_mixed_case_and_accepts_the_exact_echo(fake_upstream, start_forwarder):
    fake_upstream.answer("abcdefghijklmnop.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address], security={"upstream_0x20": True})
    msg = dns.message.from_wire(udp_ask(fwd.port, query("abcdefghijklmnop.test"), timeout=3))
    assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.1"]
    sent = fake_upstream.raw_names[0]
    assert sent.lower() == "abcdefghijklmnop.test." and sent != sent.lower()  # 2**-20 chance of a false fail
    assert fwd.metric("resolver_upstream_mismatched_replies_total") == 0


def test_0x20_drops_a_reply_with_the_wrong_case(fake_upstream, start_forwarder):
    """With 0x20 on, a reply that does not echo our spelling exactly is ignored and counted."""
    fake_upstream.answer("www.test", "A", "192.0.2.1").mode("wrong_case")
    fwd = start_forwarder([fake_upstream.address], security={"upstream_0x20": True},
                          upstream={"attempt_timeout": 0.5, "total_timeout": 0.5}, stale={"enabled": False})
    msg = dns.message.from_wire(udp_ask(fwd.port, query(), timeout=5))
    assert msg.rcode() == dns.rcode.SERVFAIL and not msg.answer
    label = f"udp://{fake_upstream.address}"
    assert fwd.metric("resolver_upstream_mismatched_replies_total", upstream=label) >= 1


def test_without_0x20_case_is_not_checked(fake_upstream, start_forwarder):
    """The control for the test above: the same upstream behaviour is accepted when 0x20 is off."""
    fake_upstream.answer("www.test", "A", "192.0.2.1").mode("wrong_case")
    fwd = start_forwarder([fake_upstream.address])
    msg = dns.message.from_wire(udp_ask(fwd.port, query(), timeout=3))
    assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.1"]
    assert fake_upstream.raw_names == ["www.test."]  # sent lower-case when 0x20 is off


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_unrelated_upstream_records_are_never_served(fake_upstream, start_forwarder, transport):
    fake_upstream.answer("www.test", "A", "192.0.2.1").mode("pollute")
    fwd = start_forwarder([f"{transport}://{fake_upstream.address}"])
    for _ in range(2):  # from upstream, then from the cache
        msg = dns.query.udp(dns.message.make_query("www.test", "A"), "127.0.0.1", port=fwd.port, timeout=3)
        text = msg.to_text()
        assert "203.0.113." not in text and "evil.example" not in text
        assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.1"]
    assert len(fake_upstream.calls) == 1  # the scrubbed answer was cached
    label = f"{transport}://{fake_upstream.address}"
    assert fwd.metric("resolver_upstream_scrubbed_records_total", upstream=label) == 2


# -- response rate limiting --------------------------------------------------------------


def test_rate_limit_with_slip(fake_upstream, start_forwarder):
    """Past the rate, every 2nd response is an empty TC=1 reply and the rest are dropped;
    TCP is not limited; time refills the bucket (the forwarder's fake clock, no sleeping)."""
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address], security={"rate_limit": 5, "rate_limit_slip": 2})
    msg = dns.query.tcp(dns.message.make_query("www.test", "A"), "127.0.0.1", port=fwd.port, timeout=5)
    assert msg.answer  # cached now (over TCP, which is not limited)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for qid in range(20):
            s.sendto(query(qid=qid), ("127.0.0.1", fwd.port))
        s.settimeout(2.0)
        full, tc = 0, 0
        while True:
            try:
                msg = dns.message.from_wire(s.recv(65535))
            except TimeoutError:
                break
            if msg.flags & dns.flags.TC:
                assert not msg.answer
                tc += 1
            else:
                assert msg.answer
                full += 1
        assert (full, tc) == (5, 7)  # 5 in the burst; of the 15 limited, every 2nd slips
        assert fwd.metric("resolver_rate_limited_responses_total", action="slip") == 7
        assert fwd.metric("resolver_rate_limited_responses_total", action="drop") == 8
        msg = dns.query.tcp(dns.message.make_query("www.test", "A"), "127.0.0.1", port=fwd.port, timeout=3)
        assert msg.answer  # the retry a slip asks for works
        fwd.advance(1.0)
        s.settimeout(3)
        s.sendto(query(qid=99), ("127.0.0.1", fwd.port))
        assert dns.message.from_wire(s.recv(65535)).answer


def test_no_rate_limit_by_default(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        for qid in range(50):
            s.sendto(query(qid=qid), ("127.0.0.1", fwd.port))
            assert dns.message.from_wire(s.recv(65535)).answer


def test_bad_security_config_exits_2_naming_the_key(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from tests.support.process import resolv_conf

    path = tmp_path / "bad.yaml"
    path.write_text("security:\n  allow: ['10.0.0.1/8']\n")
    out = subprocess.run([sys.executable, "-m", "resolver", "--config", str(path), "--resolv-conf",
                          str(resolv_conf(tmp_path, "127.0.0.1"))], capture_output=True, text=True,
                         timeout=20, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "security.allow[0]" in lines[0] and "Traceback" not in out.stderr
