"""The caching stage carries out ``policy.stale.plan`` and returns each outcome as an
``Answer`` with its provenance (source, rcode, stale reason); ``Pipeline.resolve``
counts, times and logs from that value once per client query."""

from __future__ import annotations

import asyncio
import dataclasses

import dns.edns
import dns.message

from resolver import wire
from resolver.cache.store import Cache
from resolver.clock import FakeClock
from resolver.config import Config, SecurityConfig, StaleConfig, UpstreamOptions
from resolver.serve.answer import Answer, Source
from resolver.serve.caching import CachingStage
from resolver.serve.limits import ClientLimits
from resolver.serve.pipeline import Pipeline
from resolver.serve.refresher import Refresher
from resolver.stats import Stats
from tests.support.fake_time import run
from tests.support.fake_pool import FakePool
from tests.support.pipeline import make_local_pipeline


def make(client_timeout: float = 0.05, per_client: int = 4):
    config = Config(
        stale=dataclasses.replace(StaleConfig(), client_timeout=client_timeout),
        upstream=dataclasses.replace(UpstreamOptions(), attempt_timeout=0.3, total_timeout=0.3),
    )
    clock, stats, cache = FakeClock(), Stats(), Cache(100)
    pool = FakePool(clock).answer("www.test", "A", "192.0.2.1", ttl=60)
    limits = ClientLimits(SecurityConfig(max_inflight_per_client=per_client, client_limits_exempt=()))
    refresher = Refresher(config, cache, pool, clock, stats, limits)
    return CachingStage(config, cache, pool, clock, stats, limits, refresher), pool, clock, refresher


def ask(stage: CachingStage, name: str = "www.test", client: str | None = None) -> Answer:
    data = dns.message.make_query(name, "A", use_edns=0).to_wire()
    q = wire.parse_query(data)

    async def scenario():
        answer = await stage.answer(q, data, q.udp_size, client)
        await asyncio.gather(*stage.refresher.inflight.values(), return_exceptions=True)
        return answer

    return run(scenario(), stage.clock)


def ede(answer: Answer) -> list[int]:
    return [o.code for o in dns.message.from_wire(answer.reply).options if o.otype == dns.edns.OptionType.EDE]


def provenance(answer: Answer) -> tuple:
    """(source, rcode, stale reason), after checking the value's EDE code is the one in the bytes."""
    assert ede(answer) == ([] if answer.ede is None else [answer.ede])
    return answer.source, answer.rcode, answer.stale_reason


def test_miss_hit_and_stale_outcomes_carry_their_provenance():
    stage, pool, clock, refresher = make()
    assert provenance(ask(stage)) == (Source.UPSTREAM, wire.NOERROR, None)
    assert provenance(ask(stage)) == (Source.CACHE, wire.NOERROR, None)
    clock.advance(120)
    pool.servfail()
    failed = ask(stage)  # the race: the fetch fails before client_timeout
    assert provenance(failed) == (Source.STALE, wire.NOERROR, "servfail") and ede(failed) == [3]
    held = ask(stage)    # now under the failure recheck timer
    assert provenance(held) == (Source.STALE, wire.NOERROR, "recheck") and pool.calls.count(("www.test", "A")) == 2


def test_upstreams_down_answers_stale_holds_and_fetches_once():
    stage, pool, clock, refresher = make()
    ask(stage)
    clock.advance(120)
    pool.all_down = True
    pool.servfail()
    answer = ask(stage)
    entry = stage.cache.get(wire.parse_query(dns.message.make_query("www.test", "A", use_edns=0).to_wire()).key)
    assert provenance(answer) == (Source.STALE, wire.NOERROR, "upstreams_down")
    assert entry.recheck_until > clock.monotonic() and len(pool.calls) == 2


def test_answer_first_answers_stale_and_refreshes_behind():
    stage, pool, clock, refresher = make(client_timeout=0.0)
    ask(stage)
    clock.advance(120)
    pool.replace("www.test", "A", "192.0.2.2", ttl=60)
    assert provenance(ask(stage)) == (Source.STALE, wire.NOERROR, "answer_first")
    fresh = ask(stage)
    assert fresh.source == Source.CACHE and "192.0.2.2" in dns.message.from_wire(fresh.reply).to_text()


def test_client_over_its_share_gets_not_ready_or_stale():
    stage, pool, clock, refresher = make(per_client=1)
    stage.limits.acquire_inflight("192.0.2.10")  # its one share is taken
    refused = ask(stage, client="192.0.2.10")
    assert provenance(refused) == (Source.LOCAL, wire.SERVFAIL, None) and ede(refused) == [14]
    assert stage.stats.limited["max_inflight_per_client", "servfail"] == 1 and not pool.calls
    ask(stage)  # someone else fills the cache
    clock.advance(120)
    assert provenance(ask(stage, client="192.0.2.10")) == (Source.STALE, wire.NOERROR, "client_limit")


def test_overloaded_answers_are_values_too():
    stage, pool, clock, refresher = make()
    data = dns.message.make_query("www.test", "A", use_edns=0).to_wire()
    q = wire.parse_query(data)
    busy = stage.answer_overloaded(q, data, q.udp_size, None)
    assert provenance(busy) == (Source.LOCAL, wire.SERVFAIL, None) and ede(busy) == [14]
    ask(stage)
    clock.advance(120)
    assert provenance(stage.answer_overloaded(q, data, q.udp_size, None)) == (Source.STALE, wire.NOERROR,
                                                                              "overload")


def test_resolve_returns_the_answer_and_counts_a_local_chase_once():
    """A local CNAME whose target is answered stale: one client reply, counted once
    (as local, the whole reply's source) with its stale reason; the target's own
    answer is part of it, not a second response."""
    pipe, pool, clock, cache = make_local_pipeline()
    data = dns.message.make_query("api.lan", "A", use_edns=0).to_wire()
    first = run(pipe.resolve(data, False), pipe.clock)
    assert provenance(first) == (Source.LOCAL, wire.NOERROR, None)
    clock.advance(60)
    pool.servfail()
    answer = run(pipe.resolve(data, False), pipe.clock)
    assert provenance(answer) == (Source.LOCAL, wire.NOERROR, "servfail")
    stats = pipe.stats
    assert sum(stats.responses_by_source.values()) == 2 and stats.responses_by_source[Source.LOCAL] == 2
    assert stats.stale_answers == {"servfail": 1}
    assert isinstance(pipe, Pipeline)


def test_a_dropped_datagram_is_an_answer_without_reply_and_is_not_counted():
    pipe, pool, clock, cache = make_local_pipeline()
    answer = run(pipe.resolve(b"\x00\x01", False), pipe.clock)
    assert answer.reply is None and answer.source is None
    assert sum(pipe.stats.responses_by_source.values()) == 0 and pipe.stats.dropped_malformed == 1


def test_provenance_travels_as_a_value_not_through_context_or_task_attributes():
    """No module keeps reply bookkeeping in a context variable, and none sets attributes on
    the asyncio tasks or futures it creates (the in-flight record carries start and leader)."""
    import ast
    from pathlib import Path

    import resolver

    offenders = []
    for path in Path(resolver.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "contextvars" in names:
                    offenders.append(f"{path.name}: imports contextvars")
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                            and target.value.id in ("task", "fetch", "joined", "future") \
                            and target.attr in ("started", "leader"):
                        offenders.append(f"{path.name}: {target.value.id}.{target.attr} =")
    assert offenders == []
