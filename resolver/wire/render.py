"""Replies as bytes: the client's ID and question around a prepared body, with EDNS, EDE and TC.

``render`` is the general form of what the hit path (``Pipeline.answer_fast``)
does in place, so both paths produce the same bytes; ``error_reply`` answers
with an rcode only.  Takes a validated query (``wire.query.Query``) and values;
never parses.
"""

from __future__ import annotations

import struct

from .constants import OPCODE_MASK, RD, TC, header_counts, reply_flags

_U16 = struct.Struct(">H")
EDE_OPTION = 15  # RFC 8914 §2


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
    return _U16.pack(EDE_OPTION) + _U16.pack(2 + len(text)) + _U16.pack(info_code) + text


def error_reply(data: bytes, rcode: int, question_end: int = 0, edns: bool = False,
                udp_size: int = 1232, ede: bytes = b"") -> bytes:
    """A reply carrying only an rcode: FORMERR, NOTIMP, BADVERS, SERVFAIL, REFUSED.

    The question is echoed when it was readable (RFC 1035 §4.1.1); the client's
    RD and CD bits are copied; AA is never set (we are not authoritative).
    """
    flags = reply_flags(rcode, cd=bool(data[3] & 0x10), opcode_rd=data[2] & (OPCODE_MASK | RD))
    question = data[12:question_end] if question_end else b""
    ar = 1 if (edns or rcode > 15) else 0
    out = data[0:2] + flags + header_counts(1 if question else 0, 0, 0, ar) + question
    if ar:
        out += opt_record(udp_size, False, ede, ext_rcode=rcode >> 4)
    return out


def render(q, hdr: bytes, hdr_opt: bytes, body: bytes, limit: int,
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


def truncated(q, head: bytes, opt: bytes) -> bytes:
    """Header + question (+ OPT) with TC=1: 'ask me again over TCP'."""
    flags = bytes((head[0] | TC, head[1]))
    return q.id + flags + header_counts(1, 0, 0, 1 if opt else 0) + q.question + opt
