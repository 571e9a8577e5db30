"""DNS packets built with dnslib, independently of the code under test: client queries,
upstream replies, and prepared cache entries."""

from __future__ import annotations

from dnslib import EDNS0, QTYPE, RR, SOA, A, DNSHeader, DNSQuestion, DNSRecord

from resolver import wire

TTLS = dict(min_ttl=0, max_ttl=86_400, max_negative_ttl=3_600)


def upstream_reply(name="www.example.com", qtype=QTYPE.A, *, qid=7, rcode=0, answers=(), auth=(),
                   additional=(), edns=True, do=False, aa=False, ad=False, tc=False, cd=False, qclass=1) -> bytes:
    """An upstream's reply built by dnslib."""
    hdr = DNSHeader(id=qid, qr=1, rd=1, ra=1, aa=int(aa), ad=int(ad), tc=int(tc), cd=int(cd), rcode=rcode)
    rec = DNSRecord(hdr, q=DNSQuestion(name, qtype, qclass))
    for rr in answers:
        rec.add_answer(rr)
    for rr in auth:
        rec.add_auth(rr)
    for rr in additional:
        rec.add_ar(rr)
    if edns and not any(getattr(rr, "rtype", None) == QTYPE.OPT for rr in additional):
        rec.add_ar(EDNS0(udp_len=1232, flags="do" if do else ""))
    return bytes(rec.pack())


def client_query(name="www.example.com", qtype=QTYPE.A, *, qid=0x4242, edns=None, do=False, cd=False,
                 rd=True, qclass=1) -> bytes:
    """A client query built by dnslib; ``edns`` is None (no OPT) or the UDP size."""
    rec = DNSRecord(DNSHeader(id=qid, rd=int(rd), cd=int(cd)), q=DNSQuestion(name, qtype, qclass))
    if edns is not None:
        rec.add_ar(EDNS0(udp_len=edns, flags="do" if do else ""))
    return bytes(rec.pack())


def question(name: str, qtype: int = QTYPE.A) -> bytes:
    return wire.name_to_wire(name) + qtype.to_bytes(2, "big") + b"\x00\x01"


def prepared(name="www.example.com", ttl=60, ip="192.0.2.1", extra_ttl=None) -> wire.Prepared:
    rec = DNSRecord(DNSHeader(id=1, qr=1, rd=1, ra=1), q=DNSQuestion(name, QTYPE.A))
    rec.add_answer(RR(name, QTYPE.A, rdata=A(ip), ttl=ttl))
    if extra_ttl is not None:
        rec.add_answer(RR(name, QTYPE.A, rdata=A("192.0.2.99"), ttl=extra_ttl))
    rec.add_ar(EDNS0(udp_len=1232))
    return wire.parse_reply(bytes(rec.pack()), question(name), **TTLS)


def negative(name="nx.example.com", ttl=120) -> wire.Prepared:
    rec = DNSRecord(DNSHeader(id=1, qr=1, rd=1, ra=1, rcode=3), q=DNSQuestion(name, QTYPE.A))
    rec.add_auth(RR("example.com", QTYPE.SOA, rdata=SOA("ns.example.com", "h.example.com", (1, 2, 3, 4, ttl)),
                    ttl=ttl))
    return wire.parse_reply(bytes(rec.pack()), question(name), **TTLS)


def key(name: str) -> bytes:
    return question(name)
