"""The last-known-good verdict as a table (pure: entries, replies, a time)."""

from __future__ import annotations

import pytest
from dnslib import QTYPE, RCODE, RR, SOA, A, DNSHeader, DNSQuestion, DNSRecord

from resolver import wire
from resolver.cache.store import Cache
from resolver.config import LastKnownGoodConfig
from resolver.policy import last_known_good as lkg

T0 = 1000.0
NAME = "api.eu.amazonaws.com"
QUESTION = wire.name_to_wire(NAME) + b"\x00\x01\x00\x01"


def reply(kind: str) -> wire.Prepared:
    rec = DNSRecord(DNSHeader(id=1, qr=1, rd=1, ra=1), q=DNSQuestion(NAME, QTYPE.A))
    if kind == "positive":
        rec.add_answer(RR(NAME, QTYPE.A, rdata=A("192.0.2.1"), ttl=60))
    else:
        if kind == "nxdomain":
            rec.header.rcode = RCODE.NXDOMAIN
        rec.add_auth(RR("amazonaws.com", QTYPE.SOA, ttl=60,
                        rdata=SOA("ns.amazonaws.com", "h.amazonaws.com", (1, 60, 60, 60, 60))))
    return wire.parse_reply(bytes(rec.pack()), QUESTION, min_ttl=0, max_ttl=86400, max_negative_ttl=3600)


def entry(kind="positive", max_stale=86400.0):
    return Cache(10).put(b"k", reply(kind), T0, max_stale)


ON = LastKnownGoodConfig(zones=("amazonaws.com",), max_age=3600.0, mode="enforce")


@pytest.mark.parametrize("old, new, config, age, expect", [
    (None, "nxdomain", ON, 10, lkg.NONE),
    ("positive", "positive", ON, 10, lkg.NONE),
    ("nxdomain", "nxdomain", ON, 10, lkg.NONE),
    ("nodata", "positive", ON, 10, lkg.NONE),
    ("positive", "nxdomain", ON, 10, lkg.ENFORCE),
    ("positive", "nodata", ON, 10, lkg.ENFORCE),
    ("positive", "nxdomain", ON, 3599, lkg.ENFORCE),
    ("positive", "nxdomain", ON, 3600, lkg.VANISHED),           # max_age reached
    ("positive", "nxdomain", LastKnownGoodConfig(), 10, lkg.VANISHED),  # no zones: counter only
    ("positive", "nxdomain", LastKnownGoodConfig(zones=("com",), mode="shadow"), 10, lkg.SHADOW),
    ("positive", "nxdomain", LastKnownGoodConfig(zones=("",)), 10, lkg.ENFORCE),  # root: everything
    ("positive", "nxdomain", LastKnownGoodConfig(zones=("zonaws.com",)), 10, lkg.VANISHED),  # label boundary
    ("positive", "nxdomain", LastKnownGoodConfig(zones=("eu.amazonaws.com",)), 10, lkg.ENFORCE),
    ("positive", "nxdomain", LastKnownGoodConfig(zones=("www.api.eu.amazonaws.com",)), 10, lkg.VANISHED),
])
def test_verdict(old, new, config, age, expect):
    old_entry = entry(old) if old else None
    assert lkg.LastKnownGood(config).check(old_entry, reply(new), QUESTION, T0 + age) == expect


def test_entry_past_its_stale_window_is_not_defended():
    """Only an entry that can still be served may be defended (else: SERVFAIL, never better)."""
    old = entry(max_stale=0.0)
    assert lkg.LastKnownGood(ON).check(old, reply("nxdomain"), QUESTION, T0 + 61) == lkg.VANISHED


def test_held_error_text():
    e = lkg.LastKnownGoodHeld(entry(), wire.NEGATIVE_NXDOMAIN)
    assert e.reason == "last_known_good"
    assert e.ede_text == b"upstream answered NXDOMAIN; serving last known good records"


@pytest.mark.parametrize("name, zones, expect", [
    ("a.b.c", ("b.c",), True), ("b.c", ("b.c",), True), ("ab.c", ("b.c",), False),
    ("a.b.c", (), False), ("x", ("",), True), ("a.b.c", ("y", "c"), True),
])
def test_in_zones(name, zones, expect):
    assert lkg.in_zones(name, zones) is expect
