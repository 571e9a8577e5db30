"""The optional sampled query log, and that turning it on routes every query through the slow path."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from dnslib import DNSHeader, DNSQuestion, DNSRecord

from resolver.cache.store import Cache
from resolver.clock import FakeClock
from resolver.config import Config, LoggingConfig
from resolver.serve.fastpath import FastPath
from resolver.serve.pipeline import Pipeline
from resolver.serve.querylog import QueryLog, _question
from resolver.stats import Stats


def query(name="www.test", qtype=28) -> bytes:
    return bytes(DNSRecord(DNSHeader(id=7, rd=1), q=DNSQuestion(name, qtype)).pack())


def test_logs_question_source_rcode_and_duration(caplog):
    caplog.set_level(logging.INFO, "resolver.queries")
    QueryLog(1.0).log(query(), "cache", 0, 0.0015)
    assert [r.getMessage() for r in caplog.records] == [
        "query www.test. AAAA source=cache rcode=NOERROR duration_ms=1.500"]


def test_sampling_uses_the_injected_random(caplog):
    caplog.set_level(logging.INFO, "resolver.queries")
    draws = iter([0.5, 0.05, 0.2])
    qlog = QueryLog(0.1, rand=lambda: next(draws))
    for _ in range(3):
        qlog.log(query(), "upstream", 3, 0.01)
    assert len(caplog.records) == 1 and "rcode=NXDOMAIN" in caplog.records[0].getMessage()


@pytest.mark.parametrize("data", [b"", b"\x00" * 11, b"\x00" * 12, b"\x00" * 12 + b"\x05ab", b"\xff" * 40,
                                  b"\x00" * 12 + b"\xc0\x0c\x00\x01\x00\x01", query()[:-3]])
def test_garbage_never_raises(data):
    name, qtype = _question(data)
    assert isinstance(name, str) and isinstance(qtype, str)
    QueryLog(1.0).log(data, "local", 1, 0.0)


def test_query_log_turns_the_hit_path_off():
    on = Config(logging=dataclasses.replace(LoggingConfig(), queries=True, query_sample=0.5))
    pipeline = Pipeline(on, Cache(10), None, FakeClock(), Stats())
    assert pipeline.answer_fast(query(), False) is None and pipeline.query_log.sample == 0.5
    pipeline.configure(Config())  # off again (a reload)
    assert pipeline.query_log is None
    assert pipeline.answer_fast.__func__ is FastPath.answer_fast


def raw_query(labels: list[bytes], qtype: int = 1) -> bytes:
    """A query whose name holds arbitrary label bytes (a client can send any)."""
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    return b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + qtype.to_bytes(2, "big") + b"\x00\x01"


def test_names_are_escaped_as_presentation_format(caplog):
    """A newline cannot forge a log line, ESC cannot reach a terminal (RFC 1035 §5.1 escapes)."""
    caplog.set_level(logging.INFO, "resolver.queries")
    forged = b"x\nquery www.bank.test. A source=cache rcode=NOERROR duration_ms=0.001"
    QueryLog(1.0).log(raw_query([forged, b"\x1b[31mred", b"a.b", b"sp ace\\", b"\xff", b"test"]), "upstream", 0, 0.001)
    [record] = caplog.records
    message = record.getMessage()
    assert "\n" not in message and "\x1b" not in message and "\xff" not in message
    assert record.qname == ("x\\010query\\032www\\.bank\\.test\\.\\032A\\032source=cache\\032rcode=NOERROR"
                            "\\032duration_ms=0\\.001.\\027[31mred.a\\.b.sp\\032ace\\\\.\\255.test.")
    assert message.startswith("query " + record.qname + " A source=upstream")


def test_plain_names_are_unchanged():
    from resolver.serve.querylog import escaped_name

    assert escaped_name(b"\x03www\x07example\x03com\x00") == "www.example.com."
    assert escaped_name(b"\x00") == "."
    assert escaped_name(b"\x01_\x01-\x01*\x00") == "_.-.*."
