"""Property tests: hostile bytes never make the wire code or the hit path raise.

Each parser has a closed set of outcomes: ``parse_query`` returns a Query or
raises DropQuery / FormatError; ``check_reply_matches`` + ``parse_reply`` return a
Prepared or raise UpstreamBadResponse; ``Pipeline.answer_fast`` returns bytes or
None.  Anything else (IndexError, struct.error, ...) is a bug.
"""

from __future__ import annotations

import asyncio

import pytest
from dnslib import AAAA, CNAME, NS, QTYPE, RR, SOA, TXT, A
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolver import wire
from resolver.errors import DropQuery, FormatError, UpstreamBadResponse
from resolver.serve.pipeline import Pipeline
from tests.support.packets import client_query, upstream_reply
from tests.support.pipeline import make_pipeline as fast_path_pipeline
from tests.support.pipeline import store

pytestmark = pytest.mark.fuzz  # hypothesis searches, 300 examples each

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TTLS = dict(min_ttl=0, max_ttl=86_400, max_negative_ttl=3_600)


def _records(name, qtype):
    soa = RR("example.com", QTYPE.SOA, rdata=SOA("ns.example.com", "host.example.com", (1, 2, 3, 4, 300)), ttl=900)
    if qtype == QTYPE.A:
        return dict(answers=[RR(name, QTYPE.CNAME, rdata=CNAME("target.example.com"), ttl=600),
                             RR("target.example.com", QTYPE.A, rdata=A("192.0.2.1"), ttl=300)],
                    auth=[RR("example.com", QTYPE.NS, rdata=NS("ns.example.com"), ttl=3600)],
                    additional=[RR("ns.example.com", QTYPE.A, rdata=A("192.0.2.53"), ttl=3600)])
    if qtype == QTYPE.AAAA:
        return dict(answers=[RR(name, QTYPE.AAAA, rdata=AAAA("2001:db8::1"), ttl=300)])
    if qtype == QTYPE.TXT:
        return dict(answers=[RR(name, QTYPE.TXT, rdata=TXT("hello " * 5), ttl=300)])
    return dict(rcode=3, auth=[soa])


CACHED = [("www.example.com", QTYPE.A), ("v6.example.com", QTYPE.AAAA), ("t.example.com", QTYPE.TXT),
          ("nx.example.com", QTYPE.MX), ("www.example.com", 65)]


def make_pipeline() -> Pipeline:
    pipeline, _cache, clock = fast_path_pipeline()
    for name, qtype in CACHED:
        for do in (False, True):
            for cd in (False, True):
                store(pipeline, name, qtype, do=do, cd=cd, **_records(name, qtype))
    clock.advance(3)
    return pipeline


PIPELINE = make_pipeline()

VALID_QUERIES = [
    client_query(n, t, edns=e, do=d, cd=c)
    for n, t in (("www.example.com", QTYPE.A), ("WwW.ExAmPlE.cOm", QTYPE.A), ("v6.example.com", QTYPE.AAAA),
                 ("T.example.com", QTYPE.TXT), ("nx.example.com", QTYPE.MX), ("www.example.com", 65),
                 ("miss.example.com", QTYPE.A))
    for e, d in ((None, False), (1232, False), (1232, True), (4096, True))
    for c in (False, True)
]


def check_parse_query(data: bytes):
    try:
        q = wire.parse_query(data)
    except DropQuery:
        return None
    except FormatError as e:
        assert e.rcode in (wire.FORMERR, wire.NOTIMP, wire.BADVERS, wire.REFUSED)
        assert e.rcode != wire.REFUSED or e.question_end  # refused for its question: echoed
        assert e.question_end == 0 or 12 < e.question_end <= len(data)
        reply = wire.error_reply(data, e.rcode, e.question_end, edns=e.rcode == wire.BADVERS or e.edns)
        assert reply[:2] == data[:2] and reply[2] & 0x80 and not reply[2] & 0x04
        return None
    assert isinstance(q, wire.Query)
    assert 17 <= q.qend <= len(data) and q.question == data[12 : q.qend]
    assert isinstance(q.key, bytes)
    return q


def check_fast(data: bytes, tcp: bool):
    reply = PIPELINE.answer_fast(data, tcp)
    assert reply is None or isinstance(reply, bytes)
    return reply


# ------------------------------------------------------------------ any bytes
@SETTINGS
@given(st.binary(max_size=600))
def test_parse_query_any_bytes(data):
    check_parse_query(data)


@SETTINGS
@given(st.binary(max_size=600), st.booleans())
def test_answer_fast_any_bytes(data, tcp):
    check_fast(data, tcp)


# A header the hit path accepts, followed by anything: gets past its first check.
FAST_HEADERS = st.sampled_from([bytes((0x01, f2, 0, 1, 0, 0, 0, 0, 0, ar))
                                for f2 in (0, 0x10, 0x20, 0x30) for ar in (0, 1)])


@SETTINGS
@given(st.binary(min_size=2, max_size=2), FAST_HEADERS, st.binary(max_size=300), st.booleans())
def test_answer_fast_plausible_header_any_body(qid, header, body, tcp):
    data = qid + header + body
    check_fast(data, tcp)
    check_parse_query(data)


# ------------------------------------------------------------ mutated queries
@st.composite
def flipped_queries(draw):
    data = bytearray(draw(st.sampled_from(VALID_QUERIES)))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] ^= draw(st.integers(1, 255))
    return bytes(data)


@st.composite
def cut_or_grown_queries(draw):
    data = draw(st.sampled_from(VALID_QUERIES))
    if draw(st.booleans()):
        return data[: draw(st.integers(0, len(data) - 1))]
    i = draw(st.integers(0, len(data)))
    return data[:i] + draw(st.binary(min_size=1, max_size=12)) + data[i:]


def check_hit_path_agrees(data: bytes, tcp: bool) -> None:
    """Neither path raises; whatever the hit path answers, the parser accepts and the
    slow path answers byte for byte the same (the key's flags byte comes first, so
    "question + junk" can never equal another key)."""
    q = check_parse_query(data)
    reply = check_fast(data, tcp)
    if reply is not None:
        assert q is not None
        assert asyncio.run(PIPELINE.resolve(data, tcp)).reply == reply


@SETTINGS
@given(flipped_queries(), st.booleans())
def test_flipped_queries(data, tcp):
    check_hit_path_agrees(data, tcp)


@SETTINGS
@given(cut_or_grown_queries(), st.booleans())
def test_cut_or_grown_queries(data, tcp):
    check_hit_path_agrees(data, tcp)


@SETTINGS
@given(st.sampled_from(VALID_QUERIES), st.booleans())
def test_valid_queries_fast_equals_slow(data, tcp):
    q = check_parse_query(data)
    assert q is not None
    reply = check_fast(data, tcp)
    if reply is not None:
        assert asyncio.run(PIPELINE.resolve(data, tcp)).reply == reply


# ------------------------------------------------------------ upstream replies
UPSTREAM_Q = wire.name_to_wire("www.example.com") + b"\x00\x01\x00\x01"
GOOD_REPLIES = [
    upstream_reply("www.example.com", QTYPE.A, qid=0x3333, **_records("www.example.com", QTYPE.A)),
    upstream_reply("WWW.example.com", QTYPE.A, qid=0x3333, **_records("nx", 0)),
    upstream_reply("www.example.com", QTYPE.A, qid=0x3333, rcode=2),
    upstream_reply("www.example.com", QTYPE.A, qid=0x3333,
                   answers=[RR("www.example.com", QTYPE.A, rdata=A("192.0.2.9"), ttl=0x80000000)]),
]


def check_upstream(reply: bytes, qid: int = 0x3333):
    try:
        wire.check_reply_matches(reply, qid, UPSTREAM_Q)
        p = wire.parse_reply(reply, UPSTREAM_Q, **TTLS)
    except UpstreamBadResponse:
        return None
    assert p.kind in (wire.POSITIVE, wire.NODATA, wire.NEGATIVE_NXDOMAIN, wire.FAILURE)
    assert 0 <= p.ttl <= 86_400 and len(p.hdr) == len(p.hdr_opt) == 10
    for off in p.ttl_offsets:
        assert 0 <= off <= len(p.body) - 4
    # what the hit path will do with it must not raise either
    wire.age_body(p.body, p.ttl_offsets, 5)
    wire.fixed_ttl_body(p.body, p.ttl_offsets, 30)
    q = wire.parse_query(client_query("www.example.com", edns=1232))
    wire.render(q, p.hdr, p.hdr_opt, p.body, 1232, 1232)
    return p


@SETTINGS
@given(st.binary(max_size=600), st.integers(0, 0xFFFF))
def test_upstream_any_bytes(reply, qid):
    check_upstream(reply, qid)


@SETTINGS
@given(st.integers(0, 0xFF), st.integers(0, 0xFF), st.tuples(*[st.integers(0, 6)] * 3), st.binary(max_size=600))
def test_upstream_any_records_behind_a_matching_question(flags1, flags2, counts, body):
    # Gets past check_reply_matches every time: parse_reply sees arbitrary records.
    header = b"\x33\x33" + bytes((flags1 | 0x80, flags2)) + b"\x00\x01" + bytes(
        b for c in counts for b in (0, c))
    check_upstream(header + UPSTREAM_Q + body)


@st.composite
def mutated_replies(draw):
    data = bytearray(draw(st.sampled_from(GOOD_REPLIES)))
    kind = draw(st.sampled_from(["flip", "cut", "insert"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
    elif kind == "cut":
        del data[draw(st.integers(0, len(data) - 1)) :]
    else:
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@SETTINGS
@given(mutated_replies())
def test_mutated_upstream_replies(reply):
    check_upstream(reply)


def test_good_replies_are_accepted():
    for reply in GOOD_REPLIES:
        assert check_upstream(reply) is not None
