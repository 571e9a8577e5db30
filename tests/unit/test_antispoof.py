"""0x20 case randomisation and reply scrubbing (resolver/wire/scrub.py): pure, golden packets via dnslib."""

from __future__ import annotations

import random

import dnslib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver import wire
from resolver.errors import UpstreamBadResponse
from resolver.wire import scrub as antispoof


def question(name: str, qtype: str = "A") -> bytes:
    return wire.name_to_wire(name) + getattr(dnslib.QTYPE, qtype).to_bytes(2, "big") + b"\x00\x01"


def reply(qname: str, qtype: str, answers=(), auth=(), additional=()) -> bytes:
    rec = dnslib.DNSRecord(dnslib.DNSHeader(id=1, qr=1, rd=1, ra=1),
                           q=dnslib.DNSQuestion(qname, getattr(dnslib.QTYPE, qtype)))
    for text in answers:
        rec.add_answer(*(dnslib.RR.fromZone(text) if isinstance(text, str) else [text]))
    for text in auth:
        rec.add_auth(*dnslib.RR.fromZone(text))
    for text in additional:
        rec.add_ar(*dnslib.RR.fromZone(text))
    rec.add_ar(dnslib.EDNS0(udp_len=1232))
    return bytes(rec.pack())


def dname(owner: str, target: str) -> dnslib.RR:
    """dnslib has no DNAME class: the target goes in as raw (never compressed, RFC 6672 §2.5) rdata."""
    return dnslib.RR(owner, 39, rdata=dnslib.RD(wire.name_to_wire(target)), ttl=300)


def answer_texts(data: bytes) -> list[str]:
    rec = dnslib.DNSRecord.parse(data)
    return [f"{rr.rname} {dnslib.QTYPE[rr.rtype]} {rr.rdata}" for rr in rec.rr]


# -- 0x20 ------------------------------------------------------------------------------


def test_randomize_case_changes_only_letter_case():
    q = question("www.example-1.com", "AAAA")
    seen = set()
    for _ in range(200):
        r = antispoof.randomize_case(q)
        assert r.lower() == q.lower() and r[-4:] == q[-4:] and len(r) == len(q)
        seen.add(r)
    assert len(seen) > 150  # 15 letters: 2**15 spellings; 200 draws almost never collide


@given(st.binary(min_size=4, max_size=300))
@settings(max_examples=300, deadline=None)
def test_randomize_case_keeps_non_letters(data):
    r = antispoof.randomize_case(data)
    assert len(r) == len(data) and r[-4:] == data[-4:]
    for a, b in zip(r, data):
        assert a == b or (a ^ 0x20 == b and chr(a).isalpha() and chr(a).isascii())


def test_randomize_case_never_touches_label_lengths():
    """Label lengths are <= 63, below 'A' (65): the name's structure cannot change."""
    q = wire.name_to_wire("a" * 63 + "." + "b" * 63) + b"\x00\x01\x00\x01"
    for _ in range(50):
        r = antispoof.randomize_case(q)
        assert r[0] == 63 and r[64] == 63 and r[-5] == 0


def test_case_matches_is_exact():
    sent = question("wWw.ExAmple.com")
    data = reply("wWw.ExAmple.com", "A")
    assert antispoof.case_matches(data, sent)
    assert not antispoof.case_matches(reply("www.example.com", "A"), sent)


# -- scrubbing ---------------------------------------------------------------------------


def test_clean_reply_is_returned_untouched():
    data = reply("www.test", "A", ["www.test. 300 IN A 192.0.2.1", "www.test. 300 IN A 192.0.2.2"],
                 auth=["test. 300 IN NS ns.test."], additional=["ns.other. 300 IN A 192.0.2.53"])
    out, removed = antispoof.scrub(data, question("www.test"))
    assert out is data and removed == 0


def test_cname_chain_is_kept_in_any_order():
    data = reply("alias.test", "A", ["b.test. 300 IN CNAME c.other.", "alias.test. 300 IN CNAME b.test.",
                                     "c.other. 300 IN A 192.0.2.9"])
    out, removed = antispoof.scrub(data, question("ALIAS.test"))
    assert out is data and removed == 0


def test_unrelated_answer_records_are_removed():
    data = reply("www.test", "A", ["www.test. 300 IN A 192.0.2.1", "evil.example. 86400 IN A 203.0.113.66",
                                   "www.test. 300 IN TXT \"not asked for\"",
                                   "other.test. 300 IN CNAME www.test."])
    out, removed = antispoof.scrub(data, question("www.test"))
    assert removed == 3
    assert answer_texts(out) == ["www.test. A 192.0.2.1"]
    # and the result is a reply the rest of the pipeline accepts and caches
    prepared = wire.parse_reply(out, question("www.test"), min_ttl=0, max_ttl=86400, max_negative_ttl=3600)
    assert prepared.kind == wire.POSITIVE and prepared.ttl == 300


def test_dname_above_the_name_is_kept():
    data = reply("www.a.test", "A", [dname("a.test", "b.test"), "www.a.test. 300 IN CNAME www.b.test.",
                                     "www.b.test. 300 IN A 192.0.2.1", dname("c.test", "d.test")])
    out, removed = antispoof.scrub(data, question("www.a.test"))
    assert removed == 1
    owners = [str(rr.rname) for rr in dnslib.DNSRecord.parse(out).rr]
    assert owners == ["a.test.", "www.a.test.", "www.b.test."]


def test_any_query_keeps_all_types_of_the_name():
    data = reply("www.test", "ANY", ["www.test. 300 IN A 192.0.2.1", "www.test. 300 IN TXT \"x\"",
                                     "elsewhere.test. 300 IN A 192.0.2.2"])
    out, removed = antispoof.scrub(data, question("www.test", "ANY"))
    assert removed == 1 and len(answer_texts(out)) == 2


def test_authority_keeps_zone_records_and_proofs_only():
    data = reply("nx.sub.test", "A",
                 auth=["sub.test. 300 IN SOA ns.sub.test. admin.sub.test. 1 3600 600 86400 60",
                       "test. 300 IN NS ns.test.",
                       "evil.example. 300 IN NS ns.evil.example.",
                       "example. 300 IN SOA ns.example. admin.example. 1 3600 600 86400 60",
                       "nx.sub.test. 300 IN A 203.0.113.66",
                       "a.sub.test. 300 IN NSEC z.sub.test. A"])
    out, removed = antispoof.scrub(data, question("nx.sub.test"))
    assert removed == 3
    auth = [(str(rr.rname), dnslib.QTYPE[rr.rtype]) for rr in dnslib.DNSRecord.parse(out).auth]
    assert auth == [("sub.test.", "SOA"), ("test.", "NS"), ("a.sub.test.", "NSEC")]


def test_scrubbed_reply_keeps_question_case_and_header():
    data = bytearray(reply("WwW.TeSt", "A", ["www.test. 300 IN A 192.0.2.1", "x.example. 300 IN A 192.0.2.2"]))
    data[3] |= 0x10  # CD echoed
    out, removed = antispoof.scrub(bytes(data), question("www.test"))
    assert removed == 1
    assert out[12:12 + len(question("x"))] != b""  # sanity
    assert out[12:12 + len(question("WwW.TeSt"))] == question("WwW.TeSt")
    assert out[:4] == bytes(data[:4])


def test_malformed_records_are_bad_responses():
    good = reply("www.test", "A", ["www.test. 300 IN A 192.0.2.1"])
    q = question("www.test")
    loop = bytearray(good)
    answer_at = 12 + len(q)
    loop[answer_at:answer_at + 2] = (0xC000 | answer_at).to_bytes(2, "big")  # pointer to itself
    for bad in (good[:answer_at + 5], bytes(loop)):
        with pytest.raises(UpstreamBadResponse):
            antispoof.scrub(bad, q)


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_scrub_garbage_after_a_valid_question(tail):
    """Any bytes after a matching question: a reply, or UpstreamBadResponse, nothing else."""
    q = question("www.test")
    data = b"\x00\x01\x81\x80\x00\x01" + bytes(random.Random(len(tail)).getrandbits(8) for _ in range(6)) + q + tail
    try:
        out, removed = antispoof.scrub(data, q)
    except UpstreamBadResponse:
        return
    assert isinstance(out, bytes) and removed >= 0


def test_cname_with_empty_rdata_does_not_break_scrubbing():
    """Found by the atheris harness: a CNAME with RDLENGTH 0 put None into the chain."""
    question = wire.name_to_wire("www.test") + b"\x00\x01\x00\x01"
    header = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x01\x00\x00"  # 1 answer, 1 authority
    empty_cname = b"\xc0\x0c\x00\x05\x00\x01\x00\x00\x01\x2c\x00\x00"
    soa_elsewhere = wire.name_to_wire("other.example") + b"\x00\x06\x00\x01\x00\x00\x01\x2c\x00\x00"
    reply = header + question + empty_cname + soa_elsewhere
    try:
        antispoof.scrub(reply, question)
    except UpstreamBadResponse:
        pass  # a defined error is fine; anything else is a bug


def test_cname_query_keeps_the_whole_chain():
    """A CNAME question's answer may chain on (a → b → c): the second link belongs to the chain too.
    (Found in review: the plain-answer shortcut once skipped reading CNAME targets for CNAME queries.)"""
    data = reply("a.test", "CNAME", ["a.test. 300 IN CNAME b.test.", "b.test. 300 IN CNAME c.test."])
    out, removed = antispoof.scrub(data, question("a.test", "CNAME"))
    assert out is data and removed == 0


def test_cname_query_with_a_looping_target_is_a_bad_response():
    """The CNAME target of a CNAME question is read and checked like any other: a pointer to itself is refused."""
    q = question("a.test", "CNAME")
    header = bytes.fromhex("0001 8180 0001 0001 0000 0000")
    record = b"\xc0\x0c" + bytes.fromhex("0005 0001 0000012c 0002")
    pointer_to_itself = (0xC000 | (len(header) + len(q) + len(record))).to_bytes(2, "big")
    with pytest.raises(UpstreamBadResponse):
        antispoof.scrub(header + q + record + pointer_to_itself, q)


# -- scrubbing against an oracle ------------------------------------------------------

_NAMES = ("a.test", "b.test", "x.a.test", "test", "c.other", "evil.example")
_TARGETS = {"CNAME", "DNAME"}


def _within(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def _record(owner: str, rtype: str, target: str) -> dnslib.RR:
    if rtype == "DNAME":
        return dname(owner, target)
    rdata = {"A": dnslib.A("192.0.2.1"), "AAAA": dnslib.AAAA("2001:db8::1"), "TXT": dnslib.TXT("t"),
             "CNAME": dnslib.CNAME(target), "NS": dnslib.NS(target),
             "NSEC": dnslib.RD(b"\x00\x00\x01\x40"),  # next name ".", bitmap: A
             "SOA": dnslib.SOA(f"ns.{owner}", f"admin.{owner}", (1, 3600, 600, 86400, 60))}[rtype]
    return dnslib.RR(owner, getattr(dnslib.QTYPE, rtype), rdata=rdata, ttl=300)


def _expected(qname: str, qtype: str, answers: list, auth: list) -> tuple[list, list]:
    """The documented rules (module docstring), written independently of antispoof.scrub."""
    chain, grew = {qname}, True
    while grew:
        grew = False
        for owner, rtype, target in answers:
            if rtype == "CNAME" and owner in chain and target not in chain:
                chain.add(target)
                grew = True
    kept_answers = [
        (o, t) for o, t, _ in answers
        if (t == "DNAME" and any(_within(n, o) for n in chain))
        or (t != "DNAME" and o in chain and (t in (qtype, "CNAME", "RRSIG") or qtype == "ANY"))
    ]
    kept_auth = [(o, t) for o, t, _ in auth
                 if t in ("NSEC", "NSEC3", "RRSIG") or (t in ("SOA", "NS", "DS") and any(_within(n, o) for n in chain))]
    return kept_answers, kept_auth


_rr = st.tuples(st.sampled_from(_NAMES), st.sampled_from(["A", "AAAA", "TXT", "CNAME", "DNAME"]),
                st.sampled_from(_NAMES))
_auth_rr = st.tuples(st.sampled_from(_NAMES), st.sampled_from(["SOA", "NS", "A", "NSEC"]), st.sampled_from(_NAMES))


@given(qname=st.sampled_from(_NAMES), qtype=st.sampled_from(["A", "AAAA", "CNAME", "TXT", "ANY"]),
       answers=st.lists(_rr, max_size=6), auth=st.lists(_auth_rr, max_size=4))
@settings(max_examples=400, deadline=None)
def test_scrub_keeps_exactly_what_the_rules_allow(qname, qtype, answers, auth):
    """Any mix of related and unrelated records, CNAME chains and DNAMEs, for any question type:
    scrub keeps exactly the records the documented rules allow, in their order, and returns the
    reply untouched when it removes nothing."""
    rec = dnslib.DNSRecord(dnslib.DNSHeader(id=1, qr=1, rd=1, ra=1),
                           q=dnslib.DNSQuestion(qname, getattr(dnslib.QTYPE, qtype)))
    for owner, rtype, target in answers:
        rec.add_answer(_record(owner, rtype, target))
    for owner, rtype, target in auth:
        rec.add_auth(_record(owner, rtype, target))
    data = bytes(rec.pack())
    out, removed = antispoof.scrub(data, question(qname, qtype))
    parsed = dnslib.DNSRecord.parse(out)
    got_answers = [(str(rr.rname).rstrip("."), dnslib.QTYPE[rr.rtype]) for rr in parsed.rr]
    got_auth = [(str(rr.rname).rstrip("."), dnslib.QTYPE[rr.rtype]) for rr in parsed.auth]
    want_answers, want_auth = _expected(qname, qtype, answers, auth)
    assert (got_answers, got_auth) == (want_answers, want_auth)
    assert removed == len(answers) + len(auth) - len(want_answers) - len(want_auth)
    if not removed:
        assert out is data
