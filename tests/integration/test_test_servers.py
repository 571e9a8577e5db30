"""The test servers themselves: a real Unbound and the fault-injecting fake upstream."""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
import time

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.process import resolv_conf
from tests.support.unbound import BIG_TXT, UnboundServer, free_port, requires_unbound

T = 0.5  # client timeout for every query here


def udp(port, name, rdtype="A", *, edns=False, timeout=T):
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)


def tcp(port, name, rdtype="A", *, timeout=T):
    q = dns.message.make_query(name, rdtype)
    return dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout)


def addresses(msg, rdtype="A"):
    out = []
    for rrset in msg.answer:
        if rrset.rdtype == dns.rdatatype.from_text(rdtype):
            out += [rd.to_text() for rd in rrset]
    return sorted(out)


def raw_udp(port, wire, timeout=T):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, ("127.0.0.1", port))
        return s.recv(65535)


# ---------------------------------------------------------------- helpers ---

def test_free_port_is_free_for_udp_and_tcp():
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
        u.bind(("127.0.0.1", port))
        t.bind(("127.0.0.1", port))


def test_resolv_conf_helper(tmp_path):
    path = resolv_conf(tmp_path, "127.0.0.1", "127.0.0.2", options=["timeout:1"])
    assert path.read_text() == "nameserver 127.0.0.1\nnameserver 127.0.0.2\noptions timeout:1\n"


# ---------------------------------------------------------------- unbound ---

def test_unbound_answers_udp_and_tcp(unbound):
    assert unbound.address == f"127.0.0.1:{unbound.port}"
    r = udp(unbound.port, "www.test")
    assert r.rcode() == dns.rcode.NOERROR
    assert addresses(r) == ["192.0.2.1"]
    assert r.answer[0].ttl == 300
    r = tcp(unbound.port, "www.test")
    assert addresses(r) == ["192.0.2.1"]
    assert addresses(udp(unbound.port, "v6.test", "AAAA"), "AAAA") == ["2001:db8::1"]
    assert udp(unbound.port, "short.test").answer[0].ttl == 2


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig (bind9-dnsutils) is not installed")
def test_unbound_with_dig(unbound):
    out = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(unbound.port), "+short", "+time=1", "+tries=1", "www.test"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout
    assert out.strip() == "192.0.2.1"


def test_unbound_cname(unbound):
    r = udp(unbound.port, "alias.test")
    types = [rrset.rdtype for rrset in r.answer]
    assert dns.rdatatype.CNAME in types
    assert addresses(r) == ["192.0.2.1"]


def test_unbound_negative_answers_carry_soa(unbound):
    r = udp(unbound.port, "nope.test")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.authority and r.authority[0].rdtype == dns.rdatatype.SOA
    assert r.authority[0][0].minimum == 60
    r = udp(unbound.port, "www.test", "AAAA")  # NODATA
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.SOA


def test_unbound_refuses_outside_test_zone(unbound):
    # Nothing outside test. is ever resolved, so Unbound never queries out.
    assert udp(unbound.port, "example.com").rcode() == dns.rcode.REFUSED


def test_unbound_big_answer_truncated_over_udp(unbound):
    r = udp(unbound.port, "big.test", "TXT")
    assert r.flags & dns.flags.TC
    r = udp(unbound.port, "big.test", "TXT", edns=True)  # 1232 bytes is not enough either
    assert r.flags & dns.flags.TC
    r = tcp(unbound.port, "big.test", "TXT")
    assert not r.flags & dns.flags.TC
    texts = sorted(rd.strings[0].decode() for rd in r.answer[0])
    assert texts == sorted(BIG_TXT)
    assert len(r.to_wire()) > 512


def test_unbound_set_and_remove_record_live(unbound):
    unbound.set_record("www.test. 300 IN A 192.0.2.9")
    assert addresses(udp(unbound.port, "www.test")) == ["192.0.2.9"]
    unbound.add_record("www.test. 300 IN A 192.0.2.10")
    assert addresses(udp(unbound.port, "www.test")) == ["192.0.2.10", "192.0.2.9"]
    unbound.set_record("new.test. 60 IN A 192.0.2.77")
    assert addresses(tcp(unbound.port, "new.test")) == ["192.0.2.77"]
    unbound.remove_record("www.test")
    assert udp(unbound.port, "www.test").rcode() == dns.rcode.NXDOMAIN
    # Live changes are kept over a restart.
    unbound.restart()
    assert udp(unbound.port, "www.test").rcode() == dns.rcode.NXDOMAIN
    assert addresses(udp(unbound.port, "new.test")) == ["192.0.2.77"]


def test_unbound_kill_then_restart_same_port(unbound):
    port = unbound.port
    unbound.kill()
    assert not unbound.running
    with pytest.raises(dns.exception.Timeout):
        udp(port, "www.test", timeout=0.3)
    with pytest.raises((ConnectionRefusedError, dns.exception.Timeout)):
        tcp(port, "www.test", timeout=0.3)
    unbound.restart()
    assert unbound.port == port
    assert addresses(udp(port, "www.test")) == ["192.0.2.1"]


@requires_unbound
def test_unbound_context_manager_and_fixed_port(tmp_path):
    port = free_port()
    with UnboundServer(tmp_path, ["a.test. 30 IN A 192.0.2.5"], port=port) as ub:
        assert ub.port == port and ub.running
        assert addresses(udp(port, "a.test")) == ["192.0.2.5"]
    assert not ub.running


# ----------------------------------------------------------- fake upstream ---

def test_fake_answers_udp_and_tcp(fake_upstream):
    up = fake_upstream
    assert up.address == f"127.0.0.1:{up.port}"
    up.answer("www.test", "A", "192.0.2.1", ttl=300).answer("www.test", "A", "192.0.2.3")
    r = udp(up.port, "www.test")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.RA and r.flags & dns.flags.QR
    assert addresses(r) == ["192.0.2.1", "192.0.2.3"]
    assert r.answer[0].ttl == 300
    assert addresses(tcp(up.port, "www.test")) == ["192.0.2.1", "192.0.2.3"]


def test_fake_record_types_and_case(fake_upstream):
    up = fake_upstream
    up.answer("Www.Test.", "A", "192.0.2.1")
    up.answer("v6.test", "AAAA", "2001:db8::1", ttl=60)
    up.answer("txt.test", "TXT", "hello world")
    up.answer("alias.test", "CNAME", "www.test.")
    q = dns.message.make_query("wWw.tEsT", "A")
    r = dns.query.udp(q, "127.0.0.1", port=up.port, timeout=T)
    assert r.question[0].name.to_text() == "wWw.tEsT."  # question echoed exactly
    assert r.id == q.id
    assert addresses(r) == ["192.0.2.1"]
    assert addresses(udp(up.port, "v6.test", "AAAA"), "AAAA") == ["2001:db8::1"]
    assert udp(up.port, "txt.test", "TXT").answer[0][0].strings == (b"hello world",)
    r = udp(up.port, "alias.test")
    assert [rs.rdtype for rs in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert addresses(r) == ["192.0.2.1"]


def test_fake_negative_answers(fake_upstream):
    up = fake_upstream
    up.answer("gone.test", "A", "192.0.2.1")
    up.nxdomain("gone.test")
    for name in ("gone.test", "unknown.test"):
        r = udp(up.port, name)
        assert r.rcode() == dns.rcode.NXDOMAIN
        assert r.authority[0].rdtype == dns.rdatatype.SOA
        assert r.authority[0][0].minimum == 60
    up.answer("www.test", "A", "192.0.2.1")
    r = udp(up.port, "www.test", "AAAA")  # NODATA
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.SOA


def test_fake_echoes_edns(fake_upstream):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    assert udp(fake_upstream.port, "www.test", edns=True).edns == 0
    assert udp(fake_upstream.port, "www.test", edns=False).edns == -1


def test_fake_mode_drop(fake_upstream):
    fake_upstream.answer("www.test", "A", "192.0.2.1").mode("drop")
    with pytest.raises(dns.exception.Timeout):
        udp(fake_upstream.port, "www.test", timeout=0.3)
    with pytest.raises(dns.exception.Timeout):
        tcp(fake_upstream.port, "www.test", timeout=0.3)
    fake_upstream.mode("normal")
    assert addresses(udp(fake_upstream.port, "www.test")) == ["192.0.2.1"]


@pytest.mark.parametrize("mode, rcode", [("servfail", dns.rcode.SERVFAIL),
                                         ("refused", dns.rcode.REFUSED)])
def test_fake_mode_error_rcodes(fake_upstream, mode, rcode):
    fake_upstream.answer("www.test", "A", "192.0.2.1").mode(mode)
    for r in (udp(fake_upstream.port, "www.test"), tcp(fake_upstream.port, "www.test")):
        assert r.rcode() == rcode
        assert not r.answer


def test_fake_mode_truncate(fake_upstream):
    fake_upstream.answer("www.test", "A", "192.0.2.1").mode("truncate")
    r = udp(fake_upstream.port, "www.test")
    assert r.flags & dns.flags.TC and not r.answer
    r = tcp(fake_upstream.port, "www.test")
    assert not r.flags & dns.flags.TC
    assert addresses(r) == ["192.0.2.1"]
    assert [c[0] for c in fake_upstream.calls] == ["udp", "tcp"]


def test_fake_large_answer_truncated_over_udp(fake_upstream):
    for s in BIG_TXT:
        fake_upstream.answer("big.test", "TXT", s)
    assert udp(fake_upstream.port, "big.test", "TXT").flags & dns.flags.TC
    assert udp(fake_upstream.port, "big.test", "TXT", edns=True).flags & dns.flags.TC
    r = tcp(fake_upstream.port, "big.test", "TXT")
    assert sorted(rd.strings[0].decode() for rd in r.answer[0]) == sorted(BIG_TXT)


def test_fake_mode_garbage(fake_upstream):
    fake_upstream.answer("www.test", "A", "192.0.2.1").mode("garbage")
    q = dns.message.make_query("www.test", "A")
    data = raw_udp(fake_upstream.port, q.to_wire())
    assert data[:2] == q.to_wire()[:2]
    with pytest.raises(dns.exception.DNSException):
        dns.message.from_wire(data)
    with pytest.raises(dns.exception.DNSException):
        udp(fake_upstream.port, "www.test")


def test_fake_mode_wrong_id(fake_upstream):
    fake_upstream.answer("www.test", "A", "192.0.2.1").mode("wrong_id")
    q = dns.message.make_query("www.test", "A")
    r = dns.message.from_wire(raw_udp(fake_upstream.port, q.to_wire()))
    assert r.id == (q.id + 1) & 0xFFFF
    assert addresses(r) == ["192.0.2.1"]


def test_fake_mode_empty(fake_upstream):
    fake_upstream.answer("www.test", "A", "192.0.2.1").mode("empty")
    r = udp(fake_upstream.port, "www.test")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.SOA


def test_fake_mode_per_name(fake_upstream):
    up = fake_upstream
    up.answer("a.test", "A", "192.0.2.1").answer("b.test", "A", "192.0.2.2")
    up.mode("servfail", name="B.test")
    assert addresses(udp(up.port, "a.test")) == ["192.0.2.1"]
    assert udp(up.port, "b.test").rcode() == dns.rcode.SERVFAIL
    up.mode("normal", name="b.test")
    assert addresses(udp(up.port, "b.test")) == ["192.0.2.2"]
    with pytest.raises(ValueError):
        up.mode("bogus")


def test_fake_delay(fake_upstream):
    fake_upstream.answer("www.test", "A", "192.0.2.1").delay(0.3)
    t0 = time.monotonic()
    assert addresses(udp(fake_upstream.port, "www.test", timeout=2)) == ["192.0.2.1"]
    assert time.monotonic() - t0 >= 0.28
    with pytest.raises(dns.exception.Timeout):
        udp(fake_upstream.port, "www.test", timeout=0.1)
    fake_upstream.delay(0)
    t0 = time.monotonic()
    udp(fake_upstream.port, "www.test")
    assert time.monotonic() - t0 < 0.2


def test_fake_close_and_reopen_port(fake_upstream):
    up = fake_upstream
    up.answer("www.test", "A", "192.0.2.1")
    port = up.port
    up.close_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # connected UDP sees ICMP
        s.settimeout(T)
        s.connect(("127.0.0.1", port))
        s.send(dns.message.make_query("www.test", "A").to_wire())
        with pytest.raises(ConnectionRefusedError):
            s.recv(512)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=T).close()
    up.open_port()
    assert up.port == port
    assert addresses(udp(port, "www.test")) == ["192.0.2.1"]
    assert addresses(tcp(port, "www.test")) == ["192.0.2.1"]


def test_fake_tcp_pipelined_queries(fake_upstream):
    up = fake_upstream
    for i in range(3):
        up.answer(f"h{i}.test", "A", f"192.0.2.{i + 10}")
    queries = [dns.message.make_query(f"h{i}.test", "A") for i in range(3)]
    with socket.create_connection(("127.0.0.1", up.port), timeout=T) as s:
        s.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
        replies = {}
        buf = b""
        while len(replies) < 3:
            chunk = s.recv(4096)
            assert chunk, "connection closed early"
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                r = dns.message.from_wire(buf[2:2 + n])
                replies[r.id] = r
                buf = buf[2 + n:]
    for i, q in enumerate(queries):
        assert addresses(replies[q.id]) == [f"192.0.2.{i + 10}"]


def test_fake_calls_recorded(fake_upstream):
    up = fake_upstream
    up.answer("www.test", "A", "192.0.2.1")
    udp(up.port, "WWW.test")
    tcp(up.port, "www.test", "AAAA")
    assert up.calls == [("udp", "www.test", "A"), ("tcp", "www.test", "AAAA")]
    assert up.calls_for("www.test", "A") == [("udp", "www.test", "A")]
    up.reset_calls()
    assert up.calls == []


def test_fake_usable_from_another_event_loop(fake_upstream):
    fake_upstream.answer("www.test", "A", "192.0.2.1")

    async def main():
        q = dns.message.make_query("www.test", "A")
        return await dns.asyncquery.udp(q, "127.0.0.1", port=fake_upstream.port, timeout=T)

    assert addresses(asyncio.run(main())) == ["192.0.2.1"]


def test_fake_context_manager_stop_releases_port():
    with FakeUpstream() as up:
        port = up.port
        up.answer("x.test", "A", "192.0.2.1")
        assert addresses(udp(port, "x.test")) == ["192.0.2.1"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
