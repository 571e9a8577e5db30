"""Which datagrams an upstream socket accepts as the reply (resolver/upstream.py)."""

from __future__ import annotations

from resolver import wire
from resolver.config import UpstreamAddress
from resolver.upstream.plain import Upstream

QUESTION = wire.name_to_wire("www.test") + b"\x00\x01\x00\x01"


def upstream() -> Upstream:
    return Upstream(UpstreamAddress("127.0.0.1", 53, "udp"))


def reply(qid: int, rcode: int, question: bytes = QUESTION) -> bytes:
    qd = b"\x00\x01" if question else b"\x00\x00"
    return qid.to_bytes(2, "big") + bytes((0x81, 0x80 | rcode)) + qd + b"\x00" * 6 + question


def test_the_echoed_question_matches():
    up = upstream()
    assert up.matches(reply(7, 0), 7, QUESTION) and up.mismatched == 0


def test_an_error_reply_without_a_question_is_accepted():
    """A server sends FORMERR (or REFUSED, NOTIMP, SERVFAIL) with no question for a
    query it cannot read: it is the reply, not a forgery to wait past (dnspython's
    Message.is_response does the same); ignoring it turned it into a timeout."""
    up = upstream()
    for rcode in (wire.FORMERR, wire.SERVFAIL, wire.NOTIMP, wire.REFUSED):
        assert up.matches(reply(7, rcode, b""), 7, QUESTION)
    assert up.mismatched == 0


def test_no_question_is_still_a_mismatch_for_answers_and_wrong_ids():
    up = upstream()
    assert not up.matches(reply(7, wire.NOERROR, b""), 7, QUESTION)
    assert not up.matches(reply(7, wire.NXDOMAIN, b""), 7, QUESTION)
    assert not up.matches(reply(8, wire.FORMERR, b""), 7, QUESTION)
    assert up.mismatched == 3
