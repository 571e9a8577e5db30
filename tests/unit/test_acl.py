"""Access control verdicts (resolver/serve/acl.py): pure, no sockets.

Loopback cannot carry a spoofed source address, so the "a default config never
answers the world" promise is shown here on the verdict function, over many
addresses; tests/integration/test_security.py shows the listeners act on it.
"""

from __future__ import annotations

import ipaddress
import random

import dns.message
import pytest

from resolver import wire
from resolver.config import SecurityConfig
from resolver.serve.acl import MEMO_MAX, AccessControl

DEFAULT = AccessControl(SecurityConfig())

ALLOWED_BY_DEFAULT = [
    "127.0.0.1", "127.255.255.254", "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.255",
    "192.168.0.1", "192.168.255.254", "100.64.0.1", "100.127.255.255",
    "::1", "fc00::1", "fd12:3456::1", "fe80::1", "fe80::1%eth0", "febf::1",
    "::ffff:10.1.2.3", "::ffff:127.0.0.1",  # IPv4-mapped, as on a dual-stack socket
]

REFUSED_BY_DEFAULT = [
    "8.8.8.8", "1.1.1.1", "9.255.255.255", "11.0.0.0", "172.15.255.255", "172.32.0.0",
    "192.167.255.255", "192.169.0.0", "100.63.255.255", "100.128.0.0", "128.0.0.1", "0.0.0.0",
    "255.255.255.255", "224.0.0.1", "169.254.1.1",
    "2001:4860:4860::8888", "2606:4700::1111", "::", "fec0::1", "fbff::1", "ff02::1",
    "::ffff:8.8.8.8", "64:ff9b::808:808",
    "", "localhost", "not an address", "10.0.0.0/8", "999.1.1.1",
]


@pytest.mark.parametrize("host", ALLOWED_BY_DEFAULT)
def test_default_allows_loopback_and_private(host):
    assert DEFAULT.matches(host)
    assert AccessControl(SecurityConfig()).admits(host)


@pytest.mark.parametrize("host", REFUSED_BY_DEFAULT)
def test_default_refuses_the_rest(host):
    assert not DEFAULT.matches(host)
    assert not AccessControl(SecurityConfig()).admits(host)


def test_default_never_admits_a_global_address():
    """20 000 random addresses: every globally routable one is refused, by the memo too."""
    acl = AccessControl(SecurityConfig())
    rng = random.Random(7)
    checked = 0
    for _ in range(10_000):
        for ip in (ipaddress.IPv4Address(rng.getrandbits(32)), ipaddress.IPv6Address(rng.getrandbits(128))):
            if ip.is_global:
                checked += 1
                assert not acl.admits(str(ip)), ip
                assert not acl.admits(str(ip)), ip  # second sight: from the memo
    assert checked > 10_000


def test_allow_everyone_and_narrow_lists():
    everyone = AccessControl(SecurityConfig(allow=("0.0.0.0/0", "::/0")))
    assert everyone.admits("8.8.8.8") and everyone.admits("2001:db8::1")
    narrow = AccessControl(SecurityConfig(allow=("192.0.2.0/28",)))
    assert narrow.admits("192.0.2.15") and not narrow.admits("192.0.2.16")
    assert not narrow.admits("127.0.0.1")  # loopback is not special: only the list counts


def test_memo_is_bounded_and_cleared_on_configure():
    acl = AccessControl(SecurityConfig())
    for i in range(MEMO_MAX * 2 + 10):
        acl.admits(str(ipaddress.IPv4Address(0x0A000000 + i)))  # 10/8: allowed
        acl.admits(str(ipaddress.IPv4Address(0x08000000 + i)))  # 8/8: denied
    assert 0 < len(acl.allowed) <= MEMO_MAX and 0 < len(acl.denied) <= MEMO_MAX
    allowed_set = acl.allowed
    acl.configure(SecurityConfig(allow=("8.0.0.0/8",)))
    assert acl.allowed is allowed_set and not acl.allowed and not acl.denied  # same set, emptied
    assert acl.admits("8.0.0.1") and not acl.admits("10.0.0.1")


@pytest.mark.parametrize("edns", [False, True])
def test_refusal_is_refused_and_never_larger_than_the_query(edns):
    query = dns.message.make_query("WwW.Example.COM", "A", use_edns=0 if edns else False)
    query.id = 0xBEEF
    data = query.to_wire()
    reply = DEFAULT.refusal(data)
    assert reply is not None and len(reply) <= len(data)
    msg = dns.message.from_wire(reply)
    assert msg.id == 0xBEEF and msg.rcode() == wire.REFUSED
    assert not msg.answer and str(msg.question[0].name) == "WwW.Example.COM."
    assert reply[12:12 + len(data) - 12 - (11 if edns else 0)] == data[12:len(data) - (11 if edns else 0)]


def test_refusal_drop_action_and_garbage():
    data = dns.message.make_query("www.example.com", "A").to_wire()
    assert AccessControl(SecurityConfig(refused_action="drop")).refusal(data) is None
    rng = random.Random(3)
    for size in range(0, 60):
        junk = bytes(rng.getrandbits(8) for _ in range(size))
        reply = DEFAULT.refusal(junk)
        assert reply is None or (len(reply) <= len(junk) and reply[3] & 0x0F == wire.REFUSED)
    response = bytearray(data)
    response[2] |= 0x80  # a response sent to us: never answered (no reflection loops)
    assert DEFAULT.refusal(bytes(response)) is None
