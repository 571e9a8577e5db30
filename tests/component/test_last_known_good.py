"""Scenarios for last-known-good (stale.last_known_good) and the vanished-answers counter.

An upstream that *answers* — NXDOMAIN, or NOERROR with no records — for a name
whose positive records are cached is the AWS us-east-1 2025 failure shape:
serve-stale never triggers.  Each test: cache the name, make the upstream answer
empty, move the clock past the TTL, and check what the client gets.
"""

from __future__ import annotations

import asyncio
import dataclasses

import dns.edns
import dns.rcode

from resolver.config import LastKnownGoodConfig
from tests.support.fake_time import run
from tests.support.client import ede_codes
from tests.support.pipeline import answers, ask_in_loop, make, query, settle


def with_lkg(pipe, **values):
    config = pipe.config
    lkg = dataclasses.replace(LastKnownGoodConfig(), **values)
    pipe.configure(dataclasses.replace(config, stale=dataclasses.replace(config.stale, last_known_good=lkg)))


def vanish(pool, name="www.test", rtype="A"):
    pool.records.pop((name, rtype), None)


def ede_texts(msg) -> list[str]:
    return [o.text for o in msg.options if o.otype == dns.edns.OptionType.EDE]


def after_vanish(pipe, pool, clock, seconds: float):
    """Cache www.test, make it vanish upstream, move the clock, ask again: what the client gets."""

    async def scenario():
        await ask_in_loop(pipe, query("www.test"))
        vanish(pool)
        clock.advance(seconds)
        return await ask_in_loop(pipe, query("www.test"))

    return run(scenario(), clock)


def test_vanished_counter_is_always_on():
    """No zones configured: the empty answer goes through, but it is counted."""
    pipe, pool, clock, stats = make()

    msg = after_vanish(pipe, pool, clock, 301)
    assert msg.rcode() == dns.rcode.NXDOMAIN and not msg.answer
    assert stats.answers_vanished == 1 and not stats.lkg_answers


def test_enforce_serves_last_records_and_rechecks_until_they_return():
    pipe, pool, clock, stats = make(stale={"recheck": 30})
    with_lkg(pipe, zones=("test",), max_age=3600.0, mode="enforce")

    async def scenario():
        out = {}
        await ask_in_loop(pipe, query("www.test"))
        vanish(pool)
        clock.advance(301)
        out["first"] = await ask_in_loop(pipe, query("www.test"))
        out["held"] = await ask_in_loop(pipe, query("www.test"))  # recheck timer: no upstream query
        calls_while_held = len(pool.calls)
        clock.advance(31)
        out["rechecked"] = await ask_in_loop(pipe, query("www.test"))  # asks again: still empty
        out["calls"] = (calls_while_held, len(pool.calls))
        pool.answer("www.test", "A", "192.0.2.50", ttl=300)
        clock.advance(31)
        out["back"] = await ask_in_loop(pipe, query("www.test"))
        return out

    out = run(scenario(), clock)
    first = out["first"]
    assert first.rcode() == dns.rcode.NOERROR
    assert answers(first) == [("192.0.2.1", 30)]
    assert ede_codes(first) == [3]
    assert ede_texts(first) == ["upstream answered NXDOMAIN; serving last known good records"]
    assert answers(out["held"]) == [("192.0.2.1", 30)]
    assert ede_texts(out["held"]) == ede_texts(first)  # held answers explain themselves too
    assert out["calls"] == (2, 3)
    assert answers(out["rechecked"]) == [("192.0.2.1", 30)]
    assert answers(out["back"]) == [("192.0.2.50", 300)] and not ede_codes(out["back"])
    assert stats.lkg_answers["enforce"] == 2 and stats.answers_vanished == 2
    assert stats.stale_answers["last_known_good"] == 2


def test_enforce_on_nodata_too():
    """NOERROR with no records (the name still has other types) is defended the same way."""
    pipe, pool, clock, stats = make()
    pool.answer("www.test", "AAAA", "2001:db8::1")
    with_lkg(pipe, zones=("test",))

    msg = after_vanish(pipe, pool, clock, 301)
    assert answers(msg) == [("192.0.2.1", 30)]
    assert ede_texts(msg) == ["upstream answered NODATA; serving last known good records"]


def test_records_older_than_max_age_are_not_defended():
    """The hide is bounded: records last confirmed more than max_age ago let the empty answer through."""
    pipe, pool, clock, stats = make()
    with_lkg(pipe, zones=("test",), max_age=600.0)

    msg = after_vanish(pipe, pool, clock, 601)
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert stats.answers_vanished == 1 and not stats.lkg_answers


def test_zone_not_listed_is_not_defended():
    pipe, pool, clock, stats = make()
    with_lkg(pipe, zones=("amazonaws.com", "xtest"))

    msg = after_vanish(pipe, pool, clock, 301)
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert stats.answers_vanished == 1 and not stats.lkg_answers


def test_shadow_serves_the_real_answer_and_counts():
    pipe, pool, clock, stats = make()
    with_lkg(pipe, zones=("test",), mode="shadow")

    msg = after_vanish(pipe, pool, clock, 301)
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert stats.lkg_answers["shadow"] == 1 and stats.answers_vanished == 1


def test_enforce_with_stale_disabled_never_turns_an_answer_into_servfail():
    """Stale off: the entry has no stale window, so nothing is defended and NXDOMAIN passes."""
    pipe, pool, clock, stats = make(stale={"enabled": False})
    with_lkg(pipe, zones=("test",))

    msg = after_vanish(pipe, pool, clock, 301)
    assert msg.rcode() == dns.rcode.NXDOMAIN


def test_enforce_on_a_prefetch_keeps_the_fresh_entry():
    """A prefetch that finds the name empty leaves the cached records in place."""
    pipe, pool, clock, stats = make()
    with_lkg(pipe, zones=("test",))

    async def scenario():
        await ask_in_loop(pipe, query("www.test"))
        vanish(pool)
        clock.advance(290)
        await ask_in_loop(pipe, query("www.test"))  # triggers the prefetch
        await settle(pipe)
        return await ask_in_loop(pipe, query("www.test"))

    msg = run(scenario(), clock)
    assert stats.prefetches == 1 and stats.lkg_answers["enforce"] == 1
    assert answers(msg) == [("192.0.2.1", 10)]


def test_operator_pin_holds_records_outside_zones_and_past_every_window():
    """A pinned name keeps its records through empty answers, past max_age; unpin lets go."""
    from resolver import wire

    pipe, pool, clock, stats = make(stale={"max_age": 600.0, "recheck": 30})
    question = wire.name_to_wire("www.test") + b"\x00\x01\x00\x01"

    async def scenario():
        out = {}
        await ask_in_loop(pipe, query("www.test"))
        await ask_in_loop(pipe, query("www.test", do=True))
        out["pinned"] = pipe.pin(question)
        vanish(pool)
        clock.advance(300 + 7200)  # far past the stale window (600 s)
        out["held"] = await ask_in_loop(pipe, query("www.test"))
        out["held_do"] = await ask_in_loop(pipe, query("www.test", do=True))
        out["unpinned"] = pipe.unpin(question)
        clock.advance(31)
        out["after"] = await ask_in_loop(pipe, query("www.test"))
        return out

    out = run(scenario(), clock)
    assert out["pinned"] and out["unpinned"]
    assert answers(out["held"]) == [("192.0.2.1", 30)] and ede_codes(out["held"]) == [3]
    assert answers(out["held_do"]) == [("192.0.2.1", 30)]
    assert out["after"].rcode() == dns.rcode.NXDOMAIN
    assert pipe.unpin(question) is False


def test_pin_before_records_arrive_applies_when_they_do():
    from resolver import wire

    pipe, pool, clock, stats = make(stale={"max_age": 60.0})
    question = wire.name_to_wire("www.test") + b"\x00\x01\x00\x01"

    async def scenario():
        assert pipe.pin(question) is False
        await ask_in_loop(pipe, query("www.test"))
        vanish(pool)
        clock.advance(300 + 3600)
        return await ask_in_loop(pipe, query("www.test"))

    assert answers(run(scenario(), clock)) == [("192.0.2.1", 30)]
