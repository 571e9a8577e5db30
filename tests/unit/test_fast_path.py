"""The cache-hit fast path (`Pipeline.answer_fast`) against the general path.

`answer_fast` promises to produce exactly what `wire.render` (and therefore
`Pipeline.resolve`) would, for the queries it accepts, and to return None for
everything else.  These tests hold it to that byte for byte, with an injected
FakeClock and a pool that must never be touched.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct

import pytest
from dnslib import AAAA, NS, QTYPE, RR, SOA, TXT, A, DNSRecord

from resolver import wire
from resolver.config import Config, StaleConfig
from resolver.errors import FormatError
from resolver.policy import stale as stale_policy
from resolver.serve.pipeline import Pipeline
from tests.support import counts
from tests.support.packets import client_query
from tests.support.pipeline import START, NoPool, make_pipeline, store

EDNS_SIZE = Config().upstream.edns_buffer_size  # 1232


def variant(do, cd) -> int:
    return 1 + 2 * int(do) + int(cd)


def populate(pipeline: Pipeline) -> dict:
    """www/v6/txt/nx entries, one per (DO, CD) combination, each with distinguishable data."""
    entries = {}
    for do in (False, True):
        for cd in (False, True):
            v = variant(do, cd)
            entries["www", do, cd] = store(
                pipeline, "www.example.com", QTYPE.A, do=do, cd=cd,
                answers=[RR("www.example.com", QTYPE.A, rdata=A(f"192.0.2.{v}"), ttl=300),
                         RR("www.example.com", QTYPE.A, rdata=A(f"198.51.100.{v}"), ttl=200)],
                auth=[RR("example.com", QTYPE.NS, rdata=NS("ns.example.com"), ttl=3000)],
                additional=[RR("ns.example.com", QTYPE.A, rdata=A("203.0.113.53"), ttl=160)],
            )
            entries["v6", do, cd] = store(
                pipeline, "v6.example.com", QTYPE.AAAA, do=do, cd=cd,
                answers=[RR("v6.example.com", QTYPE.AAAA, rdata=AAAA(f"2001:db8::{v}"), ttl=600)],
            )
            entries["txt", do, cd] = store(
                pipeline, "txt.example.com", QTYPE.TXT, do=do, cd=cd,
                answers=[RR("txt.example.com", QTYPE.TXT, rdata=TXT(f"variant {v}"), ttl=250)],
            )
            entries["nx", do, cd] = store(
                pipeline, "nx.example.com", QTYPE.A, do=do, cd=cd, rcode=3,
                auth=[RR("example.com", QTYPE.SOA,
                         rdata=SOA("ns.example.com", "host.example.com", (1, 2, 3, 4, 400)), ttl=900)],
            )
    return entries


@pytest.fixture
def env():
    pipeline, cache, clock = make_pipeline()
    entries = populate(pipeline)
    return pipeline, cache, clock, entries


def limit_for(q: wire.Query, tcp: bool) -> int:
    return 65535 if tcp else q.udp_size


def general_path(pipeline, data: bytes, entry, tcp=False) -> bytes:
    """What wire.render makes of a fresh entry at the pipeline's current time."""
    q = wire.parse_query(data)
    age = math.ceil(pipeline.clock.monotonic() - entry.stored_at)  # whole seconds, rounded up
    body = wire.age_body(entry.body, entry.ttl_offsets, age)
    return wire.render(q, entry.hdr, entry.hdr_opt, body, limit_for(q, tcp), EDNS_SIZE)


def stale_path(pipeline, data: bytes, entry, tcp=False) -> bytes:
    q = wire.parse_query(data)
    code = wire.EDE_STALE_NXDOMAIN if entry.rcode == wire.NXDOMAIN else wire.EDE_STALE_ANSWER
    body = wire.fixed_ttl_body(entry.body, entry.ttl_offsets, pipeline.stale.answer_ttl)
    return wire.render(q, entry.hdr, entry.hdr_opt, body, limit_for(q, tcp), EDNS_SIZE, wire.ede_option(code))


def slow(pipeline, data: bytes, tcp=False):
    return asyncio.run(pipeline.resolve(data, tcp)).reply


def rrs(rec):
    return [rr for rr in (*rec.rr, *rec.auth, *rec.ar) if rr.rtype != QTYPE.OPT]


def opt_of(rec):
    opts = [rr for rr in rec.ar if rr.rtype == QTYPE.OPT]
    assert len(opts) <= 1
    return opts[0] if opts else None


# ------------------------------------------------------------- the hit table
NAMES = [
    ("www", "www.example.com", QTYPE.A, [300, 200, 3000, 160]),
    ("www", "WwW.ExAmPlE.CoM", QTYPE.A, [300, 200, 3000, 160]),
    ("v6", "v6.example.com", QTYPE.AAAA, [600]),
    ("v6", "V6.EXAMPLE.COM", QTYPE.AAAA, [600]),
    ("txt", "TXT.Example.com", QTYPE.TXT, [250]),
]
EDNS = [None, (512, False), (1232, False), (1232, True), (4096, True), (100, True)]


@pytest.mark.parametrize("age", [0, 1, 150])
@pytest.mark.parametrize("cd", [False, True])
@pytest.mark.parametrize("edns", EDNS, ids=lambda e: "noedns" if e is None else f"edns{e[0]}{'do' if e[1] else ''}")
@pytest.mark.parametrize("key,name,qtype,ttls", NAMES, ids=lambda x: x if isinstance(x, str) else None)
def test_fast_path_matches_general_path(env, key, name, qtype, ttls, edns, cd, age):
    pipeline, cache, clock, entries = env
    do = bool(edns and edns[1])
    data = client_query(name, qtype, qid=0xA55A, edns=None if edns is None else edns[0], do=do, cd=cd)
    entry = entries[key, do, cd]
    clock.advance(age)

    reply = pipeline.answer_fast(data, False)
    assert reply is not None
    assert reply == general_path(pipeline, data, entry)
    # the slow path (parse + stale.decide + render) agrees byte for byte
    assert slow(pipeline, data) == reply
    # and over TCP too
    assert pipeline.answer_fast(data, True) == general_path(pipeline, data, entry, tcp=True)

    rec = DNSRecord.parse(reply)
    assert rec.header.id == 0xA55A
    assert rec.header.qr == 1 and rec.header.rd == 1 and rec.header.ra == 1
    assert rec.header.aa == 0 and rec.header.tc == 0 and rec.header.rcode == 0
    assert rec.header.cd == int(cd)
    q = wire.parse_query(data)
    assert reply[12 : q.qend] == q.question  # the client's exact question bytes
    assert str(rec.q.qname) == name + "."
    assert [rr.ttl for rr in rrs(rec)] == [max(0, t - age) for t in ttls]
    v = variant(do, cd)
    first = str(rec.rr[0].rdata)
    assert first == {"www": f"192.0.2.{v}", "v6": f"2001:db8::{v}", "txt": f'"variant {v}"'}[key]
    opt = opt_of(rec)
    if edns is None:
        assert opt is None
    else:
        assert opt is not None and opt.rclass == EDNS_SIZE and bool(opt.ttl & 0x8000) == do
        assert not opt.rdata  # no EDE on a fresh answer


def test_fast_path_counts_hits_and_reuses_aged_body(env):
    pipeline, cache, clock, entries = env
    data = client_query("www.example.com")
    entry = entries["www", False, False]
    clock.advance(5.2)
    before = counts.hits(pipeline.stats)
    r1 = pipeline.answer_fast(data, False)
    aged = entry.aged
    clock.advance(0.5)  # same second
    r2 = pipeline.answer_fast(data, False)
    assert r1 == r2 and entry.aged is aged and entry.aged_until == START + 6
    assert DNSRecord.parse(r2).rr[0].ttl == 300 - 6  # 294.3 s left: 294 whole seconds
    clock.advance(1)
    r3 = pipeline.answer_fast(data, False)
    assert r3 != r2 and entry.aged is not aged
    assert DNSRecord.parse(r3).rr[0].ttl == 300 - 7  # 293.3 s left
    assert counts.hits(pipeline.stats) == before + 3


def test_fast_path_moves_entry_to_lru_end_once_per_second(env):
    pipeline, cache, clock, entries = env
    key = wire.parse_query(client_query("www.example.com")).key
    assert list(cache.entries)[-1] != key
    clock.advance(1)
    pipeline.answer_fast(client_query("www.example.com"), False)
    assert list(cache.entries)[-1] == key


def test_fast_path_last_fresh_second_and_expiry(env):
    pipeline, cache, clock, entries = env
    data = client_query("txt.example.com", QTYPE.TXT)  # TTL 250
    clock.advance(249)
    reply = pipeline.answer_fast(data, False)
    assert DNSRecord.parse(reply).rr[0].ttl == 1
    clock.advance(1)  # now == fresh_until: expired
    assert pipeline.answer_fast(data, False) is None


def test_www_entry_ttl_is_min_answer_ttl_and_other_records_age_to_zero(env):
    pipeline, cache, clock, entries = env
    data = client_query("www.example.com")
    clock.advance(199)  # entry TTL is min(300, 200); the additional record (160) is already 0
    rec = DNSRecord.parse(pipeline.answer_fast(data, False))
    assert [rr.ttl for rr in rrs(rec)] == [101, 1, 2801, 0]
    clock.advance(1)
    assert pipeline.answer_fast(data, False) is None


def test_nxdomain_fresh_hit(env):
    pipeline, cache, clock, entries = env
    data = client_query("NX.example.com", edns=1232, do=True)
    clock.advance(100)
    reply = pipeline.answer_fast(data, False)
    assert reply == general_path(pipeline, data, entries["nx", True, False]) == slow(pipeline, data)
    rec = DNSRecord.parse(reply)
    assert rec.header.rcode == 3 and rec.auth[0].ttl == 300  # min(900, 400) - 100


def test_do_query_does_not_get_the_non_do_entry():
    pipeline, cache, clock = make_pipeline()
    store(pipeline, "only.example.com", answers=[RR("only.example.com", QTYPE.A, rdata=A("192.0.2.7"), ttl=60)])
    assert pipeline.answer_fast(client_query("only.example.com", edns=1232, do=False), False) is not None
    assert pipeline.answer_fast(client_query("only.example.com", edns=1232, do=True), False) is None
    assert pipeline.answer_fast(client_query("only.example.com", cd=True), False) is None


def test_ad_bit_in_query_is_answered_like_the_slow_path(env):
    pipeline, cache, clock, entries = env
    for data in (_mutate(client_query(), b3=0x20), _mutate(client_query(edns=1232, do=True, cd=True), b3=0x30)):
        fast = pipeline.answer_fast(data, False)
        assert fast is not None
        assert fast == slow(pipeline, data)
        assert DNSRecord.parse(fast).header.ad == 0


def test_edns_option_in_query_is_answered_like_the_slow_path(env):
    pipeline, cache, clock, entries = env
    cookie = b"\x00\x0a\x00\x08" + bytes(range(8))  # RFC 7873 client cookie
    for do in (False, True):
        data = _mutate(client_query("Www.example.com"), b11=1) + wire.opt_record(1400, do, cookie)
        q = wire.parse_query(data)
        assert q.edns and q.do == do and q.udp_size == 1400
        fast = pipeline.answer_fast(data, False)
        assert fast == general_path(pipeline, data, entries["www", do, False]) == slow(pipeline, data)
        # our reply carries our own OPT (no cookie echo), like the slow path
        assert fast.endswith(wire.opt_record(EDNS_SIZE, do))


def test_learned_opt_shapes_keep_size_and_do_apart(env):
    pipeline, cache, clock, entries = env
    big = {do: _store_big(pipeline, 12, do=do) for do in (False, True)}  # ~ 900 bytes
    shapes = [(512, False), (1232, False), (1232, True), (4096, True), (512, True)]
    for _ in range(2):  # the first round learns each shape, the second uses what was learned
        for size, do in shapes:
            data = client_query("big.example.com", QTYPE.TXT, edns=size, do=do)
            fast = pipeline.answer_fast(data, False)
            if size < 900:
                assert fast is None
            else:
                assert fast == general_path(pipeline, data, big[do])
            www = client_query("WWW.example.com", edns=size, do=do)
            assert pipeline.answer_fast(www, False) == general_path(pipeline, www, entries["www", do, False])


# --------------------------------------------------------------- stale answers
@pytest.mark.parametrize("edns,do", [(None, False), (1232, False), (1232, True)])
@pytest.mark.parametrize("key,name,qtype", [("www", "Www.Example.com", QTYPE.A), ("nx", "nx.example.com", QTYPE.A),
                                            ("v6", "v6.example.com", QTYPE.AAAA)])
def test_expired_entry_with_recheck_timer_is_served_stale(env, key, name, qtype, edns, do):
    pipeline, cache, clock, entries = env
    data = client_query(name, qtype, edns=edns, do=do)
    entry = entries[key, do, False]
    clock.advance(entry.fresh_until - START + 10)  # expired 10 s ago
    assert pipeline.answer_fast(data, False) is None  # no recheck timer: slow path (refresh or stale)

    entry.recheck_until = clock.monotonic() + 30
    before = counts.stale(pipeline.stats, "recheck")
    reply = pipeline.answer_fast(data, False)
    assert reply is not None
    assert reply == stale_path(pipeline, data, entry)
    assert stale_policy.decide(entry, clock.monotonic(), pipeline.stale) == stale_policy.ANSWER_STALE
    assert slow(pipeline, data) == reply
    assert counts.stale(pipeline.stats, "recheck") == before + 2  # fast + slow

    rec = DNSRecord.parse(reply)
    assert rrs(rec) and all(rr.ttl == pipeline.stale.answer_ttl == 30 for rr in rrs(rec))
    opt = opt_of(rec)
    if edns is None:
        assert opt is None
    else:
        code = wire.EDE_STALE_NXDOMAIN if key == "nx" else wire.EDE_STALE_ANSWER
        assert [(o.code, o.data) for o in opt.rdata] == [(15, struct.pack(">H", code))]
        assert bool(opt.ttl & 0x8000) == do
    assert rec.header.rcode == (3 if key == "nx" else 0)


def test_recheck_timer_ended_goes_slow(env):
    pipeline, cache, clock, entries = env
    entry = entries["www", False, False]
    clock.advance(400)
    entry.recheck_until = clock.monotonic() + 30
    clock.advance(30)
    assert pipeline.answer_fast(client_query(), False) is None


def test_recheck_timer_past_stale_window_goes_slow():
    pipeline, cache, clock = make_pipeline(Config(stale=StaleConfig(max_age=100)))
    entry = store(pipeline, "www.example.com", answers=[RR("www.example.com", QTYPE.A, rdata=A("192.0.2.1"), ttl=60)])
    clock.advance(60 + 100)  # at stale_until
    entry.recheck_until = clock.monotonic() + 30
    assert pipeline.answer_fast(client_query(), False) is None


def test_recheck_timer_with_stale_disabled_goes_slow(env):
    pipeline, cache, clock, entries = env
    entry = entries["www", False, False]
    clock.advance(400)
    entry.recheck_until = clock.monotonic() + 30
    pipeline.configure(Config(stale=StaleConfig(enabled=False)))
    assert pipeline.answer_fast(client_query(), False) is None


def test_recheck_timer_respects_max_age_lowered_by_reload(env):
    pipeline, cache, clock, entries = env
    entry = entries["www", False, False]
    clock.advance(200 + 100)  # expired 100 s ago; stored with a 1-day stale window
    entry.recheck_until = clock.monotonic() + 30
    pipeline.configure(Config(stale=StaleConfig(max_age=60)))
    assert stale_policy.decide(entry, clock.monotonic(), pipeline.stale) == stale_policy.RESOLVE
    assert pipeline.answer_fast(client_query(), False) is None


def test_stale_answer_over_the_limit_goes_slow():
    pipeline, cache, clock = make_pipeline()
    entry = _store_big(pipeline, 30)
    clock.advance(400)
    entry.recheck_until = clock.monotonic() + 30
    data = client_query("big.example.com", QTYPE.TXT)
    assert pipeline.answer_fast(data, False) is None
    assert pipeline.answer_fast(data, True) == stale_path(pipeline, data, entry, tcp=True)
    assert DNSRecord.parse(slow(pipeline, data)).header.tc == 1


# ------------------------------------------------------------- None: slow path
def _mutate(data: bytes, **at) -> bytes:
    out = bytearray(data)
    for off, value in at.items():
        out[int(off[1:])] = value
    return bytes(out)


def test_miss_returns_none(env):
    pipeline, *_ = env
    assert pipeline.answer_fast(client_query("other.example.com"), False) is None
    assert pipeline.answer_fast(client_query("www.example.com", QTYPE.MX), False) is None
    assert pipeline.answer_fast(client_query("www.example.co"), False) is None
    assert pipeline.answer_fast(client_query("ww.example.com"), False) is None


def test_expired_entry_returns_none(env):
    pipeline, cache, clock, entries = env
    clock.advance(600)
    assert pipeline.answer_fast(client_query("v6.example.com", QTYPE.AAAA), False) is None
    clock.advance(10 ** 6)  # past the stale window as well
    assert pipeline.answer_fast(client_query("v6.example.com", QTYPE.AAAA), False) is None


@pytest.mark.parametrize("case,data", ids=lambda v: v if isinstance(v, str) else "", argvalues=[
    ("rd=0", client_query(rd=False)),
    ("rd=0 edns", client_query(rd=False, edns=1232)),
    ("opcode 4 (NOTIFY)", _mutate(client_query(), b2=(4 << 3) | 1)),
    ("opcode 2 (STATUS)", _mutate(client_query(), b2=(2 << 3) | 1)),
    ("QR=1", _mutate(client_query(), b2=0x81)),
    ("AA=1", _mutate(client_query(), b2=0x05)),
    ("TC=1", _mutate(client_query(), b2=0x03)),
    ("class CH", client_query(qclass=3)),
    ("class ANY", client_query(qclass=255)),
    ("Z=1", _mutate(client_query(), b3=0x40)),
    ("RCODE bits in a query", _mutate(client_query(), b3=0x01)),
    ("QDCOUNT=0", _mutate(client_query(), b5=0)),
    ("QDCOUNT=2", _mutate(client_query(), b5=2)),
    ("ANCOUNT=1", _mutate(client_query(edns=1232), b7=1, b11=0)),
    ("NSCOUNT=1", _mutate(client_query(edns=1232), b9=1, b11=0)),
    ("ARCOUNT=2", _mutate(client_query(edns=1232), b11=2)),
    ("ARCOUNT=1 without OPT", _mutate(client_query(), b11=1)),
    ("trailing byte", client_query() + b"\x00"),
    ("trailing bytes", client_query() + b"\x12\x34\x56"),
    ("trailing byte after OPT", client_query(edns=1232) + b"\x00"),
    ("OPT rdlen too long", _mutate(client_query(edns=1232), b42=1)),
    ("EDNS version 1", _mutate(client_query(edns=1232), b39=1)),
    ("OPT type wrong", _mutate(client_query(edns=1232), b35=0x2A)),
    ("OPT owner not root", _mutate(client_query(), b11=1) + b"\x01a\x00" + wire.opt_record(1232, False)[1:]),
    ("compressed name", _mutate(client_query(), b12=0xC0)),
    ("truncated OPT", client_query(edns=1232)[:-1]),
])
def test_unusual_queries_go_slow(env, case, data):
    pipeline, *_ = env
    assert pipeline.answer_fast(data, False) is None, case
    assert pipeline.answer_fast(data, True) is None, case


def test_unusual_but_valid_queries_are_still_answered_by_the_slow_path(env):
    pipeline, cache, clock, entries = env
    entry = entries["www", False, False]
    for data in (client_query(rd=False), _mutate(client_query(), b2=0x05), _mutate(client_query(), b2=0x03)):
        assert pipeline.answer_fast(data, False) is None
        reply = slow(pipeline, data)
        assert reply == general_path(pipeline, data, entry)
        assert DNSRecord.parse(reply).header.rd == data[2] & 1


def test_class_ch_is_refused_by_the_slow_path_and_never_reaches_the_cache():
    """Non-IN classes are refused at parse (issue 13 item 5), so no CH entry is ever
    cached and the hit path, which does not check the class, has nothing to find."""
    pipeline, cache, clock = make_pipeline()
    data = client_query("version.bind", QTYPE.TXT, qclass=3)
    assert pipeline.answer_fast(data, False) is None
    reply = DNSRecord.parse(slow(pipeline, data))
    assert reply.header.rcode == 5 and reply.header.id == 0x4242  # REFUSED
    assert (str(reply.q.qname), reply.q.qclass) == ("version.bind.", 3)
    assert len(cache.entries) == 0


@pytest.mark.parametrize("qtype", [65, 97, 0x41, 90, 122])
def test_letter_types_go_slow_and_keys_stay_apart(qtype):
    pipeline, cache, clock = make_pipeline()
    soa = RR("example.com", QTYPE.SOA, rdata=SOA("ns.example.com", "h.example.com", (1, 2, 3, 4, 300)), ttl=300)
    entry = store(pipeline, "www.example.com", qtype, auth=[soa])  # NODATA
    other = 97 if qtype == 65 else 65
    data = client_query("WWW.example.com", qtype, edns=1232)
    assert pipeline.answer_fast(data, False) is None
    assert slow(pipeline, data) == general_path(pipeline, data, entry)
    assert pipeline.answer_fast(client_query("www.example.com", other), False) is None
    assert wire.parse_query(client_query("www.example.com", other)).key not in cache.entries


def test_type_above_255_is_answered_like_the_slow_path():
    pipeline, cache, clock = make_pipeline()
    soa = RR("example.com", QTYPE.SOA, rdata=SOA("ns.example.com", "h.example.com", (1, 2, 3, 4, 300)), ttl=300)
    entry = store(pipeline, "www.example.com", 257, auth=[soa])  # CAA, NODATA
    for data in (client_query("www.Example.com", 257), client_query("www.example.com", 257, edns=1232, do=True)):
        fast = pipeline.answer_fast(data, False)
        assert fast is None or fast == general_path(pipeline, data, entry)
    data = client_query("www.Example.com", 257)
    assert slow(pipeline, data) == general_path(pipeline, data, entry)


def _store_big(pipeline, strings: int, do=False):
    answers = [RR("big.example.com", QTYPE.TXT, rdata=TXT(f"{i:03d}" + "x" * 57), ttl=300) for i in range(strings)]
    return store(pipeline, "big.example.com", QTYPE.TXT, answers=answers, do=do)


def test_oversized_answer_over_udp_goes_slow_but_tcp_gets_it_all():
    pipeline, cache, clock = make_pipeline()
    entry = _store_big(pipeline, 12)  # ~ 900 bytes: over 512, under 1232
    plain = client_query("big.example.com", QTYPE.TXT)
    assert pipeline.answer_fast(plain, False) is None
    tc = slow(pipeline, plain)
    rec = DNSRecord.parse(tc)
    assert rec.header.tc == 1 and not rec.rr and len(tc) <= 512
    assert tc == general_path(pipeline, plain, entry)

    full = pipeline.answer_fast(plain, True)
    assert full is not None and len(full) > 512
    assert full == general_path(pipeline, plain, entry, tcp=True) == slow(pipeline, plain, tcp=True)
    assert len(DNSRecord.parse(full).rr) == 12

    with_edns = client_query("big.example.com", QTYPE.TXT, edns=1232)
    reply = pipeline.answer_fast(with_edns, False)
    assert reply is not None and len(DNSRecord.parse(reply).rr) == 12
    assert reply == general_path(pipeline, with_edns, entry)


def test_answer_over_edns_size_goes_slow():
    pipeline, cache, clock = make_pipeline()
    entry = _store_big(pipeline, 30)  # ~ 2.1 kB
    data = client_query("big.example.com", QTYPE.TXT, edns=1232, do=False)
    assert pipeline.answer_fast(data, False) is None
    assert DNSRecord.parse(slow(pipeline, data)).header.tc == 1
    big = client_query("big.example.com", QTYPE.TXT, edns=4096)
    assert pipeline.answer_fast(big, False) == general_path(pipeline, big, entry)
    assert pipeline.answer_fast(data, True) == general_path(pipeline, data, entry, tcp=True)


def test_answer_exactly_at_the_limit_is_served():
    pipeline, cache, clock = make_pipeline()
    plain = client_query("big.example.com", QTYPE.TXT)
    for n in range(1, 12):
        pipeline.cache.clear()
        entry = _store_big(pipeline, n)
        full = general_path(pipeline, plain, entry, tcp=True)
        fast = pipeline.answer_fast(plain, False)
        if len(full) <= 512:
            assert fast == full
        else:
            assert fast is None


# --------------------------------------------------------------- never raises
@pytest.mark.parametrize("tail,cd", [
    (tail, cd) for tail in (b"", b"\x00", b"\x00\x01", b"\x00\x01\x00") for cd in (False, True)
])
def test_truncated_question_returns_none(env, tail, cd):
    pipeline, *_ = env
    data = client_query("www.example.com", cd=cd)
    data = data[:12] + wire.name_to_wire("www.example.com") + tail
    with pytest.raises(FormatError):
        wire.parse_query(data)
    assert pipeline.answer_fast(data, False) is None


def _hdr(flags2: int, ar: int) -> bytes:
    return b"\x42\x42\x01" + bytes((flags2,)) + b"\x00\x01\x00\x00\x00\x00\x00" + bytes((ar,))


_Q = wire.name_to_wire("www.example.com") + b"\x00\x01\x00\x01"
_Q97 = wire.name_to_wire("www.example.com") + b"\x00\x61\x00\x01"


@pytest.mark.parametrize("case,data", ids=lambda v: v if isinstance(v, str) else "", argvalues=[
    ("no EDNS, question + 0x02 -> the DO entry", _hdr(0, 0) + _Q + b"\x02"),
    ("no EDNS, question + 0x01 -> the CD entry", _hdr(0, 0) + _Q + b"\x01"),
    ("no EDNS, question + 0x03 -> the DO+CD entry", _hdr(0, 0) + _Q + b"\x03"),
    ("no EDNS, CD=1, last byte missing -> the plain entry", _hdr(0x10, 0) + _Q[:-1]),
    ("EDNS DO=0, question + 0x02, known OPT -> the DO entry", _hdr(0, 1) + _Q + b"\x02"
     + wire.opt_record(1232, False)),
    ("EDNS DO=0, CD=1, last byte missing -> the plain entry", _hdr(0x10, 1) + _Q[:-1]
     + wire.opt_record(1232, False)),
    ("no EDNS, type 97 question + 0x10 -> the marked type-97 entry", _hdr(0, 0) + _Q97 + b"\x10"),
])
def test_fast_path_never_answers_what_the_parser_refuses(case, data):
    pipeline, cache, clock = make_pipeline()
    populate(pipeline)
    soa = RR("example.com", QTYPE.SOA, rdata=SOA("ns.example.com", "h.example.com", (1, 2, 3, 4, 300)), ttl=300)
    store(pipeline, "www.example.com", 97, auth=[soa])
    # teach the hit path the usual OPT shapes first
    for do in (False, True):
        assert pipeline.answer_fast(client_query(edns=1232, do=do), False) is not None
    with pytest.raises(FormatError):
        wire.parse_query(data)
    reply = pipeline.answer_fast(data, False)
    assert reply is None, f"{case}: answered {reply!r}"


@pytest.mark.parametrize("length", range(41))
def test_garbage_never_raises(env, length):
    pipeline, *_ = env
    rng = random.Random(length)
    valid = [client_query(n, t, edns=e, do=d) for n, t in (("www.example.com", 1), ("v6.example.com", 28), ("a.b", 1))
             for e, d in ((None, False), (1232, True))]
    samples = [bytes(rng.getrandbits(8) for _ in range(length)) for _ in range(60)]
    # random bodies behind a header that passes the fast path's header check
    hdr = b"\x00\x00\x01\x00\x00\x01\x00\x00\x00\x00"
    for _ in range(120):
        body = bytearray(rng.getrandbits(8) for _ in range(length))
        if length >= 12:
            body[0:12] = hdr + bytes((0, rng.choice((0, 0, 1, 2))))
        samples.append(bytes(body))
    samples += [v[:length] for v in valid]  # every prefix of valid (cached) queries
    samples += [v[:12] + bytes(length) for v in valid]
    for data in samples:
        for tcp in (False, True):
            reply = pipeline.answer_fast(data, tcp)
            assert reply is None or isinstance(reply, bytes)
            if reply is not None:
                wire.parse_query(data)  # the fast path never answers what the parser refuses


# --------------------------------------------------------------- async resolve
def test_resolve_on_cached_fresh_entry_matches_answer_fast():
    pipeline, cache, clock = make_pipeline()
    populate(pipeline)
    clock.advance(42)
    for data in (client_query("www.example.com"), client_query("WWW.example.COM", edns=4096, do=True, cd=True),
                 client_query("v6.example.com", QTYPE.AAAA, edns=512), client_query("nx.example.com")):
        fast = pipeline.answer_fast(data, False)
        assert fast is not None

        async def go():
            return (await pipeline.resolve(data, False)).reply

        assert asyncio.run(go()) == fast
    assert pipeline.stats.cache_misses == 0
    assert not pipeline.inflight


@pytest.mark.parametrize("path", ["fast", "slow"])
@pytest.mark.parametrize("stored_at_fraction", [0.1, 0.5, 0.9])
def test_ttls_never_state_more_time_left_than_there_is(path, stored_at_fraction):
    """A TTL-300 answer cached at x.1 and asked 2.2 s later has 297.8 s left: the
    client must see at most 297 (whole seconds left), never 298 or 299 — on both
    paths, for positive answers and for the SOA TTL of a negative one."""
    pipeline, cache, clock = make_pipeline()
    clock.advance(stored_at_fraction)
    entries = populate(pipeline)
    for elapsed in (0.0, 0.3, 1.0, 2.2, 2.9, 59.99, 60.0, 60.01):
        now = START + stored_at_fraction + elapsed
        clock.advance(now - clock.monotonic())
        for name, qtype, data_ttl in (("www.example.com", QTYPE.A, 300), ("nx.example.com", QTYPE.A, 400)):
            data = client_query(name, qtype)
            if path == "fast":
                reply = pipeline.answer_fast(data, False)
            else:
                reply = asyncio.run(pipeline.resolve(data, False)).reply
            msg = DNSRecord.parse(reply)
            rr = msg.rr[0] if msg.rr else msg.auth[0]
            left = data_ttl - (clock.monotonic() - (START + stored_at_fraction))
            assert rr.ttl <= left + 1e-6, (name, elapsed, rr.ttl, left)
            assert rr.ttl == math.floor(left + 1e-9), (name, elapsed, rr.ttl, left)


def test_fast_path_stands_alone_and_hands_prefetch_to_its_callback():
    """``FastPath`` needs only the cache, the clock, something with an ``epoch`` and a
    prefetch callback: no pipeline, no loop.  Near expiry it asks the callback (once per
    second per entry, when the aged body is rebuilt) and still answers from cache."""
    import dataclasses

    from resolver.config import CacheConfig
    from resolver.serve.fastpath import FastPath

    config = dataclasses.replace(Config(), cache=dataclasses.replace(CacheConfig(), prefetch=0.1))
    pipeline, cache, clock = make_pipeline(config)
    entry = store(pipeline, "solo.example.com", answers=[RR("solo.example.com", QTYPE.A, rdata=A("192.0.2.8"),
                                                            ttl=100)])
    entry.prefetch_after = clock.monotonic() + 90
    asked = []
    fast = FastPath(config, cache, NoPool(), clock, asked.append)
    data = client_query("solo.example.com")
    assert fast.answer_fast(data, False) == pipeline.answer_fast(data, False) is not None
    assert asked == []
    clock.advance(95)
    reply = fast.answer_fast(data, False)
    assert DNSRecord.parse(reply).a.ttl == 5 and asked == [wire.parse_query(data).key]
