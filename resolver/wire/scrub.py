"""Defences against forged or polluted upstream replies, beyond the ID/source/question match.

Two mechanisms, both on the miss path only:

* **0x20 case randomisation** (draft-vixie-dnsext-dns0x20): the letters of the
  name we send upstream get a random case, from ``secrets``.  Resolvers echo the
  question byte for byte, so a reply whose question does not match the exact
  spelling was not produced by our query: an off-path attacker must now guess one
  bit per letter on top of the 16-bit ID and the source port (RFC 5452 §9.3).
  Off by default: a few middleboxes and old servers do not preserve case.

* **Scrubbing** (what Unbound's ``scrub_message`` and dnsmasq do): only records
  that belong to the question may be cached and served.  The answer section keeps
  records owned by the query name or by the CNAME chain that starts at it (and
  DNAMEs above those names, RFC 6672 §2.2), of the queried type, CNAME, DNAME or
  RRSIG; the authority section keeps SOA, NS and DS records owned by the query
  name or one of its ancestors (the zone it lives in: RFC 2181 §5.4.1 ranks
  anything else as unrelated) plus the DNSSEC proofs NSEC, NSEC3 and RRSIG (a
  validating client checks those itself); the additional section is kept as is:
  this is a packet cache keyed by the full question, so additional data is never
  used to answer any other question.  A stub that takes "the first A record in
  the answer section" can therefore not be fed an unrelated name's address.

Sans-IO: bytes in, bytes out.
"""

from __future__ import annotations

import secrets
import struct

import dnslib

from ..errors import UpstreamBadResponse
from .constants import TYPE_ANY, TYPE_CNAME, TYPE_DNAME, TYPE_DS, TYPE_NS, TYPE_NSEC, TYPE_NSEC3, TYPE_RRSIG, \
    TYPE_SOA
from .names import in_zone
_AUTHORITY_PROOFS = frozenset({TYPE_NSEC, TYPE_NSEC3, TYPE_RRSIG})
_AUTHORITY_ZONE = frozenset({TYPE_SOA, TYPE_NS, TYPE_DS})
_MAX_POINTERS = 64  # compression pointers followed per name: no loops, bounded work
_QNAME_POINTER = b"\xc0\x0c"  # compression pointer to offset 12: the question's name
_COUNTS = struct.Struct(">HH")
_RR_FIXED = struct.Struct(">HHIH")


def randomize_case(question: bytes) -> bytes:
    """``question`` (name + type + class) with the case of each letter of the name random.

    Label length bytes are at most 63, below every ASCII letter, so flipping bit
    0x20 of letter bytes only can never change the name's structure.  The type and
    class bytes are left alone.
    """
    name = question[:-4]
    bits = secrets.randbits(len(name))
    out = bytearray(name)
    for i, c in enumerate(out):
        if (bits >> i) & 1 and (65 <= c <= 90 or 97 <= c <= 122):
            out[i] = c ^ 0x20
    return bytes(out) + question[-4:]


def case_matches(reply: bytes, sent_question: bytes) -> bool:
    """Does the reply echo our question byte for byte (case included)?"""
    return reply[12 : 12 + len(sent_question)] == sent_question


def _read_name(msg: bytes, off: int) -> tuple[bytes, int]:
    """(lower-cased uncompressed wire name, offset after it in the record)."""
    labels = []
    end = None
    hops = 0
    size = 0
    while True:
        if off >= len(msg):
            raise UpstreamBadResponse("malformed reply: name runs past the end")
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if off + 2 > len(msg) or hops >= _MAX_POINTERS:
                raise UpstreamBadResponse("malformed reply: bad compression pointer")
            if end is None:
                end = off + 2
            off = ((n & 0x3F) << 8) | msg[off + 1]
            hops += 1
            continue
        if n & 0xC0:
            raise UpstreamBadResponse("malformed reply: unknown label type")
        if n == 0:
            labels.append(b"\x00")
            return b"".join(labels).lower(), (end if end is not None else off + 1)
        size += n + 1
        if size > 255:
            raise UpstreamBadResponse("malformed reply: name longer than 255 octets")
        labels.append(msg[off : off + 1 + n])
        off += 1 + n


def scrub(reply: bytes, question: bytes) -> tuple[bytes, int]:
    """(reply with unrelated answer/authority records removed, how many were removed).

    Assumes the reply's question already matched ours.  The reply comes back
    unchanged (the same object) when nothing is removed, which is the normal case;
    otherwise it is re-encoded with dnslib, which re-compresses names, because cut
    records may be the targets of later compression pointers.
    """
    an, ns = _COUNTS.unpack_from(reply, 6)
    qname = question[:-4].lower()
    qtype = (question[-4] << 8) | question[-3]
    off = 12 + len(question)
    size = len(reply)
    records = []  # (section, owner, rtype, target name for CNAME/DNAME or None)
    plain = True  # so far only records of the queried type (not CNAME/DNAME) owned by the query name
    for i in range(an + ns):
        if reply.startswith(_QNAME_POINTER, off):  # the usual owner: a pointer to the question's name
            owner = qname
            off += 2
        else:
            owner, off = _read_name(reply, off)
            plain = False
        if off + 10 > size:
            raise UpstreamBadResponse("malformed reply: record header truncated")
        rtype, _rclass, _ttl, rdlen = _RR_FIXED.unpack_from(reply, off)
        off += 10
        target = None
        if rtype in (TYPE_CNAME, TYPE_DNAME) and i < an and rdlen:
            target, _ = _read_name(reply, off)  # validated and followed even for a CNAME query
            plain = False
        elif rtype != qtype or i >= an:
            plain = False
        off += rdlen
        if off > size:
            raise UpstreamBadResponse("malformed reply: record data truncated")
        records.append((0 if i < an else 1, owner, rtype, target))
    if plain:  # the common answer: nothing can be unrelated, skip the chain analysis
        return reply, 0

    # The CNAME chain from the query name, in whatever order the records came.
    chain = {qname}
    grew = True
    while grew:
        grew = False
        for section, owner, rtype, target in records:
            if (section == 0 and rtype == TYPE_CNAME and owner in chain and target is not None
                    and target not in chain):  # an empty CNAME rdata leads nowhere
                chain.add(target)
                grew = True
    drop_answer, drop_auth = [], []
    for index, (section, owner, rtype, _target) in enumerate(records):
        if section == 0:
            if rtype == TYPE_DNAME:
                ok = any(in_zone(name, owner) for name in chain)
            else:
                ok = owner in chain and (rtype in (qtype, TYPE_CNAME, TYPE_RRSIG) or qtype == TYPE_ANY)
            if not ok:
                drop_answer.append(index)
        else:
            ok = rtype in _AUTHORITY_PROOFS or (
                rtype in _AUTHORITY_ZONE and any(in_zone(name, owner) for name in chain))
            if not ok:
                drop_auth.append(index - an)
    removed = len(drop_answer) + len(drop_auth)
    if not removed:
        return reply, 0
    gone_an, gone_ns = set(drop_answer), set(drop_auth)
    try:
        record = dnslib.DNSRecord.parse(reply)
        record.rr = [rr for i, rr in enumerate(record.rr) if i not in gone_an]
        record.auth = [rr for i, rr in enumerate(record.auth) if i not in gone_ns]
        return bytes(record.pack()), removed
    except Exception as e:  # dnslib raises several types for bad input; all mean "malformed"
        raise UpstreamBadResponse(f"malformed reply: {e}") from None
