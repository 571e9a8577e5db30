"""Scenario tests for the outage policies of issue 5 in the caching stage.

Prefetch, answer-first (client_timeout 0), stale at once when every upstream is
known down, and the pool epoch that ends failure-recheck holds on recovery.  The
pipeline runs with a FakeClock and the scriptable FakePool; each scenario runs in
one event loop so background refreshes can be awaited.
"""

from __future__ import annotations

import asyncio
import dataclasses

import dns.message

from tests.support import counts
from tests.support.fake_time import run
from tests.support.client import ede_codes
from tests.support.pipeline import answers, ask_in_loop, make, query, settle


def with_client_timeout(pipe, seconds: float):
    config = pipe.config
    pipe.configure(dataclasses.replace(config, stale=dataclasses.replace(config.stale, client_timeout=seconds)))


# ------------------------------------------------------------------------ prefetch

def test_prefetch_in_last_tenth_of_ttl_refreshes_once_in_background():
    """Asked in the last 10% of its TTL, an entry is refreshed behind the answer, once."""
    pipe, pool, clock, stats = make()

    async def scenario():
        await ask_in_loop(pipe, query("www.test"))
        clock.advance(269)  # 31 s left of 300: not yet in the last 10%
        early = await ask_in_loop(pipe, query("www.test"))
        assert stats.prefetches == 0 and not pipe.inflight
        pool.replace("www.test", "A", "192.0.2.99", ttl=300)
        clock.advance(2)  # 29 s left: in the last 10%
        hit = await ask_in_loop(pipe, query("www.test"))
        again = await ask_in_loop(pipe, query("www.test"))  # same second: no second refresh
        assert stats.prefetches == 1
        await settle(pipe)
        after = await ask_in_loop(pipe, query("www.test"))
        return early, hit, again, after

    early, hit, again, after = run(scenario(), clock)
    assert answers(early) == [("192.0.2.1", 31)]
    assert answers(hit) == [("192.0.2.1", 29)]  # the client is not kept waiting
    assert answers(again) == [("192.0.2.1", 29)]
    assert answers(after) == [("192.0.2.99", 300)]  # refreshed: the outage would find it fresh
    assert pool.calls == [("www.test", "A"), ("www.test", "A")]
    assert counts.hits(stats) == 4


def test_prefetch_via_slow_path_keeps_do_and_cd_flags():
    """A prefetch asks upstream with the same DO/CD as the cached entry's key."""
    pipe, pool, clock, stats = make()
    seen = []
    original = pool.exchange

    async def spy(question, cd, do, deadline):
        seen.append((cd, do))
        return await original(question, cd, do, deadline)

    pool.exchange = spy

    async def scenario():
        await ask_in_loop(pipe, query("www.test", do=True, cd=True))
        clock.advance(280)
        await ask_in_loop(pipe, query("www.test", do=True, cd=True))
        await settle(pipe)

    run(scenario(), clock)
    assert stats.prefetches == 1
    assert seen == [(True, True), (True, True)]


def test_prefetch_disabled_with_zero():
    pipe, pool, clock, stats = make(cache={"prefetch": 0.0})

    async def scenario():
        await ask_in_loop(pipe, query("www.test"))
        clock.advance(299)
        await ask_in_loop(pipe, query("www.test"))

    run(scenario(), clock)
    assert stats.prefetches == 0 and pool.calls == [("www.test", "A")]


def test_no_prefetch_while_every_upstream_is_known_down():
    """A prefetch could only fail and add load; the prober watches the upstreams instead."""
    pipe, pool, clock, stats = make()

    async def scenario():
        await ask_in_loop(pipe, query("www.test"))
        pool.all_down = True
        clock.advance(290)
        return await ask_in_loop(pipe, query("www.test"))

    msg = run(scenario(), clock)
    assert answers(msg) == [("192.0.2.1", 10)]
    assert stats.prefetches == 0 and pool.calls == [("www.test", "A")]


def test_hit_path_without_running_loop_never_breaks_on_prefetch():
    """A synchronous caller (benchmarks) gets its answer; the prefetch is just skipped."""
    pipe, pool, clock, stats = make()
    run(ask_in_loop(pipe, query("www.test")), pipe.clock)
    clock.advance(295)
    reply = pipe.answer_fast(query("www.test"), False)
    assert answers(dns.message.from_wire(reply)) == [("192.0.2.1", 5)]
    assert stats.prefetches == 0


# -------------------------------------------------------- answer first, all down

def test_client_timeout_zero_answers_stale_at_once_and_refreshes_behind():
    """stale.client_timeout 0: an expired entry is answered stale at once; the refresh repairs the cache."""
    pipe, pool, clock, stats = make(total_timeout=2.0)
    with_client_timeout(pipe, 0.0)

    async def scenario():
        await ask_in_loop(pipe, query("www.test"))
        clock.advance(301)
        pool.replace("www.test", "A", "192.0.2.7", ttl=300).delay(0.2)
        loop = asyncio.get_running_loop()
        t = clock.monotonic()
        stale = await ask_in_loop(pipe, query("www.test"))
        waited = clock.monotonic() - t
        await settle(pipe)
        fresh = await ask_in_loop(pipe, query("www.test"))
        return stale, waited, fresh

    stale, waited, fresh = run(scenario(), clock)
    assert answers(stale) == [("192.0.2.1", 30)] and ede_codes(stale) == [3]
    assert waited == 0.0  # did not wait for the 0.2 s upstream (fake time: exact)
    assert stats.stale_answers["answer_first"] == 1
    assert answers(fresh) == [("192.0.2.7", 300)]


def test_every_upstream_known_down_answers_stale_at_once_with_one_background_try():
    """All upstreams down: no client_timeout wait; one refresh per name per recheck interval."""
    pipe, pool, clock, stats = make(total_timeout=0.3)
    with_client_timeout(pipe, 1.0)

    async def scenario():
        await ask_in_loop(pipe, query("www.test"))
        clock.advance(301)
        pool.drop()
        pool.all_down = True
        loop = asyncio.get_running_loop()
        t = clock.monotonic()
        first = await ask_in_loop(pipe, query("www.test"))
        waited = clock.monotonic() - t
        more = [await ask_in_loop(pipe, query("www.test")) for _ in range(5)]
        await settle(pipe)
        return first, waited, more

    first, waited, more = run(scenario(), clock)
    assert answers(first) == [("192.0.2.1", 30)] and ede_codes(first) == [3]
    assert waited == 0.0  # no client_timeout (1.0) wait at all (fake time: exact)
    assert stats.stale_answers["upstreams_down"] == 1
    assert counts.stale(stats, "recheck") == 5  # held: answered by the hit path
    assert all(answers(m) == [("192.0.2.1", 30)] for m in more)
    assert pool.calls == [("www.test", "A"), ("www.test", "A")]  # one background try, not one per query


def test_never_cached_name_still_tried_when_all_upstreams_are_down():
    """Nothing stale to give: one upstream is still tried within the deadline (it may have healed)."""
    pipe, pool, clock, stats = make()
    pool.all_down = True
    msg = run(ask_in_loop(pipe, query("www.test")), pipe.clock)
    assert answers(msg) == [("192.0.2.1", 300)]


# ------------------------------------------------------------------ pool epoch

def test_recovery_epoch_ends_the_recheck_hold():
    """Held under the recheck timer, a name is refreshed on its next query once an upstream recovers."""
    pipe, pool, clock, stats = make(stale={"recheck": 30})

    async def scenario():
        await ask_in_loop(pipe, query("www.test"))
        clock.advance(301)
        pool.servfail()
        failed = await ask_in_loop(pipe, query("www.test"))
        held = await ask_in_loop(pipe, query("www.test"))
        pool.normal().replace("www.test", "A", "192.0.2.8", ttl=300)
        pool.epoch += 1  # what UpstreamPool does when a probe finds an upstream up again
        back = await ask_in_loop(pipe, query("www.test"))
        return failed, held, back

    failed, held, back = run(scenario(), clock)
    assert answers(failed) == [("192.0.2.1", 30)]
    assert answers(held) == [("192.0.2.1", 30)]
    assert counts.stale(stats, "recheck") == 1
    assert answers(back) == [("192.0.2.8", 300)]  # no 30 s wait


# ------------------------------------------------------------------ stale rules

def test_stale_rules_give_per_name_windows_and_ttls():
    """A rotating name gets a short window and its own stale TTL; a disabled one none; others the global."""
    from resolver.config import StaleRule

    pipe, pool, clock, stats = make()
    config = pipe.config
    rules = (StaleRule(match="*.elb.test", max_age=300.0, answer_ttl=10), StaleRule(match="*.cdn.test", enabled=False))
    pipe.configure(dataclasses.replace(config, stale=dataclasses.replace(config.stale, rules=rules)))
    for name in ("lb.elb.test", "img.cdn.test"):
        pool.answer(name, "A", "192.0.2.30", ttl=60)

    async def scenario():
        out = {}
        for name in ("lb.elb.test", "img.cdn.test", "www.test"):
            await ask_in_loop(pipe, query(name))
        pool.servfail()
        clock.advance(300 + 200)  # www.test (TTL 300) 200 s expired; the others 440 s
        for name in ("lb.elb.test", "img.cdn.test", "www.test"):
            out[name] = await ask_in_loop(pipe, query(name))
        return out

    out = run(scenario(), clock)
    assert out["lb.elb.test"].rcode() == 2  # past its 300 s window: SERVFAIL
    assert out["img.cdn.test"].rcode() == 2  # no stale window at all
    assert answers(out["www.test"]) == [("192.0.2.1", 30)]


def test_stale_rule_answer_ttl_on_both_paths():
    from resolver.config import StaleRule

    pipe, pool, clock, stats = make(stale={"recheck": 30})
    config = pipe.config
    rules = (StaleRule(match="*.elb.test", max_age=300.0, answer_ttl=10),)
    pipe.configure(dataclasses.replace(config, stale=dataclasses.replace(config.stale, rules=rules)))
    pool.answer("lb.elb.test", "A", "192.0.2.30", ttl=60)

    async def scenario():
        await ask_in_loop(pipe, query("lb.elb.test"))
        pool.servfail()
        clock.advance(120)
        slow = await ask_in_loop(pipe, query("lb.elb.test"))   # refresh fails: slow path
        fast = await ask_in_loop(pipe, query("lb.elb.test"))   # held: hit path
        return slow, fast

    slow, fast = run(scenario(), clock)
    assert answers(slow) == [("192.0.2.30", 10)] and answers(fast) == [("192.0.2.30", 10)]
    assert counts.stale(stats, "recheck") == 1


def _degraded_upstream_scenario(delay: float, degrade, **stale_settings):
    """An expired entry, an upstream group that ``degrade(pool)`` makes measured slow or lossy,
    and a refresh answered ``delay`` seconds after it goes out."""
    pipe, pool, clock, stats = make(total_timeout=4.0)
    config = pipe.config
    pipe.configure(dataclasses.replace(config, stale=dataclasses.replace(
        config.stale, client_timeout=1.8, **stale_settings)))

    async def scenario():
        await ask_in_loop(pipe, query("www.test"))
        clock.advance(301)
        pool.replace("www.test", "A", "192.0.2.7", ttl=300).delay(delay)
        degrade(pool)
        t = clock.monotonic()
        first = await ask_in_loop(pipe, query("www.test"))
        waited = clock.monotonic() - t
        await settle(pipe)
        after = await ask_in_loop(pipe, query("www.test"))
        return first, waited, after

    return run(scenario(), clock), stats


def _slow_upstream_scenario(slow_upstream: float):
    """Measured at 1.5 s (above 0.5 s), answering in 1.5 s."""
    return _degraded_upstream_scenario(1.5, lambda pool: setattr(pool, "slow_rtt", 1.5), slow_upstream=slow_upstream)


def test_a_slow_upstream_group_answers_expired_names_stale_at_once_and_refreshes_behind():
    """stale.slow_upstream: when the group's smoothed RTT says a refresh takes 1.5 s, a client
    asking an expired name gets the stale answer now instead of waiting 1.5 s for it; the fetch
    behind it repairs the cache."""
    (first, waited, after), stats = _slow_upstream_scenario(0.5)
    assert answers(first) == [("192.0.2.1", 30)] and ede_codes(first) == [3]
    assert waited == 0.0  # fake time: not a moment of the 1.5 s
    assert stats.stale_answers["slow_upstream"] == 1
    assert answers(after) == [("192.0.2.7", 300)]


def test_slow_upstream_off_waits_for_the_slow_refresh():
    """stale.slow_upstream 0: the RFC 8767 race as before — the 1.5 s answer beats client_timeout (1.8 s)."""
    (first, waited, _), stats = _slow_upstream_scenario(0.0)
    assert answers(first) == [("192.0.2.7", 300)] and waited == 1.5
    assert stats.stale_answers["slow_upstream"] == 0


def _lossy_upstream_scenario(lossy_upstream: float):
    """Half the group's recent sends lost; this refresh's first datagram too, its retransmission
    answered after the 0.25 s RTO."""
    return _degraded_upstream_scenario(0.25, lambda pool: setattr(pool, "loss", 0.5), lossy_upstream=lossy_upstream)


def test_a_lossy_upstream_group_answers_expired_names_stale_at_once_and_refreshes_behind():
    """stale.lossy_upstream: when the group loses half its sends, a refresh usually waits an
    RTO; a client asking an expired name gets the stale answer now, the fetch behind it
    (retransmitting) repairs the cache."""
    (first, waited, after), stats = _lossy_upstream_scenario(0.2)
    assert answers(first) == [("192.0.2.1", 30)] and ede_codes(first) == [3]
    assert waited == 0.0
    assert stats.stale_answers["lossy_upstream"] == 1
    assert answers(after) == [("192.0.2.7", 300)]


def test_lossy_upstream_off_waits_for_the_retransmitted_refresh():
    (first, waited, _), stats = _lossy_upstream_scenario(0.0)
    assert answers(first) == [("192.0.2.7", 300)] and waited == 0.25
    assert stats.stale_answers["lossy_upstream"] == 0
