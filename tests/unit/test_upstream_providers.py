"""Which upstreams share fate (one provider), and the order that takes providers in turns."""

from __future__ import annotations

import pytest

from resolver.config import parse_upstream
from resolver.policy.upstream_order import diversify, providers


class U:
    def __init__(self, text):
        self.address = parse_upstream(text, "u")
        self.label = self.address.label

    def __repr__(self):
        return self.label


@pytest.mark.parametrize("texts, groups", [
    # a VPC resolver's two addresses (one /24) and two public providers over DoH
    (["10.0.0.2", "10.0.0.3", "https://1.1.1.1#cloudflare-dns.com", "https://8.8.8.8#dns.google"],
     [0, 0, 1, 2]),
    # same prefix, other transport: one provider (a withdrawn prefix takes both)
    (["1.1.1.1", "tls://1.1.1.1#one.one.one.one", "https://1.0.0.1#cloudflare-dns.com"], [0, 0, 1]),
    # same certificate domain, other prefixes: one provider
    (["https://1.1.1.1#cloudflare-dns.com", "https://104.16.248.249#security.cloudflare-dns.com"], [0, 0]),
    # transitive: A~B by prefix, B~C by name
    (["1.1.1.1", "https://1.1.1.2#cloudflare-dns.com", "https://162.159.36.1#CLOUDFLARE-DNS.COM."], [0, 0, 0]),
    (["[2001:db8:1::1]:53", "[2001:db8:1:2::1]:53", "[2001:db8:2::1]:53"], [0, 0, 1]),
    (["tcp://192.0.2.1:5300", "192.0.2.1"], [0, 0]),
])
def test_providers(texts, groups):
    ups = [U(t) for t in texts]
    found = providers(ups)
    numbering: dict[int, int] = {}
    assert [numbering.setdefault(found[u.label], len(numbering)) for u in ups] == groups


def test_upstreams_without_an_address_are_each_their_own_provider():
    class Bare:
        def __init__(self, label):
            self.label = label

    assert len(set(providers([Bare("a"), Bare("b")]).values())) == 2


@pytest.mark.parametrize("order, expected", [
    ("A1 A2 B1 C1 B2", "A1 B1 C1 A2 B2"),
    ("A1 B1 A2 B2", "A1 B1 A2 B2"),
    ("B1 A1 A2", "B1 A1 A2"),
    ("A1 A2 A3", "A1 A2 A3"),
    ("A1", "A1"),
])
def test_diversify(order, expected):
    class L:
        def __init__(self, label):
            self.label = label

    ups = [L(x) for x in order.split()]
    provider = {u.label: ord(u.label[0]) for u in ups}
    assert " ".join(u.label for u in diversify(ups, provider)) == expected
