"""Scenario tests for the caching stage: query, move the clock, change the upstream, expect.

TTLs are expired by advancing a FakeClock (no test sleeps to expire a TTL); the
client-timeout race uses real asyncio time with small timeouts (tens of ms).
One test per RFC 8767 behaviour, each with a short overview.
"""

from __future__ import annotations

import asyncio

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from resolver.serve.pipeline import Pipeline
from tests.support import counts
from tests.support.fake_time import run
from tests.support.client import ede_codes
from tests.support.pipeline import CLIENT_TIMEOUT, answers, make, query


def ask(pipe: Pipeline, data: bytes, tcp: bool = False) -> dns.message.Message:
    """What a client would get: the hit path first, then the full path."""
    reply = pipe.answer_fast(data, tcp)
    if reply is None:
        reply = run(pipe.resolve(data, tcp), pipe.clock).reply
    return dns.message.from_wire(reply)


def test_miss_then_hit_ages_ttl_and_asks_upstream_once():
    """A miss is forwarded and cached; later queries are hits whose TTL counts down."""
    pipe, pool, clock, stats = make()
    first = ask(pipe, query("www.test"))
    assert answers(first) == [("192.0.2.1", 300)]
    clock.advance(100)
    second = ask(pipe, query("WWW.test"))
    assert answers(second) == [("192.0.2.1", 200)]
    assert second.question[0].name.to_text() == "WWW.test."  # client's case echoed
    assert pool.calls == [("www.test", "A")]
    assert counts.hits(stats) == 1 and stats.cache_misses == 1


def test_expired_entry_refreshed_when_upstream_answers():
    """Past its TTL, an entry is refreshed from upstream and the new data is served."""
    pipe, pool, clock, stats = make()
    ask(pipe, query("short.test"))
    pool.replace("short.test", "A", "192.0.2.99", ttl=10)
    clock.advance(11)
    msg = ask(pipe, query("short.test"))
    assert answers(msg) == [("192.0.2.99", 10)]
    assert not ede_codes(msg)
    assert counts.stale_total(stats) == 0


@pytest.mark.parametrize("failure, reason", [
    ("servfail", "servfail"), ("refused", "refused"), ("unreachable", "unreachable"), ("drop", "timeout"),
])
def test_stale_answer_when_refresh_fails(failure, reason):
    """RFC 8767 §4: expired + upstream failure → stale records, TTL answer_ttl, EDE 3."""
    pipe, pool, clock, stats = make()
    ask(pipe, query("short.test"))
    getattr(pool, failure)()
    clock.advance(60)
    msg = ask(pipe, query("short.test"))
    assert msg.rcode() == dns.rcode.NOERROR
    assert answers(msg) == [("192.0.2.2", 30)]
    assert ede_codes(msg) == [3]
    assert stats.stale_answers[reason] == 1


def test_stale_answer_without_edns_has_no_opt():
    """A client that sent no EDNS gets the stale records without an OPT record."""
    pipe, pool, clock, stats = make()
    ask(pipe, query("short.test", edns=False))
    pool.servfail()
    clock.advance(60)
    msg = ask(pipe, query("short.test", edns=False))
    assert answers(msg) == [("192.0.2.2", 30)]
    assert msg.edns < 0


def test_recheck_timer_answers_stale_without_asking_upstream():
    """RFC 8767 §4 failure recheck: after a failed refresh, stale at once for `recheck` seconds."""
    pipe, pool, clock, stats = make(stale={"recheck": 30})
    ask(pipe, query("short.test"))
    pool.servfail()
    clock.advance(60)
    ask(pipe, query("short.test"))
    calls = len(pool.calls)
    clock.advance(10)
    for _ in range(5):
        msg = ask(pipe, query("short.test"))
        assert answers(msg) == [("192.0.2.2", 30)]
    assert len(pool.calls) == calls  # upstream not asked during the recheck window
    assert counts.stale(stats, "recheck") == 5
    pool.normal()
    clock.advance(21)  # recheck window over: ask upstream again, fresh data returns
    msg = ask(pipe, query("short.test"))
    assert answers(msg) == [("192.0.2.2", 10)]
    assert len(pool.calls) == calls + 1


def test_slow_upstream_client_gets_stale_then_cache_repaired():
    """RFC 8767 §5 client response timer: stale after client_timeout; the fetch goes on and refreshes."""
    pipe, pool, clock, stats = make(total_timeout=1.0)

    async def scenario():
        first = pipe.answer_fast(query("short.test"), False) or (await pipe.resolve(query("short.test"), False)).reply
        assert first
        pool.replace("short.test", "A", "192.0.2.77", ttl=10).delay(CLIENT_TIMEOUT * 4)
        clock.advance(60)
        loop = asyncio.get_running_loop()
        started = clock.monotonic()
        stale_reply = (await pipe.resolve(query("short.test"), False)).reply
        waited = clock.monotonic() - started
        await asyncio.gather(*pipe.inflight.values(), return_exceptions=True)  # let the refresh land
        fresh_reply = pipe.answer_fast(query("short.test"), False)
        return dns.message.from_wire(stale_reply), waited, dns.message.from_wire(fresh_reply)

    stale_msg, waited, fresh_msg = run(scenario(), clock)
    assert answers(stale_msg) == [("192.0.2.2", 30)]
    assert waited == pytest.approx(CLIENT_TIMEOUT)  # fake time: the race ends exactly at client_timeout
    assert answers(fresh_msg) == [("192.0.2.77", 10)]
    assert stats.stale_answers["timeout"] == 1


def test_nothing_older_than_max_age_is_served():
    """Past max_age the entry is gone: a failing upstream means SERVFAIL, not stale data."""
    pipe, pool, clock, stats = make(stale={"max_age": 3600})
    ask(pipe, query("short.test"))
    pool.servfail()
    clock.advance(10 + 3600 + 1)
    msg = ask(pipe, query("short.test"))
    assert msg.rcode() == dns.rcode.SERVFAIL
    assert stats.servfail_upstream == 1


def test_stale_disabled_gives_servfail():
    pipe, pool, clock, stats = make(stale={"enabled": False})
    ask(pipe, query("short.test"))
    pool.servfail()
    clock.advance(11)
    assert ask(pipe, query("short.test")).rcode() == dns.rcode.SERVFAIL


def test_never_cached_name_gets_servfail_within_deadline_and_failure_is_remembered():
    """No stale data: SERVFAIL (EDE 22) within total_timeout, never NXDOMAIN; RFC 9520 §3.2 hold."""
    pipe, pool, clock, stats = make(total_timeout=0.1)
    pool.drop()

    async def timed():
        loop = asyncio.get_running_loop()
        t = clock.monotonic()
        reply = (await pipe.resolve(query("www.test"), False)).reply
        return dns.message.from_wire(reply), clock.monotonic() - t

    msg, waited = run(timed(), clock)
    assert msg.rcode() == dns.rcode.SERVFAIL
    assert ede_codes(msg) == [22]
    assert waited == pytest.approx(0.1)  # exactly total_timeout, never more
    calls = len(pool.calls)
    pool.normal()
    assert ask(pipe, query("www.test")).rcode() == dns.rcode.SERVFAIL  # remembered for servfail_ttl (1 s)
    assert len(pool.calls) == calls
    clock.advance(1.1)
    assert answers(ask(pipe, query("www.test"))) == [("192.0.2.1", 300)]


def test_negative_answer_cached_and_served_stale_with_ede_19():
    """RFC 2308 negative caching (SOA minimum 60), and stale NXDOMAIN with EDE 19 (RFC 8914)."""
    pipe, pool, clock, stats = make()
    pool.nxdomain("gone.test")
    msg = ask(pipe, query("gone.test"))
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert msg.authority[0].ttl == 60
    clock.advance(30)
    assert ask(pipe, query("gone.test")).authority[0].ttl == 30
    assert len(pool.calls) == 1
    pool.servfail()
    clock.advance(31)
    msg = ask(pipe, query("gone.test"))
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert ede_codes(msg) == [19]
    assert msg.authority[0].ttl == 30


def test_concurrent_identical_misses_are_coalesced():
    """Ten clients asking the same uncached name cause one upstream query."""
    pipe, pool, clock, stats = make()
    pool.delay(0.02)

    async def many():
        return [a.reply for a in await asyncio.gather(*(pipe.resolve(query("www.test"), False) for _ in range(10)))]

    replies = run(many(), clock)
    assert all(answers(dns.message.from_wire(r)) == [("192.0.2.1", 300)] for r in replies)
    assert pool.calls == [("www.test", "A")]
    assert stats.coalesced == 9


def test_coalesced_clients_of_a_failed_miss_all_get_servfail():
    """The first client of a plain miss fetches in its own task; a failure reaches every joiner."""
    pipe, pool, clock, stats = make()
    pool.delay(0.02)
    pool.servfail()

    async def many():
        return [a.reply for a in await asyncio.gather(*(pipe.resolve(query("www.test"), False) for _ in range(5)))]

    replies = [dns.message.from_wire(r) for r in run(many(), clock)]
    assert [r.rcode() for r in replies] == [dns.rcode.SERVFAIL] * 5
    assert pool.calls == [("www.test", "A")] and stats.coalesced == 4
    assert not pipe.inflight


def test_cancelling_a_client_led_fetch_fails_its_joiners_and_caches_nothing():
    """A plain miss is fetched by the first client's own task.  Shutdown (cancel_refreshes, or the
    drain cancelling client tasks) must stop that fetch, and clients that joined it get SERVFAIL at
    once instead of waiting for a fetch that is gone."""
    pipe, pool, clock, stats = make(total_timeout=5.0)
    pool.delay(1.0)

    async def scenario():
        loop = asyncio.get_running_loop()
        leader = loop.create_task(pipe.resolve(query("www.test"), False))
        await asyncio.sleep(0.01)
        joiner = loop.create_task(pipe.resolve(query("www.test"), False))
        await asyncio.sleep(0.01)
        assert pipe.inflight  # the leader's fetch, joined
        await asyncio.wait_for(pipe.cancel_refreshes(), 0.5)
        reply = (await asyncio.wait_for(joiner, 0.5)).reply
        return dns.message.from_wire(reply), leader.cancelled()

    msg, cancelled = run(scenario(), clock)
    assert cancelled and msg.rcode() == dns.rcode.SERVFAIL
    assert not pipe.inflight and pipe.cache.get(b"\x03www\x04test\x00\x00\x01\x00\x01") is None


def test_do_and_cd_take_part_in_the_key():
    """A DNSSEC-aware client (DO) or a CD client must not get an answer fetched for someone else."""
    pipe, pool, clock, stats = make()
    ask(pipe, query("www.test"))
    ask(pipe, query("www.test", do=True))
    ask(pipe, query("www.test", cd=True))
    ask(pipe, query("www.test"))
    assert len(pool.calls) == 3


def test_client_joining_an_old_fetch_gets_stale_at_once():
    """A client arriving after a fetch has already run past client_timeout does not wait again."""
    pipe, pool, clock, stats = make(total_timeout=2.0)

    async def scenario():
        await pipe.resolve(query("short.test"), False)
        pool.drop()
        clock.advance(60)
        await pipe.resolve(query("short.test"), False)  # waits client_timeout; fetch still running
        loop = asyncio.get_running_loop()
        t = clock.monotonic()
        reply = (await pipe.resolve(query("short.test"), False)).reply
        return dns.message.from_wire(reply), clock.monotonic() - t

    msg, waited = run(scenario(), clock)
    assert answers(msg) == [("192.0.2.2", 30)]
    assert waited == 0.0
    assert stats.coalesced == 1


def test_truncation_over_udp_and_full_answer_over_tcp():
    """An answer bigger than the client's UDP size gets TC=1; over TCP it is sent whole."""
    pipe, pool, clock, stats = make()
    for i in range(30):
        pool.answer("big.test", "TXT", f"record {i:02d} " + "x" * 40, ttl=300)
    udp = ask(pipe, query("big.test", "TXT", edns=False))
    assert udp.flags & dns.flags.TC and not udp.answer
    udp_cached = ask(pipe, query("big.test", "TXT", edns=False))
    assert udp_cached.flags & dns.flags.TC
    tcp = ask(pipe, query("big.test", "TXT", edns=False), tcp=True)
    assert len(tcp.answer[0]) == 30 and not tcp.flags & dns.flags.TC
