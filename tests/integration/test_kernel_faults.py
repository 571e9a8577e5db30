"""The outage promise under kernel-level faults: real packet loss, blackholes, ICMP.

Everything runs in a network namespace the test creates (tests/support/netns.py):
a real Unbound, authoritative for ``test.`` only (it REFUSES ". NS" and every
other name, as a corporate or Kubernetes zone server does), the forwarder on real
sockets with a fake clock for TTLs, and one client socket — a sidecar's whole pod
is one address.  nftables rules on the namespace's loopback lose, drop or reject
the forwarder's datagrams to Unbound.  Needs root, ``ip`` and ``nft`` (`make test`
installs them); skipped elsewhere.
"""

from __future__ import annotations

import os
import random
import socket
import time

import dns.edns
import dns.message
import dns.rcode
import pytest

from tests.support import netns
from tests.support.forwarder import RunningForwarder, forwarder_config
from tests.support.unbound import UnboundServer, requires_unbound

pytestmark = [
    pytest.mark.netns,
    requires_unbound,
    pytest.mark.skipif(netns.available() is not None, reason=netns.available() or ""),
]

NAMES = [f"n{i}.test" for i in range(20)]
EDE_STALE_ANSWER = 3


def ask_all(port: int, names: list[str], timeout: float = 6.0) -> dict[str, dns.message.Message]:
    """Send a query for every name at once from one UDP socket; collect the replies by ID.

    Names that got no reply before ``timeout`` are missing from the result.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        pending = {}
        first = random.randrange(0x10000)
        for i, name in enumerate(names):  # distinct IDs, so no reply can stand for another
            q = dns.message.make_query(name, "A", use_edns=0, id=(first + i) & 0xFFFF)
            pending[q.id] = name
            sock.sendto(q.to_wire(), ("127.0.0.1", port))
        replies = {}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65535)
            except socket.timeout:
                break
            msg = dns.message.from_wire(data)
            name = pending.pop(msg.id, None)
            if name is not None:
                replies[name] = msg
        return replies
    finally:
        sock.close()


def address_of(msg: dns.message.Message) -> str | None:
    for rrset in msg.answer:
        for rr in rrset:
            return rr.address
    return None


def is_stale(msg: dns.message.Message) -> bool:
    return any(opt.otype == dns.edns.EDE and opt.code == EDE_STALE_ANSWER for opt in msg.options)


@pytest.fixture
def net():
    with netns.private_network(f"rslv-kf-{os.getpid()}") as faults:
        yield faults


@pytest.fixture
def auth(tmp_path, net):
    server = UnboundServer(tmp_path / "unbound", [f"{n}. 2 IN A 192.0.2.{i + 1}" for i, n in enumerate(NAMES)])
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def fwd(auth):
    forwarder = RunningForwarder(forwarder_config([auth.address]))
    try:
        yield forwarder
    finally:
        forwarder.stop()


def test_lost_datagrams_are_retransmitted_not_servfailed(net, auth, fwd):
    """20% of the forwarder's datagrams to its only upstream are lost in the kernel.
    A stub resolver's own retry would succeed, so the forwarder must retransmit
    within its deadline (fresh ID and port) instead of answering SERVFAIL."""
    net.lose(auth.port, 20)
    replies = ask_all(fwd.port, NAMES)
    assert sorted(replies) == sorted(NAMES), "every query answered"
    failed = {n: dns.rcode.to_text(m.rcode()) for n, m in replies.items() if m.rcode() != dns.rcode.NOERROR}
    assert not failed, f"lost datagrams became errors: {failed}"
    assert all(address_of(replies[n]) == f"192.0.2.{i + 1}" for i, n in enumerate(NAMES))


@pytest.mark.parametrize("fault", ["blackhole", "reject"])
def test_outage_is_covered_and_recovery_takes_seconds(net, auth, fwd, fault):
    """Cached names are answered stale from one address while the upstream is
    blackholed or rejects with ICMP; once it is back with new data, every name is
    fresh within 2 s — although the upstream REFUSES ". NS" (it is authoritative
    for test. only), so a health probe that needs ". NS" to succeed never sees it."""
    warm = ask_all(fwd.port, NAMES)
    assert all(m.rcode() == dns.rcode.NOERROR for m in warm.values()) and len(warm) == len(NAMES)
    fwd.advance(3)  # every TTL (2 s) has expired
    getattr(net, fault)(auth.port)

    for round_ in range(2):
        replies = ask_all(fwd.port, NAMES)
        assert sorted(replies) == sorted(NAMES), f"round {round_}: every query answered"
        for i, name in enumerate(NAMES):
            msg = replies[name]
            assert msg.rcode() == dns.rcode.NOERROR, (round_, name, dns.rcode.to_text(msg.rcode()))
            assert address_of(msg) == f"192.0.2.{i + 1}" and is_stale(msg), (round_, name)
            assert msg.answer[0].ttl == 30  # stale.answer_ttl (RFC 8767 §4)

    for i, name in enumerate(NAMES):  # the upstream comes back with new data
        auth.set_record(f"{name}. 2 IN A 198.51.100.{i + 1}")
    net.clear()
    restored = time.monotonic()
    while True:
        replies = ask_all(fwd.port, NAMES, timeout=2.0)
        fresh = [n for i, n in enumerate(NAMES)
                 if n in replies and address_of(replies[n]) == f"198.51.100.{i + 1}" and not is_stale(replies[n])]
        elapsed = time.monotonic() - restored
        if len(fresh) == len(NAMES):
            break
        assert elapsed < 2.0, f"after {elapsed:.1f}s only {len(fresh)} of {len(NAMES)} names are fresh"
        time.sleep(0.1)
