"""Client queries: strict parsing and validation (RFC 1035 §4.1, RFC 6891 §6.1.1), the
cache-key layout and its readers, and the query we send upstream.

The cache key *is* the question (see `question_key`), so the layout is defined
here, next to the parser that produces it, and read only through the functions
below (``key_question``, ``key_name``, ``key_flags``).
"""

from __future__ import annotations

import struct

from ..errors import DropQuery, FormatError
from .constants import BADVERS, CLASS_IN, NOTIMP, OPCODE_MASK, QR, REFUSED, TYPE_AXFR, TYPE_IXFR, TYPE_OPT, \
    header_counts, query_flags
from .names import skip_name
from .render import opt_record

# DO and CD take part in the cache key: a DNSSEC-aware client must not get a
# reply fetched without signatures, and CD=1 answers may be unvalidated.
KEY_DO = 0x02
KEY_CD = 0x01
KEY_EXACT_TAIL = 0x10
# Keys with flags start with a byte >= 0x80.  A plain key starts with a label
# length (<= 63), so the two kinds can never be equal; and because the flags come
# first, a key built from "question + trailing junk" can never equal a valid
# question's key: the hit path relies on this (see serve/fastpath.py, FastPath.answer_fast).
KEY_FLAGGED = 0x80

_HEADER = struct.Struct(">HBBHHHH")
_RR_FIXED = struct.Struct(">HHIH")  # type, class, ttl, rdlength
_U16 = struct.Struct(">H")


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


def key_name(key: bytes) -> bytes:
    """The lower-case wire name inside a cache key (the question without type and class)."""
    return key[1:-4] if key[0] & KEY_FLAGGED else key[:-4]


def key_flags(key: bytes) -> int:
    """The KEY_DO / KEY_CD / KEY_EXACT_TAIL bits of a cache key (0 for a key without a flag byte)."""
    return key[0] & ~KEY_FLAGGED if key[0] & KEY_FLAGGED else 0


def question_bytes(name: bytes, qtype: int, qclass: int = CLASS_IN) -> bytes:
    """A question (RFC 1035 §4.1.2) from a wire name: name + type + class."""
    return name + _U16.pack(qtype) + _U16.pack(qclass)


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
    if data[2] & QR:
        raise DropQuery("QR=1: a response, not a query")
    _id, _f1, _f2, qd, an, ns, ar = _HEADER.unpack_from(data)
    opcode = (data[2] & OPCODE_MASK) >> 3
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
        off = skip_name(data, off)
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
_UNSERVED_TYPES = frozenset((TYPE_OPT, *range(128, 255)))


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


def build_upstream_query(qid: int, question: bytes, cd: bool, do: bool, udp_size: int) -> bytes:
    """The query we send upstream: RD=1, the client's CD, EDNS with our buffer size.

    The question is sent lower-cased (the cache is shared by every client; each
    client's own spelling is written back into its reply).
    """
    opt = _UPSTREAM_OPT.get((udp_size, do))
    if opt is None:  # one per configured buffer size and DO bit
        opt = _UPSTREAM_OPT[(udp_size, do)] = opt_record(udp_size, do)
    return b"".join((_U16.pack(qid), _UPSTREAM_FLAGS[1 if cd else 0], question, opt))


# Flags and counts of our upstream queries: RD (and the client's CD); QD 1, AR 1 (the OPT).
_UPSTREAM_FLAGS = tuple(query_flags(cd) + header_counts(1, 0, 0, 1) for cd in (False, True))
_UPSTREAM_OPT: dict[tuple[int, bool], bytes] = {}
