"""Upstream replies: does it answer our query, what kind of answer is it (RFC 2308), and
the `Prepared` form that later hits serve without parsing (TTL aging in place).

Sans-IO: bytes in, a `Prepared` value out.
"""

from __future__ import annotations

import struct

from ..errors import FormatError, UpstreamBadResponse
from .constants import CD, NOERROR, NXDOMAIN, QR, RA, RD, RCODE_MASK, TC, TYPE_OPT, TYPE_SOA
from .names import skip_name

# Kinds of upstream replies (RFC 2308 §1 / §2)
POSITIVE, NODATA, NEGATIVE_NXDOMAIN, FAILURE = "positive", "nodata", "nxdomain", "failure"

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_RR_FIXED = struct.Struct(">HHIH")  # type, class, ttl, rdlength
_COUNTS3 = struct.Struct(">HHH")
_REPLY_HEADER = struct.Struct(">BBHHHH")  # flags, QD/AN/NS/AR counts: bytes 2..12 of a reply
_QR_RD = QR | RD  # byte 2 of every prepared reply; render clears RD for a client without it


class Prepared:
    """An upstream reply made ready for serving many times.

    ``body`` is everything after the question up to the OPT record (see
    `parse_reply`: the OPT and any records after it are left out); the
    TTL fields inside it (at ``ttl_offsets``) already hold capped TTLs, so aging is
    ``stored - age`` per field.  ``hdr`` is bytes 2..12 of the reply (flags and
    counts) without the OPT in ARCOUNT; ``hdr_opt`` counts one OPT record more.
    """

    __slots__ = ("kind", "rcode", "ttl", "hdr", "hdr_opt", "body", "ttl_offsets", "tc")

    def __init__(self, kind, rcode, ttl, hdr, hdr_opt, body, ttl_offsets, tc):
        self.kind = kind
        self.rcode = rcode
        self.ttl = ttl
        self.hdr = hdr
        self.hdr_opt = hdr_opt
        self.body = body
        self.ttl_offsets = ttl_offsets
        self.tc = tc


def failure_prepared(rcode: int, ttl: int) -> Prepared:
    """A record-less failure answer (e.g. SERVFAIL) to cache briefly (RFC 9520 §3.2): header only."""
    return Prepared(FAILURE, rcode, ttl, _REPLY_HEADER.pack(_QR_RD, RA | rcode, 1, 0, 0, 0),
                    _REPLY_HEADER.pack(_QR_RD, RA | rcode, 1, 0, 0, 1), b"", (), False)


def check_reply_matches(reply: bytes, qid: int, question: bytes) -> None:
    """Raise UpstreamBadResponse unless ``reply`` answers our query (ID, QR, question).

    A spoofed or stale datagram fails here; the caller keeps waiting for the real one.
    """
    if len(reply) < 12:
        raise UpstreamBadResponse("reply shorter than a DNS header")
    if _U16.unpack_from(reply)[0] != qid:
        raise UpstreamBadResponse("reply ID does not match")
    if not reply[2] & QR:
        raise UpstreamBadResponse("QR=0 in reply")
    if reply[4:6] != b"\x00\x01":
        raise UpstreamBadResponse("reply does not carry exactly one question")
    qend = 12 + len(question)
    if reply[12:qend] == question:  # the usual echo, byte for byte
        return
    # The name is compared case-insensitively (RFC 4343), type and class exactly:
    # bytes.lower() would fold type 65 (HTTPS, b"\x00A") into type 97 (b"\x00a").
    if reply[12 : qend - 4].lower() != question[:-4].lower() or reply[qend - 4 : qend] != question[-4:]:
        raise UpstreamBadResponse("reply question does not match the query")


def parse_reply(reply: bytes, question: bytes, *, min_ttl: int, max_ttl: int,
                max_negative_ttl: int) -> Prepared:
    """Validate an upstream reply and turn it into a `Prepared` answer.

    Classification follows RFC 2308: NXDOMAIN and NOERROR-without-answers are
    negative answers cached for min(SOA TTL, SOA MINIMUM) capped at
    max_negative_ttl (§5); without an SOA they are not cached (ttl 0).  SERVFAIL,
    REFUSED and other rcodes are failures: never cached as answers.
    Assumes `check_reply_matches` already passed.
    """
    rcode = reply[3] & RCODE_MASK
    tc = bool(reply[2] & TC)
    an, ns, ar = _COUNTS3.unpack_from(reply, 6)
    qend = 12 + len(question)
    off = qend
    size = len(reply)
    ttl_offsets = []
    opt_span = None
    opt_index = 0
    soa_ttl_off = None
    soa_ttl = None
    soa_min = None
    answer_ttl = None
    try:
        for i in range(an + ns + ar):
            start = off
            if off < size and reply[off] >= 0xC0:  # a compression pointer (the usual owner)
                off += 2
            else:
                off = skip_name(reply, off)
            if off + 10 > size:
                raise FormatError("record header truncated")
            rtype, _rclass, ttl, rdlen = _RR_FIXED.unpack_from(reply, off)
            ttl_off = off + 4
            off += 10 + rdlen
            if off > size:
                raise FormatError("record data truncated")
            if rtype == TYPE_OPT:
                if i < an + ns or opt_span is not None:
                    raise FormatError("misplaced OPT record")
                opt_span = (start, off)
                opt_index = i
                continue
            if ttl & 0x80000000:  # RFC 2181 §8: treat as zero
                ttl = 0
            ttl_offsets.append((ttl_off, ttl))
            if i < an:
                if answer_ttl is None or ttl < answer_ttl:
                    answer_ttl = ttl
            elif i < an + ns and rtype == TYPE_SOA and soa_ttl_off is None and rdlen >= 20:
                soa_ttl_off = ttl_off
                soa_ttl = ttl  # already zeroed if the high bit was set (RFC 2181 §8)
                soa_min = _U32.unpack_from(reply, off - 4)[0]
    except FormatError as e:
        raise UpstreamBadResponse(f"malformed reply: {e.reason}") from None

    if rcode == NOERROR and an:
        kind = POSITIVE
    elif rcode == NOERROR:
        kind = NODATA
    elif rcode == NXDOMAIN:
        kind = NEGATIVE_NXDOMAIN
    else:
        kind = FAILURE

    if opt_span is not None:
        # The OPT goes, and so do any records after it: their names may be compressed
        # against one another, and cutting the OPT's bytes out would shift those
        # pointer targets ("ns2.other.test" would read "ns2.").  Records after the OPT
        # are additional data, which a reply may always omit.
        body = bytearray(reply[qend : opt_span[0]])
        ttl_offsets = [(o, t) for o, t in ttl_offsets if o < opt_span[0]]
        ar = opt_index - an - ns
    else:
        body = bytearray(reply[qend:off])
    offsets = []
    neg_ttl = 0
    if kind == POSITIVE:
        entry_ttl = min(max(answer_ttl, min_ttl), max_ttl)
        for ttl_off, ttl in ttl_offsets:
            rel = ttl_off - qend
            _U32.pack_into(body, rel, min(max(ttl, min_ttl), max_ttl))
            offsets.append(rel)
    else:
        if kind != FAILURE and soa_ttl_off is not None:
            neg_ttl = min(soa_ttl, soa_min, max_negative_ttl)
        entry_ttl = 0 if kind == FAILURE else neg_ttl
        for ttl_off, ttl in ttl_offsets:
            rel = ttl_off - qend
            # RFC 2308 §5: the SOA TTL carries the negative TTL
            _U32.pack_into(body, rel, neg_ttl if ttl_off == soa_ttl_off else min(ttl, max_ttl))
            offsets.append(rel)
    # Flags: QR, RD (the client's RD is written back at render), RA; AA cleared
    # (a forwarder is never authoritative); AD cleared (we do not validate, RFC 6840
    # §5.8); CD kept as the upstream echoed it; TC cleared (TC replies are never cached).
    flags2 = RA | (reply[3] & CD) | rcode
    hdr = _REPLY_HEADER.pack(_QR_RD, flags2, 1, an, ns, ar)
    hdr_opt = _REPLY_HEADER.pack(_QR_RD, flags2, 1, an, ns, ar + 1)
    return Prepared(kind, rcode, entry_ttl, hdr, hdr_opt, bytes(body), tuple(offsets), tc)


def age_body(body: bytes, ttl_offsets: tuple, age: int) -> bytes:
    """A copy of ``body`` with every TTL lowered by ``age`` seconds (floored at 0)."""
    if not ttl_offsets:
        return body
    out = bytearray(body)
    for off in ttl_offsets:
        ttl = _U32.unpack_from(body, off)[0] - age
        _U32.pack_into(out, off, ttl if ttl > 0 else 0)
    return bytes(out)


def fixed_ttl_body(body: bytes, ttl_offsets: tuple, ttl: int) -> bytes:
    """A copy of ``body`` with every TTL set to ``ttl`` (serve-stale, RFC 8767 §4)."""
    out = bytearray(body)
    packed = _U32.pack(ttl)
    for off in ttl_offsets:
        out[off : off + 4] = packed
    return bytes(out)
