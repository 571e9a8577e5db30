"""Unit tests for resolver.wire: pure bytes in / bytes out, checked against dnslib."""

from __future__ import annotations

import struct

import dnslib
import pytest
from dnslib import AAAA, CLASS, EDNS0, QTYPE, RR, SOA, TXT, A, DNSHeader, DNSQuestion, DNSRecord

from resolver import wire
from resolver.errors import DropQuery, FormatError, UpstreamBadResponse
from tests.support.packets import upstream_reply

TTLS = dict(min_ttl=0, max_ttl=86_400, max_negative_ttl=3_600)


# ----------------------------------------------------------------- helpers
def query(name="www.example.com", qtype="A", *, qid=0x1234, edns=False, do=False, udp=4096,
          cd=False, rd=True, version=0) -> bytes:
    if isinstance(qtype, str):
        q = DNSRecord.question(name, qtype)
    else:
        q = DNSRecord(q=DNSQuestion(name, qtype))
    q.header.id = qid
    q.header.rd = int(rd)
    q.header.cd = int(cd)
    if edns:
        q.add_ar(EDNS0(udp_len=udp, flags="do" if do else "", version=version))
    return bytes(q.pack())


def header(qid=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack(">HHHHHH", qid, flags, qd, an, ns, ar)


def question_bytes(name="www.example.com", qtype=1, qclass=1) -> bytes:
    return wire.name_to_wire(name) + struct.pack(">HH", qtype, qclass)


def a_rr(name="www.example.com", ip="192.0.2.1", ttl=300):
    return RR(name, QTYPE.A, rdata=A(ip), ttl=ttl)


def soa_rr(name="example.com", ttl=900, minimum=600):
    return RR(name, QTYPE.SOA, rdata=SOA("ns.example.com", "host.example.com", (1, 7200, 900, 86400, minimum)),
              ttl=ttl)


def prepared_message(p: wire.Prepared, question: bytes, qid=b"\x00\x01", body=None, opt=False) -> DNSRecord:
    """Reassemble a Prepared answer into a full message and parse it with dnslib."""
    hdr = p.hdr_opt if opt else p.hdr
    msg = qid + hdr + question + (p.body if body is None else body)
    if opt:
        msg += wire.opt_record(1232, False)
    return DNSRecord.parse(msg)


def all_rrs(rec: DNSRecord):
    return [rr for rr in (*rec.rr, *rec.auth, *rec.ar) if rr.rtype != QTYPE.OPT]


def q_of(name="www.example.com", qtype=QTYPE.A) -> bytes:
    """The lower-cased question we would send upstream."""
    return question_bytes(name.lower(), qtype)


# --------------------------------------------------------------- parse_query
def test_parse_query_plain_fields():
    data = query("www.example.com", "A")
    q = wire.parse_query(data)
    assert q.data is data
    assert q.id == b"\x12\x34"
    assert q.rd == 1 and not q.cd
    assert not q.edns and not q.do and q.udp_size == 512
    assert (q.qtype, q.qclass) == (1, 1)
    assert q.qend == len(data)
    assert q.question == data[12:] == question_bytes("www.example.com")
    assert q.qname == wire.name_to_wire("www.example.com")
    assert wire.name_to_text(q.qname) == "www.example.com."
    assert q.key == question_bytes("www.example.com")


def test_parse_query_with_edns_do():
    data = query(edns=True, do=True, udp=4096)
    q = wire.parse_query(data)
    assert q.edns and q.do and q.udp_size == 4096
    assert q.qend == 12 + len(question_bytes())
    assert q.question == question_bytes()


def test_parse_query_with_edns_without_do():
    q = wire.parse_query(query(edns=True, do=False, udp=1232))
    assert q.edns and not q.do and q.udp_size == 1232


def test_parse_query_small_edns_size_is_raised_to_512():
    q = wire.parse_query(query(edns=True, udp=100))
    assert q.udp_size == 512


def test_parse_query_cd_and_rd_bits():
    q = wire.parse_query(query(cd=True, rd=False))
    assert q.cd and not q.rd


@pytest.mark.parametrize("qtype,num", [("AAAA", 28), ("TXT", 16), ("MX", 15), ("CAA", 257)])
def test_parse_query_qtype(qtype, num):
    assert wire.parse_query(query(qtype=qtype)).qtype == num


def test_key_is_case_insensitive_for_the_name():
    a = wire.parse_query(query("WwW.Example.COM"))
    b = wire.parse_query(query("www.example.com"))
    assert a.key == b.key
    assert a.question != b.question  # the client's spelling is kept for the reply
    assert wire.name_to_text(a.qname) == "WwW.Example.COM."


def test_do_and_cd_give_different_keys():
    keys = {
        wire.parse_query(query(edns=True, do=do, cd=cd)).key
        for do in (False, True) for cd in (False, True)
    }
    assert len(keys) == 4
    # EDNS without DO shares the key of a plain query: only DO matters, not the OPT
    assert wire.parse_query(query(edns=True, do=False)).key == wire.parse_query(query()).key


def test_https_and_type_97_keys_differ():
    https = wire.parse_query(query("www.example.com", 65))
    t97 = wire.parse_query(query("www.example.com", 97))
    assert https.qtype == 65 and t97.qtype == 97
    assert https.key != t97.key
    # ... yet the name part is still case-insensitive for them
    assert wire.parse_query(query("WWW.example.com", 65)).key == https.key
    assert wire.parse_query(query("WWW.example.com", 97)).key == t97.key
    # and the DO/CD variants of a marked key stay distinct
    assert wire.parse_query(query("www.example.com", 65, edns=True, do=True)).key != https.key


def test_marked_key_cannot_equal_a_plain_key():
    plain = {wire.parse_query(query("www.example.com", t, edns=True, do=do, cd=cd)).key
             for t in (1, 28, 64, 66) for do in (0, 1) for cd in (0, 1)}
    marked = {wire.parse_query(query("www.example.com", t, edns=True, do=do, cd=cd)).key
              for t in (65, 97, 90, 122) for do in (0, 1) for cd in (0, 1)}
    assert len(plain) == 16 and len(marked) == 16 and not plain & marked


# ---------------------------------------------------------- parse_query: bad
@pytest.mark.parametrize("n", range(12))
def test_short_datagram_is_dropped(n):
    with pytest.raises(DropQuery):
        wire.parse_query(query()[:n])


def test_response_is_dropped():
    data = bytearray(query())
    data[2] |= 0x80
    with pytest.raises(DropQuery):
        wire.parse_query(bytes(data))


@pytest.mark.parametrize("qd", [0, 2])
def test_qdcount_not_one_is_formerr(qd):
    body = question_bytes() * qd
    with pytest.raises(FormatError) as ei:
        wire.parse_query(header(qd=qd) + body)
    assert ei.value.rcode == wire.FORMERR
    assert ei.value.question_end == 0


def test_opcode_status_is_notimp_with_question():
    data = header(flags=(2 << 11) | 0x0100) + question_bytes()
    with pytest.raises(FormatError) as ei:
        wire.parse_query(data)
    assert ei.value.rcode == wire.NOTIMP
    assert ei.value.question_end == len(data)


@pytest.mark.parametrize("name", [
    b"\xc0\x0c",                    # pointer to the header (and to itself: a loop)
    b"\x03www\xc0\x0c",             # label then a pointer back to the start: a loop
    b"\x03www\xc0\x12",             # forward pointer
    b"\x03www\x40",                 # extended label type 01
    b"\x03www\x80\x00",             # reserved label type 10
])
def test_compressed_or_extended_question_name_is_formerr(name):
    with pytest.raises(FormatError) as ei:
        wire.parse_query(header() + name + b"\x00\x01\x00\x01")
    assert ei.value.rcode == wire.FORMERR


def test_name_of_255_octets_is_accepted_256_is_not():
    ok = b"\x3f" + b"a" * 63
    name255 = ok * 3 + b"\x3d" + b"b" * 61 + b"\x00"
    assert len(name255) == 255
    assert wire.parse_query(header() + name255 + b"\x00\x01\x00\x01").qend == 12 + 255 + 4
    name256 = ok * 3 + b"\x3e" + b"b" * 62 + b"\x00"
    assert len(name256) == 256
    with pytest.raises(FormatError):
        wire.parse_query(header() + name256 + b"\x00\x01\x00\x01")


def test_very_long_name_is_formerr():
    name = (b"\x3f" + b"a" * 63) * 5 + b"\x00"
    with pytest.raises(FormatError):
        wire.parse_query(header() + name + b"\x00\x01\x00\x01")


@pytest.mark.parametrize("cut", [0, 1, 2, 3])
def test_truncated_type_class_is_formerr(cut):
    data = header() + wire.name_to_wire("www.example.com") + b"\x00\x01\x00\x01"[:cut]
    with pytest.raises(FormatError) as ei:
        wire.parse_query(data)
    assert ei.value.rcode == wire.FORMERR


def test_name_running_past_the_end_is_formerr():
    with pytest.raises(FormatError):
        wire.parse_query(header() + b"\x03ww")
    with pytest.raises(FormatError):
        wire.parse_query(header() + b"\x03www")


def test_edns_version_1_is_badvers():
    data = query(edns=True, version=1)
    with pytest.raises(FormatError) as ei:
        wire.parse_query(data)
    assert ei.value.rcode == wire.BADVERS == 16
    assert ei.value.question_end == 12 + len(question_bytes())


def test_two_opt_records_are_formerr():
    data = header(ar=2) + question_bytes() + wire.opt_record(1232, False) * 2
    with pytest.raises(FormatError) as ei:
        wire.parse_query(data)
    assert ei.value.rcode == wire.FORMERR
    assert ei.value.question_end == 12 + len(question_bytes())


def test_opt_with_non_root_owner_is_formerr():
    opt = b"\x01a" + wire.opt_record(1232, False)  # owner "a." instead of the root
    with pytest.raises(FormatError):
        wire.parse_query(header(ar=1) + question_bytes() + opt)


@pytest.mark.parametrize("edns", [False, True])
def test_trailing_garbage_is_formerr(edns):
    data = query(edns=edns) + b"\x00"
    with pytest.raises(FormatError) as ei:
        wire.parse_query(data)
    assert ei.value.rcode == wire.FORMERR
    assert ei.value.question_end == 12 + len(question_bytes())


@pytest.mark.parametrize("an,ns", [(1, 0), (0, 1)])
def test_answer_or_authority_records_in_a_query_are_formerr(an, ns):
    rr = wire.name_to_wire("www.example.com") + struct.pack(">HHIH", 1, 1, 60, 4) + b"\x01\x02\x03\x04"
    with pytest.raises(FormatError) as ei:
        wire.parse_query(header(an=an, ns=ns) + question_bytes() + rr)
    assert ei.value.rcode == wire.FORMERR
    assert ei.value.question_end == 12 + len(question_bytes())


@pytest.mark.parametrize("cut", [1, 5, 10, 11 - 1])
def test_truncated_opt_is_formerr(cut):
    data = query(edns=True)
    with pytest.raises(FormatError):
        wire.parse_query(data[:-cut])


def test_arcount_larger_than_records_is_formerr():
    data = bytearray(query(edns=True))
    data[11] = 2
    with pytest.raises(FormatError):
        wire.parse_query(bytes(data))


def test_non_opt_additional_record_is_accepted_without_edns():
    rr = wire.name_to_wire("x") + struct.pack(">HHIH", 1, 1, 60, 4) + b"\x01\x02\x03\x04"
    q = wire.parse_query(header(ar=1) + question_bytes() + rr)
    assert not q.edns and q.udp_size == 512


# --------------------------------------------------------------- error_reply
def test_error_reply_echoes_id_question_rd_cd_never_aa():
    data = bytearray(query("WwW.Example.com", edns=False, cd=True))
    data[2] |= 0x04  # a client setting AA must not get it back
    data = bytes(data)
    out = wire.error_reply(data, wire.FORMERR, 12 + len(question_bytes()))
    rec = DNSRecord.parse(out)
    assert out[:2] == data[:2]
    assert rec.header.qr == 1 and rec.header.aa == 0
    assert rec.header.rd == 1 and rec.header.cd == 1
    assert rec.header.rcode == wire.FORMERR
    assert len(rec.questions) == 1 and str(rec.q.qname) == "WwW.Example.com."
    assert out[12:] == data[12:]  # exact question bytes, no OPT
    assert not rec.ar


def test_error_reply_rd_zero_and_cd_zero_are_echoed():
    data = query(rd=False, cd=False)
    rec = DNSRecord.parse(wire.error_reply(data, wire.REFUSED, len(data)))
    assert rec.header.rd == 0 and rec.header.cd == 0 and rec.header.rcode == wire.REFUSED


def test_error_reply_without_question():
    data = header(qd=0)
    out = wire.error_reply(data, wire.FORMERR)
    rec = DNSRecord.parse(out)
    assert rec.header.q == 0 and rec.header.rcode == wire.FORMERR and len(out) == 12


def test_error_reply_notimp_echoes_opcode():
    data = header(flags=(2 << 11) | 0x0100) + question_bytes()
    out = wire.error_reply(data, wire.NOTIMP, len(data))
    rec = DNSRecord.parse(out)
    assert rec.header.opcode == 2 and rec.header.rcode == wire.NOTIMP and rec.header.aa == 0


def test_badvers_reply_has_opt_with_extended_rcode():
    data = query(edns=True, version=1)
    qend = 12 + len(question_bytes())
    out = wire.error_reply(data, wire.BADVERS, qend, edns=True, udp_size=1232)
    rec = DNSRecord.parse(out)
    assert rec.header.rcode == 0  # low 4 bits of 16
    assert len(rec.ar) == 1 and rec.ar[0].rtype == QTYPE.OPT
    opt = rec.ar[0]
    assert opt.ttl >> 24 == 1  # extended rcode: (1 << 4) | 0 == 16
    assert (opt.ttl >> 16) & 0xFF == 0  # we speak version 0
    assert opt.rclass == 1232
    assert out[12:qend] == data[12:qend]


def test_badvers_without_edns_flag_still_gets_opt():
    data = query(edns=True, version=1)
    rec = DNSRecord.parse(wire.error_reply(data, wire.BADVERS, 12 + len(question_bytes())))
    assert len(rec.ar) == 1 and rec.ar[0].ttl >> 24 == 1


def test_servfail_error_reply_with_ede():
    data = query(edns=True)
    out = wire.error_reply(data, wire.SERVFAIL, 12 + len(question_bytes()), edns=True,
                           ede=wire.ede_option(wire.EDE_NETWORK_ERROR))
    rec = DNSRecord.parse(out)
    assert rec.header.rcode == wire.SERVFAIL
    opts = rec.ar[0].rdata
    assert [(o.code, o.data) for o in opts] == [(15, struct.pack(">H", 23))]


# ------------------------------------------------------- build_upstream_query
@pytest.mark.parametrize("cd,do,size", [(False, False, 1232), (True, True, 4096), (False, True, 512)])
def test_build_upstream_query(cd, do, size):
    question = question_bytes("www.example.com", 28)
    out = wire.build_upstream_query(0xBEEF, question, cd, do, size)
    rec = DNSRecord.parse(out)
    assert rec.header.id == 0xBEEF
    assert rec.header.qr == 0 and rec.header.opcode == 0
    assert rec.header.rd == 1 and rec.header.cd == int(cd)
    assert len(rec.questions) == 1
    assert str(rec.q.qname) == "www.example.com." and rec.q.qtype == 28 and rec.q.qclass == 1
    assert not rec.rr and not rec.auth
    assert len(rec.ar) == 1 and rec.ar[0].rtype == QTYPE.OPT
    assert rec.ar[0].rclass == size
    assert bool(rec.ar[0].ttl & 0x8000) == do
    assert out[12 : 12 + len(question)] == question
    # and our own parser takes it as a valid query
    q = wire.parse_query(out)
    assert q.edns and q.do == do and q.udp_size == size


# --------------------------------------------------------------- parse_reply
def test_positive_reply_ttl_is_min_answer_ttl():
    reply = upstream_reply(answers=[a_rr(ttl=300), a_rr(ip="192.0.2.2", ttl=100)])
    p = wire.parse_reply(reply, q_of(), **TTLS)
    assert p.kind == wire.POSITIVE and p.rcode == 0 and p.ttl == 100 and not p.tc
    rec = prepared_message(p, q_of())
    assert [rr.ttl for rr in rec.rr] == [300, 100]
    assert [str(rr.rdata) for rr in rec.rr] == ["192.0.2.1", "192.0.2.2"]


@pytest.mark.parametrize("min_ttl,max_ttl,expect_entry,expect_rrs", [
    (0, 86400, 100, [300, 100]),
    (200, 86400, 200, [300, 200]),   # min_ttl raises short TTLs
    (0, 50, 50, [50, 50]),           # max_ttl caps long ones
    (150, 250, 150, [250, 150]),
])
def test_positive_reply_ttl_caps(min_ttl, max_ttl, expect_entry, expect_rrs):
    reply = upstream_reply(answers=[a_rr(ttl=300), a_rr(ip="192.0.2.2", ttl=100)])
    p = wire.parse_reply(reply, q_of(), min_ttl=min_ttl, max_ttl=max_ttl, max_negative_ttl=3600)
    assert p.ttl == expect_entry
    assert [rr.ttl for rr in prepared_message(p, q_of()).rr] == expect_rrs


def test_ttl_with_high_bit_is_zero():
    reply = upstream_reply(answers=[a_rr(ttl=0x80000001)])
    p = wire.parse_reply(reply, q_of(), **TTLS)
    assert p.ttl == 0
    assert prepared_message(p, q_of()).rr[0].ttl == 0


@pytest.mark.parametrize("soa_ttl,soa_min,max_neg,expect", [
    (900, 600, 3600, 600),     # SOA MINIMUM is lower
    (300, 600, 3600, 300),     # SOA TTL is lower
    (900, 600, 60, 60),        # capped by max_negative_ttl
    (0, 600, 3600, 0),
    (0x80000005, 600, 3600, 0),  # high-bit SOA TTL is 0 (RFC 2181 §8), not a huge number
])
def test_nxdomain_with_soa(soa_ttl, soa_min, max_neg, expect):
    reply = upstream_reply(rcode=3, auth=[soa_rr(ttl=soa_ttl, minimum=soa_min)])
    p = wire.parse_reply(reply, q_of(), min_ttl=0, max_ttl=86400, max_negative_ttl=max_neg)
    assert p.kind == wire.NEGATIVE_NXDOMAIN and p.rcode == 3 and p.ttl == expect
    rec = prepared_message(p, q_of())
    assert rec.header.rcode == 3
    assert len(rec.auth) == 1 and rec.auth[0].rtype == QTYPE.SOA
    assert rec.auth[0].ttl == expect  # the SOA carries the negative TTL


def test_nxdomain_min_ttl_does_not_apply_to_negative_ttl():
    reply = upstream_reply(rcode=3, auth=[soa_rr(ttl=30, minimum=30)])
    p = wire.parse_reply(reply, q_of(), min_ttl=300, max_ttl=86400, max_negative_ttl=3600)
    assert p.ttl == 30


def test_nodata_with_soa():
    reply = upstream_reply(auth=[soa_rr(ttl=120, minimum=600)])
    p = wire.parse_reply(reply, q_of(), **TTLS)
    assert p.kind == wire.NODATA and p.rcode == 0 and p.ttl == 120
    assert prepared_message(p, q_of()).auth[0].ttl == 120


def test_nodata_without_soa_is_not_cacheable():
    p = wire.parse_reply(upstream_reply(), q_of(), **TTLS)
    assert p.kind == wire.NODATA and p.ttl == 0 and p.body == b""


def test_nxdomain_without_soa_is_not_cacheable():
    p = wire.parse_reply(upstream_reply(rcode=3), q_of(), **TTLS)
    assert p.kind == wire.NEGATIVE_NXDOMAIN and p.ttl == 0


def test_nxdomain_cname_chain_keeps_answer_records():
    reply = upstream_reply(rcode=3, answers=[RR("www.example.com", QTYPE.CNAME, rdata=dnslib.CNAME("gone.example.com"),
                                                 ttl=500)], auth=[soa_rr(ttl=900, minimum=60)])
    p = wire.parse_reply(reply, q_of(), **TTLS)
    assert p.kind == wire.NEGATIVE_NXDOMAIN and p.ttl == 60
    rec = prepared_message(p, q_of())
    assert rec.rr[0].ttl == 500 and rec.auth[0].ttl == 60


@pytest.mark.parametrize("rcode", [2, 5, 4, 9])
def test_failure_rcodes(rcode):
    p = wire.parse_reply(upstream_reply(rcode=rcode, answers=[a_rr()] if rcode == 9 else ()), q_of(), **TTLS)
    assert p.kind == wire.FAILURE and p.rcode == rcode and p.ttl == 0
    assert p.hdr[1] & 0x0F == rcode


def test_opt_removed_from_body_and_arcount():
    reply = upstream_reply(answers=[a_rr()], additional=[a_rr("ns.example.com", ttl=50)], edns=True)
    assert struct.unpack_from(">H", reply, 10)[0] == 2
    p = wire.parse_reply(reply, q_of(), **TTLS)
    assert struct.unpack_from(">HHHH", p.hdr, 2) == (1, 1, 0, 1)
    assert struct.unpack_from(">HHHH", p.hdr_opt, 2) == (1, 1, 0, 2)
    assert p.hdr[:2] == p.hdr_opt[:2]
    rec = prepared_message(p, q_of())
    assert [rr.rtype for rr in rec.ar] == [QTYPE.A]
    rec_opt = prepared_message(p, q_of(), opt=True)
    assert [rr.rtype for rr in rec_opt.ar] == [QTYPE.A, QTYPE.OPT]


def test_reply_without_opt_keeps_arcount():
    reply = upstream_reply(answers=[a_rr()], edns=False)
    p = wire.parse_reply(reply, q_of(), **TTLS)
    assert struct.unpack_from(">HHHH", p.hdr, 2) == (1, 1, 0, 0)
    assert p.body == reply[12 + len(q_of()):]


def test_tc_flag_reported_and_cleared_in_hdr():
    p = wire.parse_reply(upstream_reply(tc=True, answers=[a_rr()]), q_of(), **TTLS)
    assert p.tc
    assert not p.hdr[0] & 0x02


def test_aa_and_ad_cleared_cd_kept_qr_rd_ra_set():
    p = wire.parse_reply(upstream_reply(aa=True, ad=True, cd=True, answers=[a_rr()]), q_of(), **TTLS)
    rec = prepared_message(p, q_of())
    h = rec.header
    assert h.aa == 0 and h.ad == 0 and h.tc == 0
    assert h.qr == 1 and h.rd == 1 and h.ra == 1 and h.cd == 1 and h.opcode == 0
    p2 = wire.parse_reply(upstream_reply(cd=False, answers=[a_rr()]), q_of(), **TTLS)
    assert not p2.hdr[1] & 0x10


def test_opt_in_the_middle_of_additional_keeps_ttl_offsets_right():
    reply = upstream_reply(
        answers=[a_rr(ttl=400), a_rr(ip="192.0.2.9", ttl=401)],
        auth=[RR("example.com", QTYPE.NS, rdata=dnslib.NS("ns.example.com"), ttl=402)],
        additional=[a_rr("ns.example.com", ttl=403), EDNS0(udp_len=1232),
                    RR("ns.example.com", QTYPE.AAAA, rdata=AAAA("2001:db8::53"), ttl=404),
                    a_rr("ns2.example.com", ttl=405)],
    )
    p = wire.parse_reply(reply, q_of(), **TTLS)
    # The records after the OPT are dropped with it (wire.parse_reply explains why);
    # every record kept has its TTL offset right, before and after capping/aging.
    assert struct.unpack_from(">HHHH", p.hdr, 2) == (1, 2, 1, 1)
    assert len(p.ttl_offsets) == 4
    rec = prepared_message(p, q_of())
    assert [rr.ttl for rr in all_rrs(rec)] == [400, 401, 402, 403]
    assert [str(rr.rname) for rr in all_rrs(rec)] == ["www.example.com.", "www.example.com.", "example.com.",
                                                       "ns.example.com."]
    aged = wire.age_body(p.body, p.ttl_offsets, 4)
    assert [rr.ttl for rr in all_rrs(prepared_message(p, q_of(), body=aged))] == [396, 397, 398, 399]
    capped = wire.parse_reply(reply, q_of(), min_ttl=0, max_ttl=401, max_negative_ttl=3600)
    assert [rr.ttl for rr in all_rrs(prepared_message(capped, q_of()))] == [400, 401, 401, 401]
    rec_opt = prepared_message(p, q_of(), opt=True)
    assert [rr.rtype for rr in rec_opt.ar] == [QTYPE.A, QTYPE.OPT]


def test_opt_in_the_middle_does_not_break_compression_after_it():
    # ns2.other.test is compressed against ns1.other.test, which follows the OPT:
    # cutting the OPT's 11 bytes out of the middle would turn it into "ns2.".
    reply = upstream_reply(
        answers=[a_rr(ttl=300)],
        additional=[EDNS0(udp_len=1232), a_rr("ns1.other.test", "192.0.2.53", ttl=100),
                    a_rr("ns2.other.test", "192.0.2.54", ttl=100)],
    )
    p = wire.parse_reply(reply, q_of(), **TTLS)
    rec = prepared_message(p, q_of())
    names = {str(rr.rname) for rr in all_rrs(rec)}
    assert names <= {"www.example.com.", "ns1.other.test.", "ns2.other.test."}
    assert "www.example.com." in names
    assert rec.header.ar == len(rec.ar)


def test_opt_last_keeps_every_additional_record():
    reply = upstream_reply(answers=[a_rr()], additional=[a_rr("ns1.other.test", ttl=100),
                                                          a_rr("ns2.other.test", ttl=90), EDNS0(udp_len=1232)])
    p = wire.parse_reply(reply, q_of(), **TTLS)
    rec = prepared_message(p, q_of())
    assert [(str(rr.rname), rr.ttl) for rr in rec.ar] == [("ns1.other.test.", 100), ("ns2.other.test.", 90)]
    assert p.body == reply[12 + len(q_of()) : -11]


@pytest.mark.parametrize("where", ["answer", "authority"])
def test_opt_outside_additional_is_bad(where):
    reply = bytearray(upstream_reply(answers=[a_rr()], edns=False))
    opt = wire.opt_record(1232, False)
    if where == "answer":
        reply[6:8] = struct.pack(">H", 2)
    else:
        reply[8:10] = struct.pack(">H", 1)
    with pytest.raises(UpstreamBadResponse):
        wire.parse_reply(bytes(reply) + opt, q_of(), **TTLS)


def test_two_opts_in_reply_are_bad():
    reply = bytearray(upstream_reply(answers=[a_rr()], edns=True))
    reply[10:12] = struct.pack(">H", 2)
    with pytest.raises(UpstreamBadResponse):
        wire.parse_reply(bytes(reply) + wire.opt_record(1232, False), q_of(), **TTLS)


def test_truncated_reply_records_are_bad_at_every_length():
    reply = upstream_reply(answers=[a_rr(), a_rr(ip="192.0.2.2")], auth=[soa_rr()],
                           additional=[a_rr("ns.example.com")])
    qend = 12 + len(q_of())
    for n in range(qend, len(reply)):
        with pytest.raises(UpstreamBadResponse):
            wire.parse_reply(reply[:n], q_of(), **TTLS)
    wire.parse_reply(reply, q_of(), **TTLS)  # the whole reply is fine


@pytest.mark.parametrize("label", [b"\x40", b"\x80", b"\x7f"])
def test_bad_label_type_in_record_is_bad(label):
    reply = bytearray(upstream_reply(answers=[a_rr()], edns=False))
    qend = 12 + len(q_of())
    reply[qend] = label[0]  # the answer's owner name starts with an invalid label type
    with pytest.raises(UpstreamBadResponse):
        wire.parse_reply(bytes(reply), q_of(), **TTLS)


def test_counts_larger_than_records_are_bad():
    reply = bytearray(upstream_reply(answers=[a_rr()], edns=False))
    reply[7] = 5
    with pytest.raises(UpstreamBadResponse):
        wire.parse_reply(bytes(reply), q_of(), **TTLS)


def test_trailing_bytes_after_records_are_ignored():
    reply = upstream_reply(answers=[a_rr()], edns=False)
    p = wire.parse_reply(reply + b"junk", q_of(), **TTLS)
    assert p.body == reply[12 + len(q_of()):]


# ------------------------------------------------------- check_reply_matches
def test_check_reply_matches_accepts_matching_reply_and_other_case():
    q = q_of()
    wire.check_reply_matches(upstream_reply(qid=77), 77, q)
    wire.check_reply_matches(upstream_reply("WWW.EXAMPLE.com", qid=77), 77, q)


def test_check_reply_matches_rejects_wrong_id():
    with pytest.raises(UpstreamBadResponse):
        wire.check_reply_matches(upstream_reply(qid=78), 77, q_of())


def test_check_reply_matches_rejects_qr0():
    reply = bytearray(upstream_reply(qid=77))
    reply[2] &= 0x7F
    with pytest.raises(UpstreamBadResponse):
        wire.check_reply_matches(bytes(reply), 77, q_of())


@pytest.mark.parametrize("name,qtype", [("www.example.org", QTYPE.A), ("www.example.com", QTYPE.AAAA),
                                        ("ww.example.com", QTYPE.A), ("www.example.com.x", QTYPE.A)])
def test_check_reply_matches_rejects_other_question(name, qtype):
    with pytest.raises(UpstreamBadResponse):
        wire.check_reply_matches(upstream_reply(name, qtype, qid=77), 77, q_of())


def test_check_reply_matches_does_not_fold_type_case():
    # type 65 (HTTPS) is b"\x00A", type 97 is b"\x00a": a case-insensitive compare of the
    # whole question would take a type-97 reply as the answer to an HTTPS query.
    with pytest.raises(UpstreamBadResponse):
        wire.check_reply_matches(upstream_reply(qtype=97, qid=77), 77, q_of(qtype=65))
    wire.check_reply_matches(upstream_reply("WWW.example.com", qtype=65, qid=77), 77, q_of(qtype=65))


def test_check_reply_matches_rejects_other_class():
    reply = DNSRecord(DNSHeader(id=77, qr=1), q=DNSQuestion("www.example.com", QTYPE.A, CLASS.CH)).pack()
    with pytest.raises(UpstreamBadResponse):
        wire.check_reply_matches(reply, 77, q_of())


@pytest.mark.parametrize("qd", [0, 2])
def test_check_reply_matches_rejects_qdcount(qd):
    reply = bytearray(upstream_reply(qid=77))
    reply[4:6] = struct.pack(">H", qd)
    with pytest.raises(UpstreamBadResponse):
        wire.check_reply_matches(bytes(reply), 77, q_of())


@pytest.mark.parametrize("n", [0, 5, 11, 12, 20])
def test_check_reply_matches_rejects_short(n):
    with pytest.raises(UpstreamBadResponse):
        wire.check_reply_matches(upstream_reply(qid=77)[:n], 77, q_of())


# ----------------------------------------------------- age_body / fixed_ttl
def _rich_prepared():
    reply = upstream_reply(
        answers=[a_rr(ttl=300), a_rr(ip="192.0.2.2", ttl=5)],
        auth=[RR("example.com", QTYPE.NS, rdata=dnslib.NS("ns.example.com"), ttl=200)],
        additional=[a_rr("ns.example.com", ttl=100), EDNS0(udp_len=1232)],
    )
    return wire.parse_reply(reply, q_of(), **TTLS)


@pytest.mark.parametrize("age,expect", [
    (0, [300, 5, 200, 100]),
    (1, [299, 4, 199, 99]),
    (5, [295, 0, 195, 95]),
    (6, [294, 0, 194, 94]),       # floored at 0, never wraps around
    (150, [150, 0, 50, 0]),
    (10_000, [0, 0, 0, 0]),
])
def test_age_body(age, expect):
    p = _rich_prepared()
    aged = wire.age_body(p.body, p.ttl_offsets, age)
    assert len(aged) == len(p.body)
    rec = prepared_message(p, q_of(), body=aged)
    assert [rr.ttl for rr in all_rrs(rec)] == expect
    assert [str(rr.rdata) for rr in all_rrs(rec)] == [str(rr.rdata) for rr in all_rrs(prepared_message(p, q_of()))]
    assert prepared_message(p, q_of()).rr[0].ttl == 300  # the stored body is untouched


def test_age_body_without_records_returns_body():
    assert wire.age_body(b"", (), 10) == b""


@pytest.mark.parametrize("ttl", [0, 1, 30, 86400])
def test_fixed_ttl_body(ttl):
    p = _rich_prepared()
    body = wire.fixed_ttl_body(p.body, p.ttl_offsets, ttl)
    assert [rr.ttl for rr in all_rrs(prepared_message(p, q_of(), body=body))] == [ttl] * 4


def test_fixed_ttl_body_on_negative_answer_sets_soa():
    p = wire.parse_reply(upstream_reply(rcode=3, auth=[soa_rr()]), q_of(), **TTLS)
    body = wire.fixed_ttl_body(p.body, p.ttl_offsets, 30)
    assert prepared_message(p, q_of(), body=body).auth[0].ttl == 30


# -------------------------------------------------------------------- render
def _positive(name="www.example.com", qtype=QTYPE.A, answers=None):
    answers = answers if answers is not None else [a_rr(name.lower(), ttl=300)]
    return wire.parse_reply(upstream_reply(name.lower(), qtype, answers=answers), q_of(name, qtype), **TTLS)


@pytest.mark.parametrize("edns,do", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("rd", [True, False])
def test_render_basic(edns, do, rd):
    data = query("WwW.ExAmple.COM", qid=0xABCD, edns=edns, do=do, rd=rd)
    q = wire.parse_query(data)
    p = _positive()
    out = wire.render(q, p.hdr, p.hdr_opt, p.body, 4096, 1232)
    rec = DNSRecord.parse(out)
    assert rec.header.id == 0xABCD
    assert out[12 : q.qend] == q.question  # exact bytes, mixed case kept
    assert str(rec.q.qname) == "WwW.ExAmple.COM."
    assert rec.header.rd == int(rd)
    assert rec.header.qr == 1 and rec.header.aa == 0 and rec.header.tc == 0
    assert [str(rr.rdata) for rr in rec.rr] == ["192.0.2.1"]
    opts = [rr for rr in rec.ar if rr.rtype == QTYPE.OPT]
    if edns:
        assert len(opts) == 1
        assert opts[0].rclass == 1232
        assert bool(opts[0].ttl & 0x8000) == do
        assert out.endswith(wire.opt_record(1232, do))
    else:
        assert opts == []
        assert rec.header.ar == 0


def test_render_with_ede():
    q = wire.parse_query(query(edns=True, do=True))
    p = _positive()
    ede = wire.ede_option(wire.EDE_STALE_ANSWER)
    assert ede == b"\x00\x0f\x00\x02\x00\x03"
    out = wire.render(q, p.hdr, p.hdr_opt, p.body, 4096, 1232, ede)
    assert out.endswith(wire.opt_record(1232, True, ede))
    rec = DNSRecord.parse(out)
    assert [(o.code, o.data) for o in rec.ar[-1].rdata] == [(15, b"\x00\x03")]


def test_render_ede_ignored_without_edns():
    q = wire.parse_query(query())
    p = _positive()
    out = wire.render(q, p.hdr, p.hdr_opt, p.body, 4096, 1232, wire.ede_option(3))
    assert out == wire.render(q, p.hdr, p.hdr_opt, p.body, 4096, 1232)


def _big_txt():
    answers = [RR("big.example.com", QTYPE.TXT, rdata=TXT("x" * 50), ttl=300) for _ in range(12)]
    return wire.parse_reply(upstream_reply("big.example.com", QTYPE.TXT, answers=answers),
                            q_of("big.example.com", QTYPE.TXT), **TTLS)


def test_render_over_512_without_edns_is_truncated():
    data = query("Big.Example.com", "TXT")
    q = wire.parse_query(data)
    p = _big_txt()
    out = wire.render(q, p.hdr, p.hdr_opt, p.body, q.udp_size, 1232)
    rec = DNSRecord.parse(out)
    assert rec.header.tc == 1
    assert rec.header.a == 0 and rec.header.auth == 0 and rec.header.ar == 0
    assert not rec.rr
    assert out[12:] == q.question
    assert rec.header.id == 0x1234 and rec.header.rd == 1


def test_render_truncated_with_edns_keeps_opt():
    q = wire.parse_query(query("big.example.com", "TXT", edns=True, do=True, udp=512))
    p = _big_txt()
    out = wire.render(q, p.hdr, p.hdr_opt, p.body, q.udp_size, 1232)
    rec = DNSRecord.parse(out)
    assert rec.header.tc == 1 and not rec.rr
    assert len(rec.ar) == 1 and rec.ar[0].rtype == QTYPE.OPT and rec.ar[0].ttl & 0x8000


def test_render_fits_with_large_edns_or_tcp():
    p = _big_txt()
    q = wire.parse_query(query("big.example.com", "TXT", edns=True, udp=4096))
    out = wire.render(q, p.hdr, p.hdr_opt, p.body, q.udp_size, 1232)
    rec = DNSRecord.parse(out)
    assert rec.header.tc == 0 and len(rec.rr) == 12
    q2 = wire.parse_query(query("big.example.com", "TXT"))
    assert len(DNSRecord.parse(wire.render(q2, p.hdr, p.hdr_opt, p.body, 65535, 1232)).rr) == 12


def test_render_limit_boundary():
    q = wire.parse_query(query())
    p = _positive()
    full = wire.render(q, p.hdr, p.hdr_opt, p.body, 65535, 1232)
    assert wire.render(q, p.hdr, p.hdr_opt, p.body, len(full), 1232) == full
    cut = wire.render(q, p.hdr, p.hdr_opt, p.body, len(full) - 1, 1232)
    assert cut != full and DNSRecord.parse(cut).header.tc == 1


def test_render_negative_answer():
    data = query("Nope.example.com", edns=True)
    q = wire.parse_query(data)
    p = wire.parse_reply(upstream_reply("nope.example.com", rcode=3, auth=[soa_rr()]), q_of("nope.example.com"),
                         **TTLS)
    rec = DNSRecord.parse(wire.render(q, p.hdr, p.hdr_opt, p.body, q.udp_size, 1232))
    assert rec.header.rcode == 3 and rec.auth[0].ttl == 600 and str(rec.q.qname) == "Nope.example.com."


# ---------------------------------------------------------------- small helpers
def test_name_to_wire_and_text_round_trip():
    w = wire.name_to_wire("www.example.com.")
    assert w == b"\x03www\x07example\x03com\x00"
    assert wire.name_to_text(w) == "www.example.com."
    assert wire.name_to_wire(".") == b"\x00"
    with pytest.raises(ValueError):
        wire.name_to_wire("a" * 64 + ".com")
    with pytest.raises(ValueError):
        wire.name_to_wire(".".join(["a" * 63] * 4))


def test_opt_record_layout():
    opt = wire.opt_record(1232, True, b"", ext_rcode=1)
    assert opt == b"\x00\x00\x29\x04\xd0\x01\x00\x80\x00\x00\x00"


# -- questions a forwarder does not serve (issue 13 item 5; Unbound's worker.c) -----------


@pytest.mark.parametrize("qtype,qclass,rcode", [
    (1, 3, wire.REFUSED),      # CHAOS
    (16, 3, wire.REFUSED),     # CHAOS TXT (version.bind)
    (1, 4, wire.REFUSED),      # HESIOD
    (1, 255, wire.REFUSED),    # class ANY
    (1, 254, wire.REFUSED),    # class NONE
    (1, 0, wire.REFUSED),      # class 0
    (252, 1, wire.REFUSED),    # AXFR
    (251, 1, wire.REFUSED),    # IXFR
    (41, 1, wire.FORMERR),     # OPT in the question: RFC 6891 §6.1.1
    (250, 1, wire.FORMERR),    # TSIG
    (249, 1, wire.FORMERR),    # TKEY
    (253, 1, wire.FORMERR),    # MAILB
    (254, 1, wire.FORMERR),    # MAILA
    (128, 1, wire.FORMERR),    # meta-type range 128-248 (RFC 6895 §3.1)
])
def test_unserved_questions_are_refused_or_formerr_with_the_question_echoed(qtype, qclass, rcode):
    for edns in (False, True):
        data = header(ar=int(edns)) + question_bytes(qtype=qtype, qclass=qclass)
        if edns:
            data += wire.opt_record(1232, False)
        with pytest.raises(FormatError) as info:
            wire.parse_query(data)
        e = info.value
        assert (e.rcode, e.question_end, e.edns) == (rcode, 12 + len(question_bytes()), edns)


@pytest.mark.parametrize("qtype", [1, 28, 255, 256, 257, 65, 0, 65535, 0x0129])
def test_ordinary_qtypes_in_class_in_are_questions(qtype):
    # ANY (255) and every type above 255 (0x0129: low byte 41, OPT's) are ordinary.
    q = wire.parse_query(header() + question_bytes(qtype=qtype))
    assert (q.qtype, q.qclass) == (qtype, 1)
