"""atheris (libFuzzer) harness over the query path; run by tests/fuzz/test_atheris.py.

    python tests/fuzz/query_path_harness.py -max_total_time=20 [corpus_dir]

Each input is split by its first byte into one of three targets:

* client bytes → ``Pipeline.answer_fast`` (UDP and TCP) and ``Pipeline.resolve``
  with a fake upstream pool, plus the access-control refusal: the reply is None
  or a DNS response carrying the client's ID;
* upstream bytes → a reply to a fixed question (our question is written over the
  fuzzed one so the match checks pass and the deeper code is reached) through
  ``antispoof.scrub`` and ``wire.parse_reply``: a Prepared answer or
  UpstreamBadResponse, nothing else;
* the same upstream bytes served to ``resolve`` through the fake pool, then a
  cache hit for the same question.

Any other exception, a property violation, or an error logged by the
pipeline (its catch-all turns a bug into SERVFAIL plus a log line) is a crash
libFuzzer reports (and the harness exits non-zero).  The resolver modules are imported under
``atheris.instrument_imports`` so coverage guides the mutations.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

with atheris.instrument_imports(include=["resolver"]):
    from resolver import wire
    from resolver.cache.store import Cache
    from resolver.clock import FakeClock
    from resolver.config import Config, SecurityConfig
    from resolver.errors import UpstreamBadResponse, UpstreamError, UpstreamServfail
    from resolver.serve.acl import AccessControl
    from resolver.serve.pipeline import Pipeline
    from resolver.stats import Stats
    from resolver.wire import scrub as antispoof


from tests.support.fake_pool import FakePool  # noqa: E402

QUESTION = wire.name_to_wire("www.test") + b"\x00\x01\x00\x01"
QUERY = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + QUESTION


class _ScriptedPool(FakePool):
    """FakePool, except that ``reply`` (when set) is returned as the upstream's bytes."""

    reply: bytes | None = None

    async def exchange(self, question, cd, do, deadline):
        if self.reply is not None:
            data = self.reply
            antispoof.scrub(data, question)  # what Upstream.exchange does before returning
            return data, None
        try:
            return await super().exchange(question, cd, do, deadline)
        except UpstreamError:
            raise
        except Exception:
            # FakePool (test code) builds replies with dnslib from the name's text: it knows
            # only named types and text-safe labels.  Its limits are not the resolver's, so
            # they become an upstream failure, which the resolver must handle anyway.
            raise UpstreamServfail("servfail") from None


class _FailOnErrorLog(logging.Handler):
    """The pipeline turns a bug in the forwarding stage into SERVFAIL plus an error log
    line (house rule 9); for the fuzzer that log line is the crash."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(self.format(record))


LOOP = asyncio.new_event_loop()
CLOCK = FakeClock()
POOL = _ScriptedPool().answer("www.test", "A", "192.0.2.1").answer("alias.test", "CNAME", "www.test")
PIPELINE = Pipeline(Config(), Cache(500), POOL, CLOCK, Stats())
ACL = AccessControl(SecurityConfig())
ERRORS = _FailOnErrorLog()
logging.getLogger().addHandler(ERRORS)
logging.getLogger().setLevel(logging.ERROR)
logging.lastResort = None


def _check_reply(query: bytes, reply: bytes | None) -> None:
    if reply is None:
        return
    if len(reply) < 12 or not reply[2] & 0x80 or reply[:2] != query[:2]:
        raise AssertionError(f"bad reply {reply[:16]!r} to {query[:16]!r}")


def _upstream_reply(data: bytes) -> bytes:
    """Fuzzed bytes made into a reply to QUESTION: header fields from the input, our question."""
    head = bytearray((data + bytes(12))[:12])
    head[2] |= 0x80
    head[4:6] = b"\x00\x01"
    return bytes(head) + QUESTION + data[12:]


def test_one_input(raw: bytes) -> None:
    _one_input(raw)
    if ERRORS.seen:
        raise AssertionError("error logged:\n" + ERRORS.seen[0])


def _one_input(raw: bytes) -> None:
    if not raw:
        return
    target, data = raw[0] % 3, raw[1:]
    if target == 0:
        for tcp in (False, True):
            _check_reply(data, PIPELINE.answer_fast(data, tcp))
            _check_reply(data, LOOP.run_until_complete(PIPELINE.resolve(data, tcp)).reply)
        refusal = ACL.refusal(data)
        if refusal is not None and (len(refusal) > len(data) or refusal[3] & 0x0F != wire.REFUSED):
            raise AssertionError("refusal larger than the query, or not REFUSED")
        CLOCK.advance(1)
        return
    reply = _upstream_reply(data)
    if target == 1:
        try:
            scrubbed, removed = antispoof.scrub(reply, QUESTION)
            wire.parse_reply(scrubbed, QUESTION, min_ttl=0, max_ttl=86400, max_negative_ttl=3600)
        except UpstreamBadResponse:
            pass
        return
    POOL.reply = reply
    try:
        PIPELINE.cache.entries.clear()
        _check_reply(QUERY, LOOP.run_until_complete(PIPELINE.resolve(QUERY, False)).reply)
        _check_reply(QUERY, PIPELINE.answer_fast(QUERY, False))
    except UpstreamError:
        pass
    finally:
        POOL.reply = None
    CLOCK.advance(400)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
