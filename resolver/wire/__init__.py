"""Sans-IO DNS message logic: bytes in, bytes or values out; no sockets, no clock.

Two paths share this module:

* the **miss path** parses a client query strictly (`parse_query`), builds the
  upstream query, validates the upstream reply (`parse_reply`) and turns it into a
  `Prepared` answer: the reply stored as wire bytes with the offsets of its TTL
  fields, so that later hits never parse or pack a message again;
* the **hit path** (see ``pipeline.Pipeline.answer_fast``) copies a prepared answer
  and writes the client's ID, the client's question bytes and the aged TTLs in
  place.  `render` below is the general form of the same operation and is what the
  miss path and unusual queries use, so both paths produce the same bytes.

dnslib is used where a general parser earns its cost: tests compare our bytes to
dnslib's, and the admin endpoints print entries through it.  The per-message code
here only walks record headers (name, type, class, TTL, length), which is all a
forwarding cache needs.
"""

from __future__ import annotations

import struct

from ..errors import DropQuery, FormatError, UpstreamBadResponse

# RCODEs (RFC 1035 §4.1.1, RFC 6891 §9)
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

# Record types this module treats specially
TYPE_SOA = 6
TYPE_OPT = 41
TYPE_IXFR, TYPE_AXFR = 251, 252
CLASS_IN = 1

# Kinds of upstream replies (RFC 2308 §1 / §2)
POSITIVE, NODATA, NEGATIVE_NXDOMAIN, FAILURE = "positive", "nodata", "nxdomain", "failure"

# Extended DNS Error codes (RFC 8914 §4)
EDE_STALE_ANSWER = 3
EDE_STALE_NXDOMAIN = 19
EDE_NO_REACHABLE_AUTHORITY = 22
EDE_NETWORK_ERROR = 23

# DO and CD take part in the cache key: a DNSSEC-aware client must not get a
# reply fetched without signatures, and CD=1 answers may be unvalidated.
KEY_DO = 0x02
KEY_CD = 0x01
KEY_EXACT_TAIL = 0x10
# Keys with flags start with a byte >= 0x80.  A plain key starts with a label
# length (<= 63), so the two kinds can never be equal; and because the flags come
# first, a key built from "question + trailing junk" can never equal a valid
# question's key: the hit path relies on this (see Pipeline.answer_fast).
KEY_FLAGGED = 0x80

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_RR_FIXED = struct.Struct(">HHIH")  # type, class, ttl, rdlength
_HEADER = struct.Struct(">HBBHHHH")
_COUNTS3 = struct.Struct(">HHH")
_REPLY_HEADER = struct.Struct(">BBHHHH")  # flags, QD/AN/NS/AR counts: bytes 2..12 of a reply


def opt_record(udp_size: int, do: bool, options: bytes = b"", ext_rcode: int = 0) -> bytes:
    """An OPT pseudo-RR (RFC 6891 §6.1.2) as wire bytes: root owner, type 41."""
    return (
        b"\x00\x00\x29"
        + _U16.pack(udp_size)
        + bytes((ext_rcode, 0, 0x80 if do else 0, 0))
        + _U16.pack(len(options))
        + options
    )


def ede_option(info_code: int, text: bytes = b"") -> bytes:
    """An Extended DNS Error option (RFC 8914 §2): option code 15."""
    return _U16.pack(15) + _U16.pack(2 + len(text)) + _U16.pack(info_code) + text


def key_prefix(flags: int) -> bytes:
    """The first byte of a key with DO/CD/exact-tail flags (empty for none)."""
    return bytes((KEY_FLAGGED | flags,)) if flags else b""


def question_key(question: bytes, docd: int) -> bytes:
    """The cache key for a raw question (name + type + class), any case.

    The key *is* the question, lower-cased, so a dict hit can never be a hash
    collision: the whole question is compared.  Questions whose type/class bytes
    contain ASCII letters (e.g. type 65, HTTPS = b"\\x00A") keep those bytes as they
    are and are flagged, because ``bytes.lower()`` would fold type 65 into type
    97; the hit path lower-cases whole questions, so it never finds a flagged-tail
    key and sends such queries down the general path.
    """
    tail = question[-4:]
    if tail.lower() == tail and tail.upper() == tail:
        return key_prefix(docd) + question.lower()
    return key_prefix(KEY_EXACT_TAIL | docd) + question[:-4].lower() + tail


def key_question(key: bytes) -> bytes:
    """The question a cache key stands for, as we ask it upstream (name lower-cased).

    A flag byte, if any, is ≥ 0x80; an unflagged key starts with a label length
    (≤ 63) or the root's 0, so the first byte tells them apart."""
    return key[1:] if key[0] & KEY_FLAGGED else key


class Query:
    """A validated client query: what the pipeline needs, nothing more."""

    __slots__ = (
        "data", "id", "rd", "cd", "qend", "question", "qname", "qtype", "qclass",
        "edns", "udp_size", "do", "key",
    )

    def __init__(self, data: bytes, qend: int, edns: bool, udp_size: int, do: bool):
        self.data = data
        self.id = data[0:2]
        self.rd = data[2] & 0x01
        self.cd = data[3] & 0x10
        self.qend = qend
        self.question = data[12:qend]
        self.qname = data[12 : qend - 4]
        self.qtype, self.qclass = struct.unpack_from(">HH", data, qend - 4)
        self.edns = edns
        self.udp_size = udp_size
        self.do = do
        self.key = question_key(self.question, (KEY_DO if do else 0) | (KEY_CD if self.cd else 0))

    def name_text(self) -> str:
        return name_to_text(self.qname)


def name_to_text(wire_name: bytes) -> str:
    """Presentation form of an uncompressed wire name, for logs and admin output."""
    labels = []
    off = 0
    while off < len(wire_name) and wire_name[off]:
        n = wire_name[off]
        labels.append(wire_name[off + 1 : off + 1 + n].decode("ascii", "backslashreplace"))
        off += 1 + n
    return ".".join(labels) + "."


def name_to_wire(name: str) -> bytes:
    """Wire form of a presentation name (no escapes); for tests and admin queries."""
    out = bytearray()
    for label in name.strip(".").split("."):
        if label:
            raw = label.encode("ascii")
            if len(raw) > 63:
                raise ValueError(f"label too long: {label!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError("name too long")
    return bytes(out)


def _question_end(data: bytes) -> int:
    """Offset just past the single question, or FormatError.

    Compression is refused: in a one-question query a pointer could only point
    into the header or forward, neither of which is a name (RFC 1035 §4.1.4).
    """
    off = 12
    end = len(data)
    while True:
        if off >= end:
            raise FormatError("question name runs past the end of the message")
        n = data[off]
        if n == 0:
            off += 1
            break
        if n & 0xC0:
            raise FormatError("compressed or extended label in question")
        off += 1 + n
        if off - 12 > 255:
            raise FormatError("question name longer than 255 octets")
    if off - 12 > 255:
        raise FormatError("question name longer than 255 octets")
    if off + 4 > end:
        raise FormatError("question type/class truncated")
    return off + 4


def parse_query(data: bytes) -> Query:
    """Validate a client query (RFC 1035 §4.1, RFC 6891 §6.1.1).

    Raises DropQuery when no reply can be sent sensibly (unreadable header, or a
    response sent to us: answering those invites reflection loops) and FormatError
    with the rcode to send otherwise.
    """
    if len(data) < 12:
        raise DropQuery("shorter than a DNS header")
    if data[2] & 0x80:
        raise DropQuery("QR=1: a response, not a query")
    _id, _f1, _f2, qd, an, ns, ar = _HEADER.unpack_from(data)
    opcode = (data[2] >> 3) & 0x0F
    if qd != 1:
        raise FormatError(f"QDCOUNT={qd}, expected 1")
    qend = _question_end(data)
    if opcode != 0:
        raise FormatError(f"opcode {opcode} not implemented", rcode=NOTIMP, question_end=qend)
    if an or ns:
        raise FormatError("answer or authority records in a query", question_end=qend)
    edns = False
    udp_size = 512
    do = False
    off = qend
    for _ in range(ar):
        rr_start = off
        off = _skip_name(data, off)
        if off + 10 > len(data):
            raise FormatError("additional record truncated", question_end=qend)
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, off)
        off += 10 + rdlen
        if off > len(data):
            raise FormatError("additional record data truncated", question_end=qend)
        if rtype == TYPE_OPT:
            if edns:
                raise FormatError("more than one OPT record", question_end=qend)
            if data[rr_start] != 0:
                raise FormatError("OPT owner name is not the root", question_end=qend)
            edns = True
            udp_size = max(512, rclass)
            version = (ttl >> 16) & 0xFF
            do = bool(ttl & 0x8000)
            if version != 0:
                raise FormatError(f"EDNS version {version}", rcode=BADVERS, question_end=qend)
    if off != len(data):
        raise FormatError("trailing bytes after the last record", question_end=qend)
    if data[qend - 2 : qend] != _CLASS_IN_BYTES or (not data[qend - 4] and data[qend - 3] in _UNSERVED_TYPES):
        _check_question(data[qend - 4 : qend], qend, edns)  # raises: not a question we serve
    return Query(data, qend, edns, udp_size, do)


_CLASS_IN_BYTES = b"\x00\x01"
# The qtypes below 256 that ``_check_question`` refuses or answers FORMERR (every
# qtype above 255 is an ordinary one): OPT, the meta-types 128-250, IXFR, AXFR,
# MAILB, MAILA — all of 128-254, ANY (255) excepted.
_UNSERVED_TYPES = frozenset((41, *range(128, 255)))


def _check_question(tail: bytes, qend: int, edns: bool) -> None:
    """Refuse, here and without asking upstream, questions a forwarder does not serve.

    As Unbound does (daemon/worker.c, worker_handle_request): zone transfers are
    REFUSED, and the meta-types that cannot be a question — OPT (RFC 6891 §6.1.1),
    TKEY, TSIG, MAILA, MAILB and the range 128-248 (RFC 6895 §3.1) — get FORMERR.
    Classes other than IN (CHAOS, HESIOD, NONE, ANY, 0) are REFUSED: upstreams
    refuse them too (an authoritative server for IN zones has nothing in CH), and
    forwarding them would let clients make healthy upstreams look broken.
    (dnsmasq answers CHAOS *.bind/*.server itself, NOTIMP otherwise.)  qtype ANY
    (255) in class IN is a question like any other and goes upstream.
    """
    qtype = tail[0] << 8 | tail[1]
    qclass = tail[2] << 8 | tail[3]
    if qclass != CLASS_IN:
        raise FormatError(f"class {qclass} is not served", rcode=REFUSED, question_end=qend, edns=edns)
    if qtype == TYPE_AXFR or qtype == TYPE_IXFR:
        raise FormatError("zone transfers are not served", rcode=REFUSED, question_end=qend, edns=edns)
    if qtype == TYPE_OPT or 128 <= qtype <= 250 or qtype == 253 or qtype == 254:
        raise FormatError(f"qtype {qtype} is not a question", question_end=qend, edns=edns)


def error_reply(data: bytes, rcode: int, question_end: int = 0, edns: bool = False,
                udp_size: int = 1232, ede: bytes = b"") -> bytes:
    """A reply carrying only an rcode: FORMERR, NOTIMP, BADVERS, SERVFAIL, REFUSED.

    The question is echoed when it was readable (RFC 1035 §4.1.1); the client's
    RD and CD bits are copied; AA is never set (we are not authoritative).
    """
    flags1 = 0x80 | (data[2] & 0x79)  # QR + client's opcode and RD
    flags2 = 0x80 | (data[3] & 0x10) | (rcode & 0x0F)  # RA, CD, low rcode bits
    question = data[12:question_end] if question_end else b""
    ar = 1 if (edns or rcode > 15) else 0
    out = data[0:2] + bytes((flags1, flags2)) + struct.pack(">HHHH", 1 if question else 0, 0, 0, ar) + question
    if ar:
        out += opt_record(udp_size, False, ede, ext_rcode=rcode >> 4)
    return out


def _skip_name(msg: bytes, off: int) -> int:
    """Offset past a possibly-compressed name; pointers are not followed, so no loop is possible."""
    end = len(msg)
    while True:
        if off >= end:
            raise FormatError("name runs past the end of the message")
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            if off + 2 > end:
                raise FormatError("compression pointer truncated")
            return off + 2
        if n & 0xC0:
            raise FormatError("unknown label type")
        off += 1 + n


def build_upstream_query(qid: int, question: bytes, cd: bool, do: bool, udp_size: int) -> bytes:
    """The query we send upstream: RD=1, the client's CD, EDNS with our buffer size.

    The question is sent lower-cased (the cache is shared by every client; each
    client's own spelling is written back into its reply).
    """
    opt = _UPSTREAM_OPT.get((udp_size, do))
    if opt is None:  # one per configured buffer size and DO bit
        opt = _UPSTREAM_OPT[(udp_size, do)] = opt_record(udp_size, do)
    return b"".join((_U16.pack(qid), _UPSTREAM_FLAGS[1 if cd else 0], question, opt))


_UPSTREAM_FLAGS = (b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01",  # RD; QD 1, AR 1 (OPT)
                   b"\x01\x10\x00\x01\x00\x00\x00\x00\x00\x01")  # RD, CD
_UPSTREAM_OPT: dict[tuple[int, bool], bytes] = {}


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


def check_reply_matches(reply: bytes, qid: int, question: bytes) -> None:
    """Raise UpstreamBadResponse unless ``reply`` answers our query (ID, QR, question).

    A spoofed or stale datagram fails here; the caller keeps waiting for the real one.
    """
    if len(reply) < 12:
        raise UpstreamBadResponse("reply shorter than a DNS header")
    if _U16.unpack_from(reply)[0] != qid:
        raise UpstreamBadResponse("reply ID does not match")
    if not reply[2] & 0x80:
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
    rcode = reply[3] & 0x0F
    tc = bool(reply[2] & 0x02)
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
                off = _skip_name(reply, off)
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
    flags2 = 0x80 | (reply[3] & 0x10) | rcode
    hdr = _REPLY_HEADER.pack(0x81, flags2, 1, an, ns, ar)
    hdr_opt = _REPLY_HEADER.pack(0x81, flags2, 1, an, ns, ar + 1)
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


def render(q: Query, hdr: bytes, hdr_opt: bytes, body: bytes, limit: int,
           edns_size: int, ede: bytes = b"") -> bytes:
    """The reply for client query ``q``: its ID, its question bytes, our body.

    ``limit`` is the most the client can take (512 without EDNS, its EDNS size, or
    65535 over TCP); a reply that does not fit is sent with TC=1 and no records so
    the client retries over TCP (RFC 1035 §4.2.1, RFC 7766 §5).
    """
    if q.edns:
        opt = opt_record(edns_size, q.do, ede)
        head = hdr_opt
    else:
        opt = b""
        head = hdr
    if not q.rd:
        head = bytes((head[0] & 0xFE,)) + head[1:]
    out = b"".join((q.id, head, q.question, body, opt))
    if len(out) > limit:
        return truncated(q, head, opt)
    return out


def truncated(q: Query, head: bytes, opt: bytes) -> bytes:
    """Header + question (+ OPT) with TC=1: 'ask me again over TCP'."""
    flags = bytes((head[0] | 0x02, head[1]))
    return q.id + flags + struct.pack(">HHHH", 1, 0, 0, 1 if opt else 0) + q.question + opt
