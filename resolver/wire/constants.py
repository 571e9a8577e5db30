"""The numbers of the DNS protocol, in one place: rcodes, types, classes, header bits, EDE codes.

Every module that needs a record type or a header bit imports it from here (or
through ``resolver.wire``), so the meaning of a number is written once, with the
RFC that gives it.  Also the one parser of record types typed by people
(``qtype_from_text``), for the admin endpoints.
"""

from __future__ import annotations

import struct

from dnslib import QTYPE

# RCODEs (RFC 1035 §4.1.1, RFC 6891 §9)
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

# Record types (RFC 1035 §3.2.2, RFC 3596 AAAA, RFC 6672 DNAME, RFC 4034 DS/RRSIG/NSEC,
# RFC 5155 NSEC3, RFC 6891 OPT, RFC 1995 IXFR, RFC 1035 §3.2.3 AXFR and ANY ("*")).
TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_PTR, TYPE_TXT, TYPE_AAAA = 1, 2, 5, 6, 12, 16, 28
TYPE_DNAME, TYPE_OPT, TYPE_DS, TYPE_RRSIG, TYPE_NSEC, TYPE_NSEC3 = 39, 41, 43, 46, 47, 50
TYPE_IXFR, TYPE_AXFR, TYPE_ANY = 251, 252, 255
CLASS_IN = 1

# Header bits (RFC 1035 §4.1.1; AD and CD: RFC 4035 §3.2).  Byte 2 of the header:
QR, AA, TC, RD = 0x80, 0x04, 0x02, 0x01
OPCODE_MASK = 0x78
# Byte 3 of the header (the low four bits are the rcode):
RA, AD, CD = 0x80, 0x20, 0x10
RCODE_MASK = 0x0F

# Extended DNS Error codes (RFC 8914 §4)
EDE_STALE_ANSWER = 3
EDE_STALE_NXDOMAIN = 19
EDE_NO_REACHABLE_AUTHORITY = 22
EDE_NETWORK_ERROR = 23

_COUNTS = struct.Struct(">HHHH")


def reply_flags(rcode: int, *, cd: bool = False, aa: bool = False, tc: bool = False,
                opcode_rd: int = RD) -> bytes:
    """Bytes 2-3 of a reply header: QR and RA always set (we recurse for the client).

    ``opcode_rd`` is the client's opcode and RD bits (``query[2] & (OPCODE_MASK | RD)``)
    when they are echoed (RFC 1035 §4.1.1); RD alone by default, which the renderer
    clears for a client that did not set it.  AA only for answers this server owns
    (local data); AD is never set: a forwarder that does not validate must not
    (RFC 6840 §5.8).  Only the low four rcode bits fit here; the rest go in the
    OPT record (RFC 6891 §6.1.3).
    """
    return bytes((QR | opcode_rd | (AA if aa else 0) | (TC if tc else 0),
                  RA | (CD if cd else 0) | (rcode & RCODE_MASK)))


def query_flags(cd: bool = False) -> bytes:
    """Bytes 2-3 of a query we send: RD=1 (we want recursion), the client's CD (RFC 4035 §3.2.2)."""
    return bytes((RD, CD if cd else 0))


def header_counts(qd: int, an: int, ns: int, ar: int) -> bytes:
    """Bytes 4-12 of a header: the four section counts."""
    return _COUNTS.pack(qd, an, ns, ar)


def qtype_from_text(text: str) -> int:
    """A record type typed by a person: a mnemonic (A, aaaa), TYPEnnn (RFC 3597 §5) or a number.

    ValueError for anything else, including 0 and numbers above 65535: callers say
    in their own words which parameter was wrong.
    """
    upper = text.upper()
    value = -1
    if upper.isascii() and (upper.isdigit() or (upper.startswith("TYPE") and upper[4:].isdigit())):
        value = int(upper.removeprefix("TYPE")) if len(upper) < 12 else -1
    elif upper.isascii() and upper.isalnum():
        number = QTYPE.reverse.get(upper)
        value = number if isinstance(number, int) else -1
    if not 0 < value < 65536:
        raise ValueError(f"unknown record type {text[:20]!r}")
    return value


def qtype_to_text(qtype: int) -> str:
    """The mnemonic of a record type, or TYPEnnn (RFC 3597 §5) for one without a name."""
    return QTYPE.get(qtype, f"TYPE{qtype}")
