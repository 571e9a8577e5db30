"""The pipeline in-process, without sockets: built with a FakeClock and a scripted pool, asked
as a listener would ask it (the hit path first, then the full path)."""

from __future__ import annotations

import asyncio
import dataclasses

import dns.flags
import dns.message
from dnslib import QTYPE

from resolver import wire
from resolver.cache.store import Cache
from resolver.clock import FakeClock
from resolver.config import CacheConfig, Config, StaleConfig, UpstreamOptions, parse_config
from resolver.local.answers import LocalAnswers
from resolver.serve.pipeline import Pipeline
from resolver.stats import Stats
from tests.support.fake_pool import FakePool
from tests.support.packets import client_query, upstream_reply

__all__ = ["CLIENT_TIMEOUT", "START", "NoPool", "answers", "ask_in_loop", "make", "make_pipeline",
           "make_local_pipeline", "query", "settle", "store"]

# --- the caching stage with a scripted pool (tests/component)

CLIENT_TIMEOUT = 0.05


def make(stale: dict | None = None, cache: dict | None = None, total_timeout: float = 0.3):
    config = Config(
        stale=dataclasses.replace(StaleConfig(), client_timeout=CLIENT_TIMEOUT, **(stale or {})),
        cache=dataclasses.replace(CacheConfig(), **(cache or {})),
        upstream=dataclasses.replace(UpstreamOptions(), attempt_timeout=total_timeout, total_timeout=total_timeout),
    )
    clock = FakeClock()
    pool = FakePool(clock)
    pool.answer("www.test", "A", "192.0.2.1", ttl=300)
    pool.answer("short.test", "A", "192.0.2.2", ttl=10)
    stats = Stats()
    pipe = Pipeline(config, Cache(config.cache.max_entries, stats.tally), pool, clock, stats)
    return pipe, pool, clock, stats


def query(name: str, rtype: str = "A", edns: bool = True, do: bool = False, cd: bool = False) -> bytes:
    q = dns.message.make_query(name, rtype, use_edns=0 if edns else False, want_dnssec=do)
    if cd:
        q.flags |= dns.flags.CD
    return q.to_wire()


def answers(msg: dns.message.Message) -> list[tuple[str, int]]:
    return [(rr.to_text(), rrset.ttl) for rrset in msg.answer for rr in rrset]


def make_local_pipeline():
    """A pipeline with local records (CNAMEs to outside names, a block zone) and a scripted pool."""
    config = parse_config({"upstreams": ["192.0.2.53"], "local_records": [
        "api.lan. 60 IN CNAME lb.test.", "web.lan. 60 IN CNAME api.lan.", "gone.lan. 60 IN CNAME nosuch.test.",
        "blk.lan. 60 IN CNAME x.home.arpa.", "printer.lan. 300 IN A 192.0.2.20"],
        "block_zones": ["home.arpa"]})
    config = dataclasses.replace(config, stale=dataclasses.replace(StaleConfig(), client_timeout=0.05),
                                 upstream=dataclasses.replace(UpstreamOptions(), attempt_timeout=0.3,
                                                              total_timeout=0.3))
    clock, cache = FakeClock(), Cache(100)
    pool = FakePool(clock).answer("lb.test", "A", "198.51.100.7", ttl=20).nxdomain("nosuch.test")
    return Pipeline(config, cache, pool, clock, Stats(), LocalAnswers(config)), pool, clock, cache


async def ask_in_loop(pipe, data: bytes, tcp: bool = False) -> dns.message.Message:
    """As a listener would: the hit path, then the full path, inside the running loop."""
    reply = pipe.answer_fast(data, tcp)
    if reply is None:
        reply = (await pipe.resolve(data, tcp)).reply
    return dns.message.from_wire(reply)


async def settle(pipe) -> None:
    """Let background refreshes finish."""
    while pipe.inflight:
        await asyncio.gather(*pipe.inflight.values(), return_exceptions=True)


# --- the fast path with a pool that must never be used (tests/unit)

START = 1000.0


class NoPool:
    """answer_fast never talks upstream; neither does resolve() on a cache hit."""

    epoch = 0  # as UpstreamPool: no upstream ever recovers here

    def known_down(self, qname: bytes | None = None) -> bool:
        return False

    def known_slow(self, threshold: float, qname: bytes | None = None) -> bool:
        return False

    def known_lossy(self, threshold: float, qname: bytes | None = None) -> bool:
        return False

    async def exchange(self, *args, **kwargs):  # pragma: no cover - failing is the point
        raise AssertionError("the upstream pool must not be used on a cache hit")


def make_pipeline(config: Config | None = None, max_entries: int = 1000):
    clock = FakeClock(START)
    stats = Stats()
    cache = Cache(max_entries, stats.tally)
    pipeline = Pipeline(config or Config(), cache, NoPool(), clock, stats)
    return pipeline, cache, clock


def store(pipeline: Pipeline, name: str, qtype=QTYPE.A, *, do=False, cd=False, rcode=0, answers=(), auth=(),
          additional=(), qclass=1):
    """Cache a dnslib-built upstream reply exactly as the miss path would; returns the Entry."""
    q = wire.parse_query(client_query(name, qtype, edns=1232, do=do, cd=cd, qclass=qclass))
    upstream_question = q.qname.lower() + q.question[-4:]
    reply = upstream_reply(name.lower(), qtype, qid=99, rcode=rcode, answers=answers, auth=auth,
                           additional=additional, do=do, cd=cd, qclass=qclass)
    wire.check_reply_matches(reply, 99, upstream_question)
    c = pipeline.config.cache
    prepared = wire.parse_reply(reply, upstream_question, min_ttl=c.min_ttl, max_ttl=c.max_ttl,
                                max_negative_ttl=c.max_negative_ttl)
    assert prepared.ttl > 0
    return pipeline.cache.put(q.key, prepared, pipeline.clock.monotonic(), pipeline.stale_window)
