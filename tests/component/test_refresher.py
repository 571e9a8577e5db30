"""The refresher alone: one fetch per key, in-flight records, the failure hold, prefetch, shutdown."""

from __future__ import annotations

import asyncio
import dataclasses

import dns.message
import pytest

from resolver import wire
from resolver.cache.store import Cache
from resolver.clock import FakeClock
from resolver.config import CacheConfig, Config, SecurityConfig, StaleConfig, UpstreamOptions
from resolver.errors import UpstreamError
from resolver.policy import stale as stale_policy
from resolver.serve.limits import ClientLimits
from resolver.serve.refresher import InFlight, Refresher
from resolver.stats import Stats
from tests.support.fake_time import run
from tests.support.fake_pool import FakePool

WWW = wire.name_to_wire("www.test") + b"\x00\x01\x00\x01"


def make(servfail_ttl: int = 5, per_client: int = 4):
    config = Config(
        stale=dataclasses.replace(StaleConfig(), recheck=30.0),
        cache=dataclasses.replace(CacheConfig(), servfail_ttl=servfail_ttl),
        upstream=dataclasses.replace(UpstreamOptions(), attempt_timeout=0.3, total_timeout=0.3),
    )
    clock = FakeClock()
    pool = FakePool(clock).answer("www.test", "A", "192.0.2.1", ttl=300)
    stats = Stats()
    limits = ClientLimits(SecurityConfig(max_inflight_per_client=per_client, client_limits_exempt=()))
    refresher = Refresher(config, Cache(100, stats.tally), pool, clock, stats, limits)
    return refresher, pool, clock, stats, limits


def parsed(name: str = "www.test") -> wire.Query:
    return wire.parse_query(dns.message.make_query(name, "A", use_edns=0).to_wire())


def test_fetch_is_coalesced_into_one_in_flight_record():
    """Clients asking the same question share one fetch: one upstream call, one record."""
    refresher, pool, clock, stats, limits = make()
    pool.delay(0.02)

    async def scenario():
        assert limits.acquire_inflight("192.0.2.10")  # the caching stage charges the client that starts it
        first = refresher.fetch(parsed(), "192.0.2.10")
        second = refresher.fetch(parsed())
        assert first is second and isinstance(first, InFlight)
        assert refresher.inflight == {parsed().key: first}
        assert limits.inflight == {"192.0.2.10": 1}  # until the fetch ends
        assert first.started <= asyncio.get_running_loop().time()
        return await first

    entry = run(scenario(), clock)
    assert entry.rcode == wire.NOERROR and pool.calls == [("www.test", "A")]
    assert stats.coalesced == 1 and not refresher.inflight and limits.inflight == {}


def test_lead_fetches_in_the_clients_task_and_joiners_get_its_failure():
    refresher, pool, clock, stats, limits = make()
    pool.delay(0.02).servfail()

    async def scenario():
        loop = asyncio.get_running_loop()
        assert limits.acquire_inflight("192.0.2.10")
        leader = loop.create_task(refresher.lead(parsed(), "192.0.2.10"))
        await asyncio.sleep(0)
        record = refresher.inflight[parsed().key]
        assert record.leader is leader  # what shutdown cancels
        joined = refresher.fetch(parsed())
        assert joined is record
        results = await asyncio.gather(leader, joined, return_exceptions=True)
        return results

    results = run(scenario(), clock)
    assert all(isinstance(r, UpstreamError) for r in results)
    assert not refresher.inflight and limits.inflight == {}


def test_failure_holds_a_servable_entry_under_the_epoch_it_was_sent_in():
    """RFC 8767 §4: a failed refresh of a stale-servable entry starts the recheck timer."""
    refresher, pool, clock, stats, limits = make()
    entry = run(refresher.refresh(parsed().key, WWW, False, False), clock)
    clock.advance(400)  # expired, within the stale window
    pool.servfail()
    pool.epoch = 3
    with pytest.raises(UpstreamError):
        run(refresher.refresh(parsed().key, WWW, False, False), clock)
    assert entry.recheck_until == clock.monotonic() + 30.0 and entry.recheck_epoch == 3
    assert refresher.cache.get(parsed().key) is entry


@pytest.mark.parametrize("servfail_ttl, cached", [(5, True), (0, False)])
def test_failure_with_nothing_cached_is_remembered_briefly(servfail_ttl, cached):
    """RFC 9520 §3.2: a failure is cached for servfail_ttl (never served stale)."""
    refresher, pool, clock, stats, limits = make(servfail_ttl=servfail_ttl)
    pool.servfail()
    with pytest.raises(UpstreamError):
        run(refresher.refresh(parsed().key, WWW, False, False), clock)
    got = refresher.cache.get(parsed().key)
    assert (got is not None) == cached
    if cached:
        assert got.kind == wire.FAILURE and got.rcode == wire.SERVFAIL
        assert stale_policy.after_failure(got, clock.monotonic(), servfail_ttl) == stale_policy.NOTHING


def test_prefetch_is_one_task_per_key_and_none_while_upstreams_are_down():
    refresher, pool, clock, stats, limits = make()

    async def scenario():
        pool.all_down = True
        refresher.prefetch(parsed().key)
        assert not refresher.inflight and stats.prefetches == 0
        pool.all_down = False
        refresher.prefetch(parsed().key)
        refresher.prefetch(parsed().key)
        assert len(refresher.inflight) == 1 and stats.prefetches == 1
        await asyncio.gather(*refresher.inflight.values())

    run(scenario(), clock)
    assert pool.calls == [("www.test", "A")] and refresher.cache.get(parsed().key) is not None


def test_cancel_all_stops_fetch_tasks_and_leading_clients():
    refresher, pool, clock, stats, limits = make()
    pool.delay(5.0)

    async def scenario():
        loop = asyncio.get_running_loop()
        leader = loop.create_task(refresher.lead(parsed("www.test"), None))
        pool.answer("other.test", "A", "192.0.2.9")
        task_record = refresher.fetch(parsed("other.test"))
        await asyncio.sleep(0.01)
        await asyncio.wait_for(refresher.cancel_all(), 0.5)
        return leader.cancelled(), task_record.done.cancelled()

    assert run(scenario(), clock) == (True, True)
    assert not refresher.inflight
