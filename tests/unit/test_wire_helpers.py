"""The one-of-each helpers in resolver.wire (issue 15 item 6): names, zones, types, the
cache-key readers, header flags and TCP framing, checked against the forms the code
used to write by hand and against dnslib.  The package split keeps `wire.x` working."""

from __future__ import annotations

import ast
import importlib
import struct
from pathlib import Path

import pytest
from dnslib import DNSRecord

from resolver import wire
from resolver.errors import DropQuery, FormatError

# By import path: ``resolver.wire.render`` the attribute is the function (re-exported), not the module.
constants, framing, names, query, render, reply = (
    importlib.import_module(f"resolver.wire.{m}")
    for m in ("constants", "framing", "names", "query", "render", "reply"))

PACKAGE = Path(wire.__file__).resolve().parents[1]


def n(text: str) -> bytes:
    return wire.name_to_wire(text)


# ------------------------------------------------------------------ the package split
@pytest.mark.parametrize("module", [constants, framing, names, query, render, reply])
def test_every_public_name_of_a_submodule_is_reexported(module):
    public = [k for k in vars(module) if not k.startswith("_") and k.isidentifier()
              and getattr(vars(module)[k], "__module__", module.__name__) == module.__name__
              and not isinstance(vars(module)[k], type(ast))]
    assert len(public) >= 3
    for name in public:
        if name in ("annotations", "struct", "re"):
            continue
        assert getattr(wire, name) is getattr(module, name), name


def test_the_wire_modules_import_no_sibling_in_a_cycle():
    """constants ← names ← render ← query; reply needs names and constants only."""
    for mod, forbidden in [(constants, {"names", "query", "reply", "render", "framing"}),
                           (names, {"query", "reply", "render"}), (render, {"query", "reply"}),
                           (framing, {"constants", "names", "query", "reply", "render"})]:
        tree = ast.parse(Path(mod.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
        assert not imported & forbidden, (mod.__name__, imported & forbidden)


# ------------------------------------------------------------------ names
@pytest.mark.parametrize("text, expect", [
    ("printer.lan", b"\x07printer\x03lan\x00"), ("Printer.LAN.", b"\x07printer\x03lan\x00"),
    (".", b"\x00"), ("_dmarc.example", b"\x06_dmarc\x07example\x00"), ("a-b.c", b"\x03a-b\x01c\x00"),
])
def test_parse_name_accepts_typed_names(text, expect):
    assert wire.parse_name(text) == expect


@pytest.mark.parametrize("text", ["", "  ", "a..b", ".x", "-a.b", "a-.b", "*.b", "a b", "café.com",
                                  "a" * 64 + ".b", ".".join(["abcdefghi"] * 30), None, 5])
def test_parse_name_refuses_what_cannot_be_a_typed_host_name(text):
    with pytest.raises(ValueError):
        wire.parse_name(text)


def test_parse_name_as_asked_also_takes_wildcards_and_outer_hyphens_but_nothing_else():
    assert wire.parse_name("*.Example.com", as_asked=True) == b"\x01*\x07example\x03com\x00"
    assert wire.parse_name("-x-.test", as_asked=True) == b"\x03-x-\x04test\x00"
    for bad in ["a..b", "a b.test", "a+b.test", "x\x00", "a" * 64 + ".b", "é.test"]:
        with pytest.raises(ValueError):
            wire.parse_name(bad, as_asked=True)


def test_parse_name_message_names_what_was_wrong():
    with pytest.raises(ValueError, match=r"invalid zone 'a\.\.b': label '' must be 1-63"):
        wire.parse_name("a..b", "zone")


@pytest.mark.parametrize("name, zone, expect", [
    ("a.b.c", "b.c", True), ("b.c", "b.c", True), ("ab.c", "b.c", False), ("b.c", "a.b.c", False),
    ("x", ".", True), ("c", "b.c", False),
])
def test_in_zone_is_label_aligned(name, zone, expect):
    assert wire.in_zone(n(name), n(zone)) is expect


def test_zone_of_finds_the_longest_zone_and_the_root():
    zones = {n("b.c"), n("a.b.c"), n("z")}
    assert wire.zone_of(n("x.a.b.c"), zones) == n("a.b.c")
    assert wire.zone_of(n("x.b.c"), zones) == n("b.c")
    assert wire.zone_of(n("xb.c"), zones) is None
    assert wire.zone_of(n("anything"), {b"\x00"}) == b"\x00"  # last_known_good's "" = every name
    assert wire.zone_of(n("b.c"), {n("b.c"): "pool"}) == n("b.c")  # dicts too (routing)


def test_zone_to_wire_reads_the_configs_text_form():
    assert wire.zone_to_wire("Example.COM") == n("example.com")
    assert wire.zone_to_wire("") == b"\x00"


# ------------------------------------------------------------------ record types
@pytest.mark.parametrize("text, expect", [
    ("A", 1), ("aaaa", 28), ("TYPE65", 65), ("65", 65), ("https", 65), ("00001", 1),
])
def test_qtype_from_text(text, expect):
    assert wire.qtype_from_text(text) == expect


@pytest.mark.parametrize("text", ["NOPE", "0", "70000", "TYPE99999999999", "", "A;B", "__class__", "²",
                                  "TYPE", "REVERSE", "forward", " mx"])
def test_qtype_from_text_refuses(text):
    with pytest.raises(ValueError):
        wire.qtype_from_text(text)


def test_qtype_to_text():
    assert (wire.qtype_to_text(28), wire.qtype_to_text(65280)) == ("AAAA", "TYPE65280")


def test_type_constants_agree_with_dnslib():
    from dnslib import QTYPE
    for name in ("A", "NS", "CNAME", "SOA", "PTR", "TXT", "AAAA", "DNAME", "OPT", "DS", "RRSIG", "NSEC",
                 "NSEC3", "IXFR", "AXFR", "ANY"):
        assert getattr(wire, f"TYPE_{name}") == getattr(QTYPE, name), name


# ------------------------------------------------------------------ cache-key layout
@pytest.mark.parametrize("qtype", [1, 65, 28])
@pytest.mark.parametrize("docd", range(4))
def test_key_readers_invert_question_key(qtype, docd):
    question = wire.question_bytes(b"\x03WwW\x04test\x00", qtype)
    key = wire.question_key(question, docd)
    assert wire.key_question(key) == question.lower()[:-4] + question[-4:]
    assert wire.key_name(key) == b"\x03www\x04test\x00"
    assert wire.key_flags(key) & (wire.KEY_DO | wire.KEY_CD) == docd
    assert bool(wire.key_flags(key) & wire.KEY_EXACT_TAIL) == (qtype == 65)


def test_key_flags_of_the_root_question():
    key = wire.question_key(b"\x00\x00\x02\x00\x01", 0)
    assert (wire.key_flags(key), wire.key_name(key)) == (0, b"\x00")


def test_question_bytes():
    assert wire.question_bytes(n("a.b"), 28) == n("a.b") + b"\x00\x1c\x00\x01"
    assert wire.question_bytes(n("a.b"), 16, 3) == n("a.b") + b"\x00\x10\x00\x03"


# ------------------------------------------------------------------ header flags
def test_reply_flags_are_the_bytes_each_caller_wrote_by_hand():
    assert wire.reply_flags(wire.NOERROR) == b"\x81\x80"  # parse_reply, Chase.merge: QR RD, RA
    assert wire.reply_flags(wire.NXDOMAIN, cd=True, aa=True) == b"\x85\x93"  # local answers
    assert wire.reply_flags(wire.SERVFAIL) == bytes((0x81, 0x80 | 2))  # pipeline's cached SERVFAIL
    assert wire.reply_flags(wire.NOERROR, tc=True, opcode_rd=0x79) == b"\xfb\x80"  # slip: client bits + TC
    assert wire.reply_flags(wire.BADVERS) == b"\x81\x80"  # the high bits go in the OPT record
    assert wire.query_flags() == b"\x01\x00" and wire.query_flags(cd=True) == b"\x01\x10"


def test_reply_flags_read_back_by_dnslib():
    data = b"\x12\x34" + wire.reply_flags(wire.REFUSED, cd=True, aa=True) + wire.header_counts(0, 0, 0, 0)
    h = DNSRecord.parse(data).header
    assert (h.qr, h.aa, h.tc, h.rd, h.ra, h.cd, h.ad, h.rcode) == (1, 1, 0, 1, 1, 1, 0, 5)


def test_failure_prepared_is_a_header_only_servfail():
    p = wire.failure_prepared(wire.SERVFAIL, 5)
    assert (p.kind, p.rcode, p.ttl, p.body, p.ttl_offsets, p.tc) == (wire.FAILURE, 2, 5, b"", (), False)
    assert p.hdr == b"\x81\x82\x00\x01\x00\x00\x00\x00\x00\x00"
    assert p.hdr_opt == p.hdr[:-1] + b"\x01"


def test_slip_reply_uses_the_shared_flags():
    from resolver.serve.ratelimit import slip_reply
    data = bytes(DNSRecord.question("www.test", "A").pack())
    out = slip_reply(data)
    h = DNSRecord.parse(out).header
    assert (h.qr, h.tc, h.rd, h.ra, h.rcode, h.a, h.auth, h.ar) == (1, 1, 1, 1, 0, 0, 0, 0)


# ------------------------------------------------------------------ framing (RFC 1035 §4.2.2)
def test_frame_and_frame_length():
    message = b"\x00" * 300
    framed = wire.frame(message)
    assert framed[:wire.PREFIX_LEN] == b"\x01\x2c" and framed[2:] == message
    assert wire.frame_length(framed[:2]) == 300
    assert wire.frame(b"") == b"\x00\x00"
    assert wire.frame_length(wire.frame(b"x" * wire.MAX_MESSAGE)[:2]) == 65535
    with pytest.raises(struct.error):
        wire.frame(b"x" * (wire.MAX_MESSAGE + 1))


# ------------------------------------------------------------------ one of each, enforced
def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), path.read_text()


def test_the_tcp_length_prefix_is_written_only_in_wire_framing():
    for rel, text in _sources():
        if rel != "wire/framing.py":
            assert 'pack(">H", len(' not in text and "readexactly(2)" not in text, rel


def test_record_type_numbers_are_defined_only_in_wire_constants():
    for rel, text in _sources():
        if rel == "wire/constants.py":
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Assign):
                targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
                targets += [e.id for t in node.targets if isinstance(t, ast.Tuple) for e in t.elts
                            if isinstance(e, ast.Name)]
                assert not [t for t in targets if t.lstrip("_").startswith("TYPE_")
                            and isinstance(node.value, (ast.Constant, ast.Tuple))], (rel, targets)


def test_parse_query_still_raises_through_the_package():
    with pytest.raises(DropQuery):
        wire.parse_query(b"\x00")
    with pytest.raises(FormatError):
        wire.parse_query(b"\x00\x01\x01\x00\x00\x02" + bytes(6))
