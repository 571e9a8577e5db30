"""The pipeline with a Router: misses are routed per zone; hits never consult routing."""

from __future__ import annotations

import asyncio

import dns.message

from resolver import wire
from resolver.cache.store import Cache
from resolver.clock import FakeClock
from resolver.config import Config
from resolver.serve.pipeline import Pipeline
from resolver.stats import Stats
from resolver.upstream.routing import Router
from tests.support.fake_time import run
from tests.support.fake_pool import FakePool


class CountingRouter(Router):
    def __init__(self, *args):
        super().__init__(*args)
        self.lookups = 0

    def pool_for(self, qname):
        self.lookups += 1
        return super().pool_for(qname)


def test_misses_are_routed_and_hits_never_consult_routing():
    default = FakePool().answer("www.test", "A", "192.0.2.1")
    corp = FakePool().answer("db.corp.test", "A", "198.51.100.5")
    router = CountingRouter(default, {wire.name_to_wire("corp.test"): corp})
    pipe = Pipeline(Config(), Cache(100), router, FakeClock(), Stats())
    queries = {name: dns.message.make_query(name, "A", use_edns=edns).to_wire()
               for name, edns in (("www.test", False), ("db.corp.test", 0))}
    for data in queries.values():
        assert pipe.answer_fast(data, False) is None
        run(pipe.resolve(data, False), pipe.clock)
    assert default.calls == [("www.test", "A")] and corp.calls == [("db.corp.test", "A")]
    assert router.lookups == 2
    for _ in range(3):
        for data in queries.values():
            assert pipe.answer_fast(data, False) is not None      # the hit path
            assert run(pipe.resolve(data, True), pipe.clock).reply is not None  # the general path's hit
    assert router.lookups == 2  # no hit asked which group serves the name
    assert len(default.calls) == len(corp.calls) == 1
