"""local.py: what is answered here (never upstream, never stale) and what is not.

Pure: queries are built with dnspython, answered by LocalAnswers, and the reply
bytes parsed back with dnspython.
"""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from resolver import wire
from resolver.cache.store import Cache
from resolver.config import parse_config
from resolver.errors import FormatError
from resolver.local.answers import BLOCK_TTL, Chase, LocalAnswers, purge
from resolver.local.hosts import parse_hosts
from resolver.wire.records import index

RECORDS = [
    "printer.lan. 300 IN A 192.0.2.20",
    "printer.lan. 300 IN A 192.0.2.21",
    'printer.lan. 120 IN TXT "room 4"',
    "alias.lan. 60 IN CNAME printer.lan.",
    "alias2.lan. 60 IN CNAME alias.lan.",
    "loop1.lan. 60 IN CNAME loop2.lan.",
    "loop2.lan. 60 IN CNAME loop1.lan.",
    "ext.lan. 60 IN CNAME www.example.com.",
    "20.2.0.192.in-addr.arpa. 300 IN PTR printer.lan.",
    "router.home.arpa. 30 IN A 192.168.1.1",
]


def make(records=RECORDS, blocks=("home.arpa", "internal.example")) -> LocalAnswers:
    config = parse_config({"upstreams": ["192.0.2.53"], "local_records": list(records),
                           "block_zones": list(blocks)})
    return LocalAnswers(config)


def ask(local: LocalAnswers, name: str, rdtype: str = "A", *, edns=True, rd=True, cd=False,
        rdclass="IN", limit=None, qid=None):
    q = dns.message.make_query(name, rdtype, rdclass=rdclass, use_edns=0 if edns else False)
    if not rd:
        q.flags &= ~dns.flags.RD
    if cd:
        q.flags |= dns.flags.CD
    if qid is not None:
        q.id = qid
    query = validated(q.to_wire())
    reply = local.answer(query, limit or (query.udp_size), 1232)
    return None if reply is None else dns.message.from_wire(reply)


def validated(data: bytes) -> wire.Query:
    """``wire.parse_query``, but a question the parse stage refuses (a non-IN class or a
    meta-type: the pipeline answers it REFUSED/FORMERR before local answers) is still
    handed over, so local.py's own handling of any class stays tested on its own."""
    try:
        return wire.parse_query(data)
    except FormatError as e:
        if not (e.rcode == wire.REFUSED or e.reason.endswith("is not a question")):
            raise
        return wire.Query(data, e.question_end, e.edns, 1232 if e.edns else 512, False)


def rrs(section):
    return sorted(line for rrset in section for line in rrset.to_text().splitlines())


def test_local_record_answers_with_aa_and_its_ttl():
    r = ask(make(), "printer.lan")
    assert r.rcode() == dns.rcode.NOERROR
    assert r.flags & dns.flags.AA and r.flags & dns.flags.QR and r.flags & dns.flags.RA
    assert rrs(r.answer) == ["printer.lan. 300 IN A 192.0.2.20", "printer.lan. 300 IN A 192.0.2.21"]


def test_client_spelling_and_id_are_echoed():
    r = ask(make(), "PrInTeR.LaN", qid=4242)
    assert r.id == 4242
    assert r.question[0].name.to_text() == "PrInTeR.LaN."


def test_rd_and_cd_follow_the_client():
    r = ask(make(), "printer.lan", rd=False, cd=True)
    assert not r.flags & dns.flags.RD
    assert r.flags & dns.flags.CD


def test_missing_type_is_nodata_with_an_soa_for_negative_caching():
    r = ask(make(), "printer.lan", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    (soa,) = r.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.name.to_text() == "printer.lan."
    assert soa.ttl == 120 and soa[0].minimum == 120  # the name's shortest TTL (RFC 2308 §5)


def test_cname_is_followed_through_local_data():
    r = ask(make(), "alias2.lan")
    assert rrs(r.answer) == ["alias.lan. 60 IN CNAME printer.lan.", "alias2.lan. 60 IN CNAME alias.lan.",
                             "printer.lan. 300 IN A 192.0.2.20", "printer.lan. 300 IN A 192.0.2.21"]


def test_cname_to_an_outside_name_asks_for_the_target():
    local = make()
    q = wire.parse_query(dns.message.make_query("EXT.lan", "AAAA", want_dnssec=True).to_wire())
    chase = local.answer(q, 1232, 1232)
    assert isinstance(chase, Chase) and chase.target == wire.name_to_wire("www.example.com")
    sub = wire.parse_query(chase.subquery(q))  # a valid query: same ID, type, DO and EDNS size
    assert (sub.qname, sub.qtype, sub.do, sub.udp_size, sub.id) == (chase.target, 28, True, q.udp_size, q.id)


def test_cname_loop_terminates():
    r = ask(make(), "loop1.lan")
    assert r.rcode() == dns.rcode.NOERROR
    assert len(r.answer) == 2


def test_cname_query_gets_the_cname_only():
    r = ask(make(), "alias.lan", "CNAME")
    assert rrs(r.answer) == ["alias.lan. 60 IN CNAME printer.lan."]


def test_txt_and_ptr_and_any():
    local = make()
    assert rrs(ask(local, "printer.lan", "TXT").answer) == ['printer.lan. 120 IN TXT "room 4"']
    assert rrs(ask(local, "20.2.0.192.in-addr.arpa", "PTR").answer) == [
        "20.2.0.192.in-addr.arpa. 300 IN PTR printer.lan."]
    assert len(ask(local, "printer.lan", "ANY").answer) == 2  # A rrset + TXT rrset


@pytest.mark.parametrize("name", ["localhost", "LocalHost.", "foo.localhost", "a.b.localhost"])
def test_localhost_rfc6761(name):
    local = make()
    assert rrs(ask(local, name, "A").answer) == [f"{name.rstrip('.')}. 3600 IN A 127.0.0.1"]
    assert rrs(ask(local, name, "AAAA").answer) == [f"{name.rstrip('.')}. 3600 IN AAAA ::1"]
    r = ask(local, name, "MX")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.authority[0].rdtype == dns.rdatatype.SOA


def test_localhost_is_a_label_boundary_match():
    assert ask(make(), "notlocalhost", "A") is None
    assert ask(make(), "localhost.example", "A") is None


@pytest.mark.parametrize("name", ["home.arpa", "x.home.arpa", "a.b.internal.example", "HOME.ARPA"])
def test_block_zones_nxdomain_with_soa(name):
    r = ask(make(), name, "A")
    assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer
    (soa,) = r.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == BLOCK_TTL and soa[0].minimum == BLOCK_TTL
    assert soa.name.to_text().lower() in ("home.arpa.", "internal.example.")


def test_block_applies_to_every_class():
    assert ask(make(), "x.home.arpa", "TXT", rdclass="CH").rcode() == dns.rcode.NXDOMAIN


def test_local_data_inside_a_blocked_zone_still_answers():
    assert rrs(ask(make(), "router.home.arpa").answer) == ["router.home.arpa. 30 IN A 192.168.1.1"]


@pytest.mark.parametrize("name", ["www.example.com", "xhome.arpa", "lan", "printer.lan.example", "."])
def test_other_names_are_not_local(name):
    assert ask(make(), name) is None


def test_other_class_local_data_goes_on():
    assert ask(make(), "printer.lan", "TXT", rdclass="CH") is None


def test_no_edns_and_truncation():
    big = [f'big.lan. 60 IN TXT "{i}{"x" * 200}"' for i in range(5)]
    local = make(big)
    r = ask(local, "big.lan", "TXT", edns=False)
    assert r.flags & dns.flags.TC and not r.answer  # > 512 bytes without EDNS: TC, retry over TCP
    r = ask(local, "big.lan", "TXT", edns=True, limit=65535)
    assert len(r.answer[0]) == 5 and not r.flags & dns.flags.TC


def test_config_records_win_over_the_hosts_file():
    local = make()
    records, _ = parse_hosts("192.0.2.99 printer.lan\n192.0.2.7 nas.lan\n", "hosts", 60)
    added = local.set_hosts(index(records))
    assert wire.name_to_wire("nas.lan") in added and wire.name_to_wire("printer.lan") not in added
    assert rrs(ask(local, "printer.lan").answer)[0].endswith("192.0.2.20")
    assert rrs(ask(local, "nas.lan").answer) == ["nas.lan. 60 IN A 192.0.2.7"]
    assert local.answers["hosts"] == 1 and local.answers["records"] == 1


def test_owns():
    local = make()
    for name in ("printer.lan", "foo.localhost", "x.home.arpa"):
        assert local.owns(wire.name_to_wire(name))
    assert not local.owns(wire.name_to_wire("www.example.com"))


def test_purge_drops_cached_answers_for_local_names_only():
    cache = Cache(100)
    prepared = wire.Prepared(wire.POSITIVE, 0, 300, bytes(10), bytes(10), b"", (), False)
    keys = []
    for name, docd in [("printer.lan", 0), ("printer.lan", 3), ("www.example.com", 0), ("x.home.arpa", 1)]:
        key = wire.question_key(wire.name_to_wire(name) + b"\x00\x01\x00\x01", docd)
        cache.put(key, prepared, 0.0, 0.0)
        keys.append(key)
    assert purge(cache, make().owns) == 3
    assert list(cache.entries) == [keys[2]]


# -- garbage: any parsable query, any name, type and class, never raises ------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_LABELS = st.sampled_from([b"lan", b"printer", b"localhost", b"home", b"arpa", b"alias", b"LocalHost",
                           b"\x00", b"\xff\xfe", b".", b"a" * 63, b"*", b"loop1"])


@settings(max_examples=300, deadline=None)
@given(labels=st.lists(st.one_of(_LABELS, st.binary(min_size=1, max_size=63)), max_size=6),
       qtype=st.integers(0, 65535), qclass=st.integers(0, 65535), edns=st.booleans())
def test_any_query_is_answered_or_passed_on_never_raises(labels, qtype, qclass, edns):
    local = make()
    name = b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"
    if len(name) > 255:
        return
    data = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00" + (b"\x01" if edns else b"\x00") + name + \
        qtype.to_bytes(2, "big") + qclass.to_bytes(2, "big")
    if edns:
        data += b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    q = validated(data)
    reply = local.answer(q, q.udp_size, 1232)
    if isinstance(reply, Chase):
        wire.parse_query(reply.subquery(q))
    elif reply is not None:
        assert reply[:2] == b"\x12\x34" and reply[12:12 + len(name) + 4] == data[12:12 + len(name) + 4]
        dns.message.from_wire(reply)  # well-formed
