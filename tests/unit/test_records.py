"""records.py: names, zones and static records parsed from text, with messages for people."""

from __future__ import annotations

import ipaddress

import pytest

from resolver import wire
from resolver.wire.records import TYPES, Record, parse_name, parse_record, parse_zone, reverse_name


@pytest.mark.parametrize("text, expected", [
    ("printer.lan", "printer.lan."), ("Printer.LAN.", "printer.lan."), ("_dmarc.example", "_dmarc.example."),
    ("a-b.c", "a-b.c."), (".", "."),
])
def test_parse_name(text, expected):
    assert wire.name_to_text(parse_name(text)) == expected


@pytest.mark.parametrize("text", ["", "  ", "a..b", "*.lan", "-a.lan", "a b", "ü.lan", "a" * 64 + ".lan",
                                  ".".join(["a" * 60] * 5), 5, None])
def test_parse_name_refuses(text):
    with pytest.raises(ValueError):
        parse_name(text)


def test_root_zone_refused():
    with pytest.raises(ValueError, match="root zone"):
        parse_zone(".")


def test_reverse_name():
    assert reverse_name(ipaddress.ip_address("192.0.2.10")) == wire.name_to_wire("10.2.0.192.in-addr.arpa")
    assert wire.name_to_text(reverse_name(ipaddress.ip_address("2001:db8::1"))).endswith(".8.b.d.0.1.0.0.2.ip6.arpa.")


@pytest.mark.parametrize("text, rtype, ttl, rdata", [
    ("printer.lan. 300 IN A 192.0.2.10", "A", 300, bytes((192, 0, 2, 10))),
    ("printer.lan 300 A 192.0.2.10", "A", 300, bytes((192, 0, 2, 10))),
    ("v6.lan 60 in AAAA 2001:db8::1", "AAAA", 60, ipaddress.ip_address("2001:db8::1").packed),
    ("a.lan 0 CNAME Printer.Lan.", "CNAME", 0, wire.name_to_wire("printer.lan")),
    ("10.2.0.192.in-addr.arpa. 300 PTR printer.lan", "PTR", 300, wire.name_to_wire("printer.lan")),
    ('t.lan 5 TXT "hello  world" "x"', "TXT", 5, b"\x0chello  world\x01x"),
    ('t.lan 5 TXT "say \\"hi\\""', "TXT", 5, b'\x08say "hi"'),
    ("t.lan 5 TXT bare words", "TXT", 5, b"\x0abare words"),
])
def test_parse_record(text, rtype, ttl, rdata):
    assert parse_record(text) == Record(parse_name(text.split()[0]), TYPES[rtype], ttl, rdata)


@pytest.mark.parametrize("text, problem", [
    ("printer.lan A 192.0.2.1", "expected '<name> <ttl>"),
    ("printer.lan 300", "expected '<name> <ttl>"),
    ("printer.lan soon A 192.0.2.1", "expected a TTL"),
    ("printer.lan -5 A 192.0.2.1", "expected a TTL"),
    ("printer.lan 4294967296 A 192.0.2.1", "RFC 2181"),
    ("printer.lan 300 A 2001:db8::1", "expected an IPv4 address"),
    ("printer.lan 300 AAAA 192.0.2.1", "expected an IPv6 address"),
    ("printer.lan 300 A printer", "expected an IPv4 address"),
    ("printer.lan 300 MX 10 mail.lan", "unsupported type 'MX'"),
    ("*.lan 300 A 192.0.2.1", "no wildcards"),
    ("a.lan 300 CNAME b..lan", "invalid target name"),
    ('t.lan 5 TXT "unterminated', "quoted strings"),
    ("t.lan 5 TXT " + '"' + "x" * 256 + '"', "longer than 255"),
    (42, "expected a record"),
    (["a.lan 1 A 192.0.2.1"], "expected a record"),
])
def test_parse_record_refuses_with_a_clear_message(text, problem):
    with pytest.raises(ValueError) as info:
        parse_record(text)
    assert problem in str(info.value)
