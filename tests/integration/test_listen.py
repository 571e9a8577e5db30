"""Listening on several addresses, IPv6 included, each with UDP and TCP."""

from __future__ import annotations

import dataclasses
import socket

import dns.message
import dns.query
import pytest

from resolver.config import Address
from tests.support.forwarder import RunningForwarder, forwarder_config


def _have_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _have_ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
def test_ipv4_and_ipv6_listeners_udp_and_tcp(fake_upstream):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    config = dataclasses.replace(forwarder_config([fake_upstream.address]),
                                 listen=(Address("127.0.0.1", 0), Address("::1", 0)))
    fwd = RunningForwarder(config)
    try:
        (_, port4), (_, port6) = fwd.app.listeners.bound
        for host, port in (("127.0.0.1", port4), ("::1", port6)):
            q = dns.message.make_query("www.test", "A")
            for exchange in (dns.query.udp, dns.query.tcp):
                msg = exchange(q, host, port=port, timeout=3)
                assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.1"], (host, exchange)
    finally:
        fwd.stop()
