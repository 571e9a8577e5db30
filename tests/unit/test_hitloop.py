"""The native hit loop (serve/_hitloop.c) held to the Python hit path, byte for byte.

``FastPath.answer_fast`` is the reference.  For every query the native entry point
(``HitLoop.answer``: the same C function ``serve`` runs per datagram, without a
socket) either declines — and then changes nothing — or sends exactly Python's
bytes and counts exactly Python's hit in the same metrics cell.  It may decline
only what Python answers with a side effect (renewing the aged copy once a
second, with the LRU touch and prefetch check; a stale answer under the failure
recheck timer) or with its OPT-shape memo (see ``_declined_by_design``); once
Python has renewed the copy, native must answer what Python answered.

A table of cases, then hypothesis-generated entries and queries (0x20 case, AD,
CD, DO, EDNS sizes, options, ages), then mutations of valid queries.
"""

from __future__ import annotations

import copy
import dataclasses
import socket
import struct

import pytest
from dnslib import QTYPE, RR, SOA, TXT, A, DNSLabel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resolver import wire
from resolver.config import Config, StaleConfig
from resolver.serve import batch
from resolver.errors import FormatError
from tests.support.packets import client_query, upstream_reply
from tests.support.pipeline import make_pipeline, store

pytestmark = pytest.mark.skipif(batch.unavailable() is not None, reason=f"native hit loop: {batch.unavailable()}")


def _native(fd: int = -1):
    from resolver.serve import _hitloop
    return _hitloop.HitLoop(fd, batch._KEY_PREFIXES)


def cells(pipeline) -> dict:
    return {label: (c.fresh, c.stale) for label, c in pipeline.stats.tally.cells.items()}


def entry_state(pipeline) -> tuple:
    entries = pipeline.cache.entries
    return list(entries), [(e.aged_until, e.aged) for e in entries.values()]


def raw_query(qid: int, flags: int, question: bytes, opt: bytes | None) -> bytes:
    return struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 1 if opt is not None else 0) + question + (opt or b"")


def opt_rr(size: int, do: bool, options: bytes = b"", version: int = 0) -> bytes:
    return b"\x00\x00\x29" + struct.pack(">HBBHH", size, 0, version, 0x8000 if do else 0, len(options)) + options


def _declined_by_design(data: bytes) -> bool:
    """Queries Python may answer only through its OPT-shape memo (fastpath._opt_at), which the
    native code declines rather than imitate: a zero byte inside a label, or an OPT record
    with options whose last 11 bytes look like an OPT record without any."""
    if len(data) < 12 or data[11] != 1:
        return False
    n, z = len(data), data.find(b"\x00", 12)
    e = z + 5
    if z < 0 or n < e + 11:
        return True
    if data[e:e + 3] != b"\x00\x00\x29" or data[e + 6] or n != e + 11 + (data[e + 9] << 8 | data[e + 10]):
        return True  # not an OPT where the first zero byte says: only the memo can read this query
    tail = data[-11:]
    return n > e + 11 and tail[:3] == b"\x00\x00\x29" and tail[6] == 0 and tail[9:] == b"\x00\x00"


class Twin:
    """Asks native then Python, the order the batched loop asks them, and checks the contract."""

    def __init__(self, pipeline, clock):
        self.pipeline, self.clock = pipeline, clock
        self.loop = _native()
        self.answered = self.declined = self.renewed = 0

    def native(self, data: bytes) -> bytes | None:
        fast = self.pipeline.fast
        return self.loop.answer(data, fast.entries, self.clock.monotonic(), *fast.opt_fresh, fast.renew)

    def ask(self, data: bytes) -> bytes | None:
        p = self.pipeline
        before, state = cells(p), entry_state(p)
        copies, order, now = {k: copy.copy(e) for k, e in p.cache.entries.items()}, list(p.cache.entries), \
            self.clock.monotonic()
        n = self.native(data)
        self.check_renewal(copies, order, now)
        after_native = cells(p)
        if n is None:
            self.declined += 1
            assert after_native == before, "a declined datagram must not be counted"
            assert entry_state(p) == state, "a declined datagram must not touch the cache"
        py = p.answer_fast(data, False)
        after_py = cells(p)
        if n is not None:
            self.answered += 1
            assert n == py, "native bytes differ from the Python hit path"
            assert _delta(before, after_native) == _delta(after_native, after_py), "counted in another cell"
            assert sum(f for f, _ in _delta(before, after_native).values()) == 1
            return n
        # Python may have renewed the aged copy (once a second): now native must agree.
        fresh_hit = py is not None and any(d[0] for d in _delta(after_native, after_py).values())
        again = self.native(data)
        if fresh_hit and not _declined_by_design(data):
            assert again == py, "native declined a fresh hit whose aged copy is current"
            self.answered += 1
        elif not fresh_hit:
            assert again is None, "native answered what Python does not answer fresh"
        return py


    def check_renewal(self, copies: dict, order: list, now: float) -> None:
        """An entry the native code renewed holds what ``Entry.aged_body`` computes on a copy
        of it as it was (the TTLs aged, ``aged_until``), and only it moved to the LRU's end."""
        entries = self.pipeline.cache.entries
        renewed = [k for k, e in entries.items() if (e.aged_until, e.aged) != (copies[k].aged_until, copies[k].aged)]
        assert len(renewed) <= 1
        if renewed:
            [key], old = renewed, copies[renewed[0]]
            assert (entries[key].aged, entries[key].aged_until) == (old.aged_body(now), old.aged_until)
            assert list(entries) == [k for k in order if k != key] + [key]
            self.renewed += 1
        else:
            assert list(entries) == order


def _delta(a: dict, b: dict) -> dict:
    return {k: (b[k][0] - a.get(k, (0, 0))[0], b[k][1] - a.get(k, (0, 0))[1]) for k in b
            if b[k] != a.get(k, (0, 0))}


def _populate(pipeline):
    for do in (False, True):
        for cd in (False, True):
            store(pipeline, "www.example.com", QTYPE.A, do=do, cd=cd,
                  answers=[RR("www.example.com", QTYPE.A, rdata=A(f"192.0.2.{1 + 2 * do + cd}"), ttl=300),
                           RR("www.example.com", QTYPE.A, rdata=A("198.51.100.1"), ttl=200)])
            store(pipeline, "nx.example.com", QTYPE.A, do=do, cd=cd, rcode=3,
                  auth=[RR("example.com", QTYPE.SOA,
                           rdata=SOA("ns.example.com", "h.example.com", (1, 2, 3, 4, 400)), ttl=900)])
    store(pipeline, "big.example.com", QTYPE.TXT, answers=[RR("big.example.com", QTYPE.TXT, rdata=TXT("x" * 200),
                                                             ttl=60) for _ in range(4)])


@pytest.fixture
def twin():
    pipeline, cache, clock = make_pipeline()
    _populate(pipeline)
    return Twin(pipeline, clock)


Q = client_query


@pytest.mark.parametrize("case,data", ids=lambda v: v if isinstance(v, str) else "", argvalues=[
    ("plain", Q()),
    ("0x20 case", Q("WwW.eXaMpLe.CoM", qid=0xBEEF)),
    ("CD", Q(cd=True)),
    ("AD", raw_query(7, 0x0120, wire.name_to_wire("www.example.com") + b"\x00\x01\x00\x01", None)),
    ("EDNS 512", Q(edns=512)),
    ("EDNS 1232", Q(edns=1232)),
    ("EDNS below 512 (read as 512)", Q(edns=100)),
    ("EDNS DO", Q(edns=1232, do=True)),
    ("EDNS DO CD", Q(edns=4096, do=True, cd=True)),
    ("EDNS cookie option", raw_query(9, 0x0100, wire.name_to_wire("www.example.com") + b"\x00\x01\x00\x01",
                                     opt_rr(1232, False, b"\x00\x0a\x00\x08" + b"c" * 8))),
    ("NXDOMAIN", Q("nx.example.com")),
    ("NXDOMAIN DO", Q("NX.example.com", edns=1232, do=True)),
    ("over 512 without EDNS: TC by Python", Q("big.example.com", QTYPE.TXT)),
    ("over 512 with EDNS 1232", Q("big.example.com", QTYPE.TXT, edns=1232)),
    ("miss", Q("other.example.com")),
    ("other type", Q("www.example.com", QTYPE.MX)),
    ("RD=0", Q(rd=False)),
    ("QR=1", bytes([0, 1, 0x81, 0]) + Q()[4:]),
    ("opcode NOTIFY", bytes([0, 1, 0x21, 0]) + Q()[4:]),
    ("TC=1", bytes([0, 1, 0x03, 0]) + Q()[4:]),
    ("Z=1", bytes([0, 1, 0x01, 0x40]) + Q()[4:]),
    ("QDCOUNT=2", Q()[:5] + b"\x02" + Q()[6:]),
    ("ARCOUNT=2", Q(edns=1232)[:11] + b"\x02" + Q(edns=1232)[12:]),
    ("AR=1 without OPT", Q()[:11] + b"\x01" + Q()[12:]),
    ("trailing byte", Q() + b"\x00"),
    ("trailing byte after OPT", Q(edns=1232) + b"\x00"),
    ("OPT version 1", raw_query(1, 0x0100, wire.name_to_wire("www.example.com") + b"\x00\x01\x00\x01",
                                opt_rr(1232, False, version=1))),
    ("OPT rdlen too long", Q(edns=1232)[:-1] + b"\x01"),
    ("truncated OPT", Q(edns=1232)[:-1]),
    ("header only", Q()[:12]),
    ("short", Q()[:11]),
    ("empty", b""),
    ("class CH", Q(qclass=3)),
    ("compressed name", Q()[:12] + b"\xc0\x0c\x00\x01\x00\x01"),
])
@pytest.mark.parametrize("age", [0, 0.5, 1, 1.25, 150.5, 299.99, 301, 10 ** 6])
def test_native_matches_python_hit_path(twin, case, data, age):
    twin.clock.advance(age)
    twin.ask(data)
    twin.ask(data)  # the second time the aged copy is current
    if case in ("plain", "0x20 case", "EDNS DO CD", "NXDOMAIN DO") and age < 200:
        assert twin.answered >= 1, "the common queries must be answered natively"
        assert twin.renewed == (age > 0), "a copy older than its second is renewed natively, once"


def test_native_keeps_client_id_and_question_case(twin):
    data = Q("WwW.ExAmPle.COM", qid=0x1234, edns=1232, do=True)
    twin.ask(data)
    reply = twin.native(data)
    assert reply[:2] == b"\x12\x34"
    q = wire.parse_query(data)
    assert reply[12:q.qend] == q.question  # 0x20 case echoed (draft-vixie-dnsext-dns0x20)


def test_native_renews_the_aged_copy_through_python_as_the_python_hit_does():
    """Past ``aged_until`` (once a second per entry) both paths renew through
    ``FastPath.renew``: the same TTLs, the same LRU touch, the same prefetch check.
    Two identical pipelines, one asked natively, one in Python, end in the same state."""
    twins = []
    for _ in range(2):
        pipeline, _, clock = make_pipeline()
        _populate(pipeline)
        prefetched = []
        pipeline.fast._prefetch = prefetched.append
        twins.append((Twin(pipeline, clock), prefetched))
    data, other = Q(), Q("nx.example.com")
    key = wire.parse_query(data).key
    for twin, _ in twins:
        twin.clock.advance(1.5)
        twin.pipeline.cache.entries[key].prefetch_after = twin.clock.monotonic()  # due: the renewal checks it
        assert list(twin.pipeline.cache.entries)[-1] != key
    (native, native_prefetched), (python, python_prefetched) = twins
    assert native.native(data) == python.pipeline.answer_fast(data, False) is not None
    assert entry_state(native.pipeline) == entry_state(python.pipeline)
    assert list(native.pipeline.cache.entries)[-1] == key  # touched (LRU)
    assert native_prefetched == python_prefetched == [key]
    assert cells(native.pipeline) == cells(python.pipeline)
    ttl = struct.unpack(">I", native.native(data)[-10:-6])[0]
    assert ttl == 200 - 2  # 1.5 s rounds up to 2 (RFC 1035 section 3.2.1: never more time than is left)
    # an entry whose copy is current is not renewed again: nothing moves, nothing is prefetched
    native.native(other)
    assert native.native(data) is not None and list(native.pipeline.cache.entries)[-1] != key
    assert native_prefetched == [key]


def test_a_renewal_that_raises_is_declined_and_left_to_python(twin):
    """A renewal with a prefetch due is Python's (FastPath.renew); if it raises, the datagram
    is declined and Python's path meets the error in its own handler."""
    data = Q()
    twin.clock.advance(1.5)
    twin.pipeline.cache.entries[wire.parse_query(data).key].prefetch_after = twin.clock.monotonic()

    def broken(key, entry, now):
        raise RuntimeError("bug in renew")
    fast = twin.pipeline.fast
    before = entry_state(twin.pipeline)
    assert twin.loop.answer(data, fast.entries, twin.clock.monotonic(), *fast.opt_fresh, broken) is None
    assert entry_state(twin.pipeline) == before
    assert twin.native(data) == twin.pipeline.answer_fast(data, False)


def test_native_declines_stale_recheck_answers(twin):
    """The failure recheck timer's stale answers (RFC 8767 §4) stay in Python: native declines."""
    data = Q("nx.example.com")
    entry = twin.pipeline.cache.entries[wire.parse_query(data).key]
    twin.clock.advance(1000)  # past fresh_until, within the stale window
    entry.recheck_until = twin.clock.monotonic() + 30
    entry.recheck_epoch = twin.pipeline.pool.epoch
    stale_before = twin.pipeline.stats.tally.stale_hits()
    assert twin.native(data) is None
    assert twin.pipeline.answer_fast(data, False) is not None
    assert twin.pipeline.stats.tally.stale_hits() == stale_before + 1


def test_native_follows_a_reload_of_the_edns_size(twin):
    config = dataclasses.replace(Config(), upstream=dataclasses.replace(Config().upstream, edns_buffer_size=1400))
    twin.pipeline.configure(config)
    data = Q(edns=4096)
    assert twin.ask(data) is not None and twin.answered
    assert twin.native(data)[-11:] == wire.opt_record(1400, False)


# ---------------------------------------------------------------- hypothesis
LABEL_BYTES = st.binary(min_size=1, max_size=12).filter(lambda b: b != b"")
PLAIN_LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1,
                      max_size=12).map(str.encode)
# the bytes around the ASCII letters, where a case-folding bug would show: @ [ ` { and 0xC1/0xE1 (Latin-1 letters)
EDGE_LABEL = st.text(alphabet="aZ@[`{\x7f", min_size=1, max_size=6).map(str.encode) | st.sampled_from(
    [b"\xc1", b"\xe1x", b"A\x00B"])
LABELS = st.lists(st.one_of(PLAIN_LABEL, PLAIN_LABEL, EDGE_LABEL, LABEL_BYTES), min_size=1, max_size=4)


def flip_case(label: bytes, mask: int) -> bytes:
    return bytes(c ^ 0x20 if (0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A) and (mask >> (i % 31)) & 1 else c
                 for i, c in enumerate(label))


def store_labels(pipeline, labels, qtype, *, do, cd, rcode, answers, auth):
    """tests.support.pipeline.store for a name given as raw labels (any bytes): as the miss path caches."""
    question = b"".join(bytes((len(lab),)) + lab for lab in labels) + b"\x00" + struct.pack(">HH", qtype, 1)
    q = wire.parse_query(raw_query(1, 0x0100 | (0x10 if cd else 0), question, opt_rr(1232, do)))
    upstream_question = q.qname.lower() + q.question[-4:]
    lowered = DNSLabel([lab.lower() for lab in labels])
    reply = upstream_reply(lowered, qtype, qid=99, rcode=rcode, answers=answers, auth=auth, do=do, cd=cd)
    wire.check_reply_matches(reply, 99, upstream_question)
    c = pipeline.config.cache
    prepared = wire.parse_reply(reply, upstream_question, min_ttl=c.min_ttl, max_ttl=c.max_ttl,
                                max_negative_ttl=c.max_negative_ttl)
    return pipeline.cache.put(q.key, prepared, pipeline.clock.monotonic(), pipeline.stale_window)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labels=LABELS, qtype=st.sampled_from([1, 28, 16, 15, 33, 65, 97, 255, 0x4141, 300]),
       rcode=st.sampled_from([0, 3]), ttl=st.integers(1, 4000), do=st.booleans(), cd=st.booleans(),
       ad=st.booleans(), edns=st.one_of(st.none(), st.integers(0, 65535)), mask=st.integers(0, 2 ** 31),
       qid=st.integers(0, 65535), ages=st.lists(st.floats(0, 5000), max_size=4), stale_on=st.booleans(),
       cookie=st.booleans(), records=st.integers(1, 30))
def test_generated_entries_and_queries_match(labels, qtype, rcode, ttl, do, cd, ad, edns, mask, qid, ages, stale_on,
                                             cookie, records):
    config = Config() if stale_on else dataclasses.replace(Config(), stale=dataclasses.replace(StaleConfig(),
                                                                                              enabled=False))
    pipeline, cache, clock = make_pipeline(config)
    name = DNSLabel(labels)
    if sum(len(lab) + 1 for lab in labels) + 1 > 255:
        return
    do = do and edns is not None
    answers = [] if rcode else [RR(name, qtype, rdata=TXT(f"r{i}") if qtype != 1 else A(f"192.0.2.{i}"), ttl=ttl)
                                for i in range(records)]
    auth = [RR("example", QTYPE.SOA, rdata=SOA("ns.example", "h.example", (1, 2, 3, 4, ttl)), ttl=ttl)] if rcode else []
    try:
        store_labels(pipeline, labels, qtype, do=do, cd=cd, rcode=rcode, answers=answers, auth=auth)
    except FormatError:  # a question the miss path would not cache either
        return
    question = b"".join(bytes((len(lab),)) + flip_case(lab, mask) for lab in labels) + b"\x00" + \
        struct.pack(">HH", qtype, 1)
    flags = 0x0100 | (0x20 if ad else 0) | (0x10 if cd else 0)
    opt = None if edns is None else opt_rr(edns, do, b"\x00\x0a\x00\x08" + b"k" * 8 if cookie else b"")
    data = raw_query(qid, flags, question, opt)
    twin = Twin(pipeline, clock)
    twin.ask(data)
    for age in ages:
        clock.advance(age)
        twin.ask(data)
        twin.ask(data)


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255), st.sampled_from(["set", "insert", "delete"])),
                      min_size=1, max_size=4),
       base=st.sampled_from([Q(), Q(edns=1232), Q(edns=1232, do=True, cd=True), Q("nx.example.com", edns=512)]))
def test_mutated_queries_match(edits, base):
    pipeline, cache, clock = make_pipeline()
    _populate(pipeline)
    twin = Twin(pipeline, clock)
    data = bytearray(base)
    for at, value, op in edits:
        at = min(at, len(data))
        if op == "set" and at < len(data):
            data[at] = value
        elif op == "insert":
            data.insert(at, value)
        elif op == "delete" and at < len(data):
            del data[at]
    twin.ask(bytes(data))


# ---------------------------------------------------------------- fuzz: no crash, whatever the bytes
@pytest.mark.fuzz
@settings(max_examples=3000, deadline=None)
@given(prefix=st.sampled_from([b"", b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",
                               b"\x00\x01\x01\x30\x00\x01\x00\x00\x00\x00\x00\x01"]),
       tail=st.binary(max_size=600))
def test_fuzz_native_entry_point(prefix, tail):
    pipeline, cache, clock = make_pipeline()
    _populate(pipeline)
    Twin(pipeline, clock).ask(prefix + tail)


@pytest.mark.fuzz
@settings(max_examples=200, deadline=None)
@given(datagrams=st.lists(st.one_of(st.binary(max_size=300), st.sampled_from([Q(), Q(edns=1232, do=True)])),
                          min_size=1, max_size=80))
def test_fuzz_serve_over_a_socket(datagrams):
    """``serve`` on a real socket: every datagram comes back either as a hit reply (the Python
    bytes) or declined with its exact bytes and the sender's address; nothing lost, no crash."""
    pipeline, cache, clock = make_pipeline()
    _populate(pipeline)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 0))
        server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        client.bind(("127.0.0.1", 0))
        client.settimeout(2)
        for data in datagrams:
            client.sendto(data, server.getsockname())
        loop = _native(server.fileno())
        fast = pipeline.fast
        hits, declined = 0, []
        while hits + len(declined) < len(datagrams):
            got, h, dec, unsent, errors = loop.serve(fast.entries, {"127.0.0.1"}, clock.monotonic(), *fast.opt_fresh,
                                                        fast.renew)
            assert got and unsent is None and errors == 0
            hits += h
            declined += dec or []
        expected_hits = [d for d in datagrams if fast.answer_fast(d, False) is not None]
        assert hits == len(expected_hits)
        assert [d for d, _ in declined] == [d for d in datagrams if fast.answer_fast(d, False) is None]
        assert all(addr == client.getsockname() for _, addr in declined)
        replies = [client.recv(65535) for _ in range(hits)]
        assert replies == [fast.answer_fast(d, False) for d in expected_hits]
    finally:
        server.close()
        client.close()


def test_serve_declines_every_datagram_from_an_address_the_acl_memo_does_not_know(twin):
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        for _ in range(3):
            client.sendto(Q(), server.getsockname())
        loop = _native(server.fileno())
        fast = twin.pipeline.fast
        got, hits, declined, _, _ = loop.serve(fast.entries, set(), twin.clock.monotonic(), *fast.opt_fresh,
                                                 fast.renew)
        assert (got, hits, len(declined)) == (3, 0, 3)
        # and with hits off (query log, rate limiting): everything declined even from a known address
        for _ in range(2):
            client.sendto(Q(), server.getsockname())
        got, hits, declined, _, _ = loop.serve(None, {"127.0.0.1"}, twin.clock.monotonic(), b"", b"", None)
        assert (got, hits, len(declined)) == (2, 0, 2)
    finally:
        server.close()
        client.close()


# ---------------------------------------------------------------- ready(): the reader callback itself
class _Protocol:
    """What ``HitLoop.attach`` reads from the listeners' UDP protocol."""

    def __init__(self, pipeline):
        self.fast = pipeline.answer_fast
        self.allowed = {"127.0.0.1"}
        self.stats = pipeline.stats


def _hit_path(fast):
    return getattr(fast, "__self__", None)


@pytest.fixture
def sockets():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    client.bind(("127.0.0.1", 0))
    client.settimeout(2)
    yield server, client
    server.close()
    client.close()


def test_ready_answers_hits_counts_them_and_hands_the_rest_to_slow_once_per_batch(twin, sockets):
    server, client = sockets
    sent = [Q(), Q("other.example.com"), Q("WwW.example.com", edns=1232, do=True), b"junk"]
    for data in sent:
        client.sendto(data, server.getsockname())
    loop, proto, calls = _native(server.fileno()), _Protocol(twin.pipeline), []
    loop.attach(proto, twin.clock.monotonic, _hit_path, lambda *args: calls.append(args))
    before = proto.stats.queries_udp
    assert loop.ready() is None
    assert proto.stats.queries_udp == before + 2
    assert calls == [([(sent[1], client.getsockname()), (sent[3], client.getsockname())], None, 0, None)]
    assert [client.recv(65535) for _ in range(2)] == [twin.pipeline.answer_fast(sent[i], False) for i in (0, 2)]
    assert loop.ready() is None and len(calls) == 1  # nothing queued: nothing read, nothing handed over


def test_ready_stops_when_slow_closes_the_loop_and_raises_what_slow_raises(twin, sockets):
    server, client = sockets
    for _ in range(3 * 64):  # three batches' worth, all declined (misses)
        client.sendto(Q("other.example.com"), server.getsockname())
    loop, proto = _native(server.fileno()), _Protocol(twin.pipeline)
    batches = []

    def closing(declined, unsent, errors, exc):
        batches.append(len(declined))
        loop.close()  # the transport closes from inside the callback: ready() must stop, not crash

    loop.attach(proto, twin.clock.monotonic, _hit_path, closing)
    assert loop.ready() is None and batches == [64]
    assert loop.ready() is None and batches == [64]  # closed: a stale callback does nothing

    loop = _native(server.fileno())

    def broken(*args):
        raise RuntimeError("bug in the slow path")
    loop.attach(proto, twin.clock.monotonic, _hit_path, broken)
    with pytest.raises(RuntimeError, match="bug in the slow path"):  # uvloop logs it; the reader stays
        loop.ready()


def test_refresh_reads_the_protocols_hit_path_again(twin, sockets):
    server, client = sockets
    loop, proto, calls = _native(server.fileno()), _Protocol(twin.pipeline), []
    loop.attach(proto, twin.clock.monotonic, _hit_path, lambda *args: calls.append(args))
    proto.fast = lambda data, tcp: None  # the query log's stand-in: not a FastPath
    client.sendto(Q(), server.getsockname())
    loop.ready()
    assert calls == [] and client.recv(65535)  # still the old hit path until refresh()
    loop.refresh()
    client.sendto(Q(), server.getsockname())
    loop.ready()
    assert [[data for data, _ in declined] for declined, *_ in calls] == [[Q()]]
