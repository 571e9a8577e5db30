"""DNS over TLS upstreams against a real Unbound serving DoT with a certificate from a
test CA that the tests mint with the ``openssl`` command (RFC 7858, RFC 8310).

The server certificate is for ``dot.test`` and 127.0.0.1; Unbound closes idle TLS
connections after 300 ms so that the reconnect path runs.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import dns.rcode
import pytest

from tests.support.client import ask
from tests.support.pki import mint
from tests.support.unbound import DEFAULT_RECORDS, HAVE_UNBOUND, UnboundServer, free_port

pytestmark = pytest.mark.skipif(not HAVE_UNBOUND or shutil.which("openssl") is None,
                                reason="needs unbound and openssl (`make test` installs them)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throw-away CA and a server certificate for dot.test / 127.0.0.1 signed by it."""
    return mint(tmp_path_factory.mktemp("pki"))


class DotUnbound(UnboundServer):
    """The test Unbound, plus DNS over TLS on a second port of 127.0.0.1."""

    def __init__(self, tmpdir, records, pki):
        super().__init__(tmpdir, records)
        self.tls_port = free_port()
        self.pki = pki

    def _config_text(self) -> str:
        extra = "\n".join([
            "server:",
            f"    interface: 127.0.0.1@{self.tls_port}",
            f"    tls-port: {self.tls_port}",
            f'    tls-service-key: "{self.pki / "server.key"}"',
            f'    tls-service-pem: "{self.pki / "server.pem"}"',
            "    tcp-idle-timeout: 300",
            "",
        ])
        return super()._config_text().replace("server:\n", extra, 1)


@pytest.fixture
def dot_unbound(tmp_path, pki):
    server = DotUnbound(tmp_path / "unbound", DEFAULT_RECORDS, pki)
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_forwards_over_tls_with_one_reused_pipelined_connection(dot_unbound, pki, start_forwarder):
    fwd = start_forwarder([f"tls://127.0.0.1:{dot_unbound.tls_port}#dot.test"],
                          upstream={"tls_ca_file": str(pki / "ca.pem")})
    assert [rr.to_text() for rr in ask(fwd.port, "www.test").answer[0]] == ["192.0.2.1"]
    upstream = fwd.app.router.upstreams[0]
    conn = upstream._conn
    names = ["v6.test", "alias.test", "big.test", "nosuch.test", "short.test"]
    types = {"v6.test": "AAAA", "big.test": "TXT"}
    with ThreadPoolExecutor(len(names)) as pool:  # concurrent misses: pipelined on the one connection
        replies = list(pool.map(lambda n: ask(fwd.port, n, types.get(n, "A")), names))
    assert [r.rcode() for r in replies] == [0, 0, 0, dns.rcode.NXDOMAIN, 0]
    assert upstream._conn is conn and not conn.closed
    label = f"tls://127.0.0.1:{dot_unbound.tls_port}"
    assert fwd.metric("resolver_upstream_requests_total", upstream=label) == 6


def test_reconnects_after_the_server_closes_an_idle_connection(dot_unbound, pki, start_forwarder):
    fwd = start_forwarder([f"tls://127.0.0.1:{dot_unbound.tls_port}#dot.test"],
                          upstream={"tls_ca_file": str(pki / "ca.pem")})
    assert ask(fwd.port, "www.test").answer
    first = fwd.app.router.upstreams[0]._conn
    deadline = time.monotonic() + 5
    while not first.closed and time.monotonic() < deadline:  # Unbound's 300 ms idle timeout
        time.sleep(0.05)
    assert first.closed
    assert ask(fwd.port, "v6.test", "AAAA").answer
    assert fwd.app.router.upstreams[0]._conn is not first


@pytest.mark.parametrize("suffix, ca", [("#other.test", True), ("#dot.test", False), ("", False)])
def test_certificate_is_verified(dot_unbound, pki, start_forwarder, suffix, ca):
    """Wrong name, or a CA we do not trust (the system store): no answer is trusted, SERVFAIL."""
    upstream = {"tls_ca_file": str(pki / "ca.pem")} if ca else {}
    fwd = start_forwarder([f"tls://127.0.0.1:{dot_unbound.tls_port}{suffix}"],
                          upstream={**upstream, "attempt_timeout": 1.0, "total_timeout": 1.0})
    assert ask(fwd.port, "www.test").rcode() == dns.rcode.SERVFAIL
    label = f"tls://127.0.0.1:{dot_unbound.tls_port}"
    assert fwd.metric("resolver_upstream_errors_total", upstream=label, reason="bad_response") == 1


def test_ip_in_certificate_verifies_without_a_server_name(dot_unbound, pki, start_forwarder):
    fwd = start_forwarder([f"tls://127.0.0.1:{dot_unbound.tls_port}"], upstream={"tls_ca_file": str(pki / "ca.pem")})
    assert ask(fwd.port, "www.test").answer


def _serve_tls(pki, handler):
    """An in-loop TLS server on 127.0.0.1 that runs ``handler(query, writer)`` per query."""
    import ssl
    import struct

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "server.pem", pki / "server.key")

    async def client(reader, writer):
        try:
            while True:
                size = struct.unpack(">H", await reader.readexactly(2))[0]
                await handler(await reader.readexactly(size), writer)
        except Exception:  # noqa: BLE001 - client gone
            writer.close()

    import asyncio

    return asyncio.start_server(client, "127.0.0.1", 0, ssl=context)


@pytest.mark.parametrize("behaviour", ["garbage", "wrong_id", "short", "close"])
def test_bad_tls_replies_are_ignored_or_fail_typed(pki, behaviour):
    """Garbage, wrong IDs and short frames are counted and ignored; a close is Unreachable."""
    import asyncio
    import struct

    from resolver import wire
    from resolver.config import parse_upstream
    from resolver.errors import UpstreamTimeout, UpstreamUnreachable
    from resolver.upstream import tls as dot

    async def handler(query, writer):
        if behaviour == "close":
            writer.transport.abort()
            return
        bad = {"garbage": query[:2] + b"\x81\x80\xff\xff" + b"\x00" * 30,
               "wrong_id": bytes([query[0] ^ 1, query[1]]) + query[2:],
               "short": b"\x01"}[behaviour]
        writer.write(struct.pack(">H", len(bad)) + bad)

    async def scenario():
        server = await _serve_tls(pki, handler)
        port = server.sockets[0].getsockname()[1]
        up = dot.TlsUpstream(parse_upstream(f"tls://127.0.0.1:{port}#dot.test", "u"), 1232,
                             dot.client_context(str(pki / "ca.pem")))
        question = wire.name_to_wire("www.test") + b"\x00\x01\x00\x01"
        loop = asyncio.get_running_loop()
        try:
            await up.exchange(question, False, False, loop.time() + 0.5)
        except (UpstreamTimeout, UpstreamUnreachable) as e:
            return type(e), up.mismatched
        finally:
            up.close()
            server.close()
        return None, up.mismatched

    error, mismatched = asyncio.run(scenario())
    if behaviour == "close":
        assert error is UpstreamUnreachable
    else:
        assert error is UpstreamTimeout and mismatched == 1
