"""DNS-over-HTTPS upstreams (RFC 8484) against a real DoH server and a faulty one.

The real one is dnsdist (PowerDNS) with a DoH frontend on loopback and a certificate
from a test CA minted with openssl (tests/support/pki.py), forwarding to a
FakeUpstream; the faulty one is an HTTP/2 server on ``h2`` (tests/support/fake_doh.py)
that sends garbage, wrong content types, HTTP errors, resets, or closes mid-stream.
Each failure must be a failure of that upstream for that query (SERVFAIL, or the
next upstream), counted under its reason, with no traceback anywhere.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

import dns.rcode
import pytest

from tests.support.client import ask, ede_codes, eventually, ttls
from tests.support.dnsdist import HAVE_DNSDIST, HEALTH_CHECK_NAME, DnsdistDoh
from tests.support.fake_doh import FakeDohServer
from tests.support.fake_upstream import FakeUpstream
from tests.support.pki import HAVE_OPENSSL, mint

pytestmark = pytest.mark.skipif(not HAVE_OPENSSL, reason="needs openssl (`make test` installs it)")
needs_dnsdist = pytest.mark.skipif(not HAVE_DNSDIST, reason="needs dnsdist (`make test` installs it)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return mint(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def dnsdist(tmp_path, pki, fake_upstream):
    """dnsdist serving DoH on 127.0.0.1, forwarding to ``fake_upstream`` (www.test A 192.0.2.1)."""
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=300)
    server = DnsdistDoh(tmp_path / "dnsdist", fake_upstream.address, pki)
    server.start()
    try:
        yield server
    finally:
        server.close()


def ca(pki) -> dict:
    return {"tls_ca_file": str(pki / "ca.pem")}


def label_of(url: str) -> str:
    return "https://" + url.split("://", 1)[1].split("/", 1)[0]


def asked(upstream, name: str) -> int:
    """Queries for ``name`` that reached the backend (dnsdist's health checks aside)."""
    return len(upstream.calls_for(name))


@pytest.fixture
def no_tracebacks(caplog):
    """Fails the test if anything logged an exception with a traceback."""
    caplog.set_level(logging.WARNING)
    yield
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


# -- through a real DoH server ---------------------------------------------------------


@needs_dnsdist
def test_resolves_through_dnsdist(dnsdist, fake_upstream, pki, start_forwarder):
    fwd = start_forwarder([dnsdist.url()], upstream=ca(pki))
    msg = ask(fwd.port, "www.test")
    assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.1"] and ttls(msg) == {300}
    assert ask(fwd.port, "nosuch.test").rcode() == dns.rcode.NXDOMAIN  # NXDOMAIN passes through as is
    assert asked(fake_upstream, "www.test") == 1
    label = label_of(dnsdist.url())
    assert fwd.metric("resolver_upstream_requests_total", upstream=label) == 2
    assert fwd.metric("resolver_upstream_up", upstream=label) == 1
    assert fwd.metric("resolver_upstream_connections_opened_total", upstream=label) == 1


@needs_dnsdist
@pytest.mark.parametrize("server_name, trust, cert", [
    ("other.test", True, "server"),   # a name the certificate does not carry
    ("doh.test", False, "server"),    # a CA we do not trust (the system store)
    ("doh.test", True, "other"),      # the right names, signed by another CA
])
def test_certificate_refused_and_the_query_never_reaches_the_backend(
        tmp_path, pki, fake_upstream, start_forwarder, server_name, trust, cert, no_tracebacks):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    with DnsdistDoh(tmp_path / "dnsdist", fake_upstream.address, pki, cert=cert) as server:
        fwd = start_forwarder([server.url(server_name)],
                              upstream={**(ca(pki) if trust else {}), "attempt_timeout": 1.0, "total_timeout": 1.0})
        assert ask(fwd.port, "www.test").rcode() == dns.rcode.SERVFAIL
        label = label_of(server.url())
        assert fwd.metric("resolver_upstream_errors_total", upstream=label, reason="bad_response") == 1
        assert asked(fake_upstream, "www.test") == 0


@needs_dnsdist
def test_dnsdist_killed_gives_stale_answers_then_its_return_is_noticed(dnsdist, fake_upstream, pki, start_forwarder):
    fwd = start_forwarder([dnsdist.url()], stale={"client_timeout": 0.3, "recheck": 30},
                          upstream={**ca(pki), "attempt_timeout": 0.5, "total_timeout": 1.0, "probe_name": "test.",
                                    "max_failures": 2})
    assert ask(fwd.port, "www.test").answer
    dnsdist.kill()
    fwd.advance(301)  # the TTL (300) has expired
    msg = ask(fwd.port, "www.test")
    assert msg.rcode() == dns.rcode.NOERROR and [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.1"]
    assert ttls(msg) == {30} and ede_codes(msg) == [3]
    assert ask(fwd.port, "never.test").rcode() == dns.rcode.SERVFAIL  # never NXDOMAIN
    label = label_of(dnsdist.url())
    assert fwd.metric("resolver_upstream_errors_total", upstream=label, reason="unreachable") >= 1
    assert eventually(lambda: fwd.metric("resolver_upstream_up", upstream=label) == 0, timeout=5)

    fake_upstream.clear().answer("www.test", "A", "192.0.2.100", ttl=300)
    dnsdist.start()  # back on the same port: the prober reconnects and marks it up
    assert eventually(lambda: fwd.metric("resolver_upstream_up", upstream=label) == 1, timeout=8)
    msg = ask(fwd.port, "www.test")
    assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.100"] and not ede_codes(msg)


@needs_dnsdist
def test_one_connection_carries_hundreds_of_concurrent_queries(dnsdist, fake_upstream, pki, start_forwarder):
    fwd = start_forwarder([dnsdist.url()], upstream=ca(pki))
    names = [f"n{i}.test" for i in range(300)]
    for name in names[::2]:
        fake_upstream.answer(name, "A", "192.0.2.7")
    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(lambda n: ask(fwd.port, n, timeout=5), names))
    assert [r.rcode() for r in replies] == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN] * 150
    label = label_of(dnsdist.url())
    assert fwd.metric("resolver_upstream_requests_total", upstream=label) == 300
    assert fwd.metric("resolver_upstream_connections_opened_total", upstream=label) == 1
    assert fwd.app.router.pools[0].upstreams[0].streams == 300


@needs_dnsdist
def test_reconnects_after_dnsdist_closes_an_idle_connection(tmp_path, pki, fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1").answer("v6.test", "AAAA", "2001:db8::1")
    with DnsdistDoh(tmp_path / "dnsdist", fake_upstream.address, pki, idle_timeout=1) as server:
        fwd = start_forwarder([server.url()], upstream=ca(pki))
        assert ask(fwd.port, "www.test").answer
        upstream = fwd.app.router.pools[0].upstreams[0]
        first = upstream._conn
        assert eventually(lambda: first.closed, timeout=5)  # dnsdist's 1 s idle timeout
        assert ask(fwd.port, "v6.test", "AAAA").answer
        assert upstream._conn is not first and upstream.connections == 2


# -- a faulty DoH server ----------------------------------------------------------------


@pytest.mark.parametrize("mode, reason", [
    ("garbage", "bad_response"), ("content_type", "bad_response"), ("status", "bad_response"),
    ("reset", "bad_response"), ("wrong_question", "bad_response"), ("close", "unreachable"),
])
def test_faulty_server_is_a_failure_of_that_upstream(pki, start_forwarder, mode, reason, no_tracebacks):
    with FakeDohServer(pki, mode) as server:
        fwd = start_forwarder([server.url()], upstream={**ca(pki), "max_failures": 2})
        label = label_of(server.url())
        assert ask(fwd.port, "www.test").rcode() == dns.rcode.SERVFAIL
        assert fwd.metric("resolver_upstream_errors_total", upstream=label, reason=reason) == 1
        assert fwd.metric("resolver_upstream_up", upstream=label) == 1
        assert ask(fwd.port, "v6.test", "AAAA").rcode() == dns.rcode.SERVFAIL
        assert fwd.metric("resolver_upstream_up", upstream=label) == 0  # two failures in a row: down
        assert len(server.requests) == 2


@pytest.mark.parametrize("mode", ["garbage", "content_type", "status", "reset", "close"])
def test_faulty_server_then_the_next_upstream_answers(pki, fake_upstream, start_forwarder, mode, no_tracebacks):
    fake_upstream.answer("www.test", "A", "192.0.2.9")
    with FakeDohServer(pki, mode) as server:
        fwd = start_forwarder([server.url(), fake_upstream.address], upstream=ca(pki))
        msg = ask(fwd.port, "www.test")
        assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.9"]
        assert len(server.requests) == 1 and asked(fake_upstream, "www.test") == 1


def test_requests_are_rfc8484_posts_with_id_0_and_http_caching_headers_are_ignored(pki, start_forwarder):
    """POST to the path, :authority the server name, ID 0 (RFC 8484 §4.1); the server says
    max-age=3600 but the DNS TTL (300) is what the cache keeps."""
    with FakeDohServer(pki) as server:
        fwd = start_forwarder([server.url()], upstream=ca(pki))
        msg = ask(fwd.port, "www.test")
        assert ttls(msg) == {300} and msg.id != 0
        assert server.requests == [("POST", "/dns-query", f"doh.test:{server.port}", "application/dns-message", 0)]
        fwd.advance(301)
        assert ask(fwd.port, "www.test").answer
        assert len(server.requests) == 2  # expired after 300 s, not 3600


def test_goaway_moves_queries_to_a_new_connection(pki, start_forwarder, no_tracebacks):
    """The server sends GOAWAY as its 3rd stream arrives: that query is sent again on a
    new connection (h2 reads nothing after a GOAWAY), so each connection answers 2."""
    with FakeDohServer(pki, goaway_after=3) as server:
        fwd = start_forwarder([server.url()], upstream=ca(pki))
        replies = [ask(fwd.port, f"n{i}.test") for i in range(8)]
        assert all(r.rcode() == dns.rcode.NOERROR and r.answer for r in replies)
        assert server.connections == 4
        label = label_of(server.url())
        assert sum(fwd.metric("resolver_upstream_errors_total", upstream=label, reason=r)
                   for r in ("unreachable", "bad_response", "timeout")) == 0


def test_goaway_with_many_streams_in_flight(pki, start_forwarder, no_tracebacks):
    with FakeDohServer(pki, goaway_after=40, delay=0.01) as server:
        fwd = start_forwarder([server.url()], upstream=ca(pki))
        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda i: ask(fwd.port, f"n{i}.test", timeout=5), range(120)))
        assert all(r.rcode() == dns.rcode.NOERROR and r.answer for r in replies)
        assert server.connections >= 3
        assert fwd.metric("resolver_upstream_errors_total", upstream=label_of(server.url()), reason="unreachable") == 0


def test_server_stream_limit_is_respected(pki, start_forwarder):
    with FakeDohServer(pki, max_streams=2, delay=0.05) as server:
        fwd = start_forwarder([server.url()], upstream=ca(pki))
        assert ask(fwd.port, "first.test").answer  # the connection and its SETTINGS are in place
        with ThreadPoolExecutor(20) as pool:
            replies = list(pool.map(lambda i: ask(fwd.port, f"n{i}.test", timeout=5), range(20)))
        assert all(r.answer for r in replies)
        assert server.connections == 1 and server.max_open <= 2
        assert fwd.metric("resolver_upstream_stream_waits_total", upstream=label_of(server.url())) > 0


def test_flow_control_window_smaller_than_a_query(pki, start_forwarder):
    """The server lets us send 16 bytes per stream before its WINDOW_UPDATE (RFC 9113
    §6.9): each query goes out in pieces, concurrent ones interleaved."""
    with FakeDohServer(pki, window=16) as server:
        fwd = start_forwarder([server.url()], upstream=ca(pki))
        assert ask(fwd.port, "first.test").answer
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda i: ask(fwd.port, f"n{i}.test", timeout=5), range(16)))
        assert all(r.answer for r in replies) and len(server.requests) == 17


def test_silent_connection_is_replaced_after_a_timeout(pki, start_forwarder):
    """A server that accepts streams and never answers: the query times out, and the
    connection that sent not one byte meanwhile is closed, so the next query reconnects."""
    with FakeDohServer(pki, "drop") as server:
        fwd = start_forwarder([server.url()], upstream={**ca(pki), "attempt_timeout": 0.3, "total_timeout": 0.3})
        assert ask(fwd.port, "www.test").rcode() == dns.rcode.SERVFAIL
        assert server.connections == 1
        server.mode = "normal"
        assert ask(fwd.port, "other.test").answer  # a new name: no SERVFAIL cached for it
        assert server.connections == 2


# -- provider diversity ----------------------------------------------------------------


@needs_dnsdist
def test_blackholed_udp_provider_costs_at_most_the_hedge_delay(tmp_path, pki, fake_upstream, second_upstream,
                                                             start_forwarder):
    """The VPC resolver (plain UDP, two addresses in one /24) is blackholed; a public
    provider over DoH (another prefix, 127.0.1.1) is healthy.  With the hedge at 200 ms
    every answer comes from DoH within the hedge delay plus a loose margin, from the
    first query on (before the blackholed ones are marked down), and the hedge goes to
    the DoH provider, not to the second address of the blackholed one."""
    fake_upstream.mode("drop")
    second_upstream.mode("drop")
    backend = FakeUpstream().start()
    try:
        for i in range(20):
            backend.answer(f"n{i}.test", "A", "192.0.2.1")
        with DnsdistDoh(tmp_path / "dnsdist", backend.address, pki, host="127.0.1.1") as server:
            fwd = start_forwarder([fake_upstream.address, second_upstream.address, server.url()],
                                  upstream={**ca(pki), "hedge_after": 0.2, "attempt_timeout": 1.0,
                                            "total_timeout": 3.0, "max_failures": 1000})
            times = []
            for i in range(20):
                started = time.monotonic()
                msg = ask(fwd.port, f"n{i}.test", timeout=3)
                times.append(time.monotonic() - started)
                assert msg.answer, i
            assert max(times) < 1.0, times  # 0.2 s hedge + a loaded machine's margin; never the 1 s timeout
            assert len(second_upstream.calls) == 0  # the hedge went to the other provider
            assert len(fake_upstream.calls) == 20
    finally:
        backend.stop()
