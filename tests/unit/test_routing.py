"""routing.py: longest zone match picks the upstream group; the rest go to the default."""

from __future__ import annotations

import asyncio

import pytest

from resolver.clock import SYSTEM_CLOCK
from resolver import wire
from resolver.app import App
from resolver.config import parse_config
from resolver.upstream.routing import Router


class Pool:
    def __init__(self, name):
        self.name = name
        self.asked = []

    async def exchange(self, question, cd, do, deadline):
        self.asked.append(question)
        return b"reply", self.name


def route(router, name):
    return router.pool_for(wire.name_to_wire(name).lower()).name


def test_longest_zone_wins_and_boundaries_are_labels():
    default, a, b, rev = Pool("default"), Pool("a"), Pool("b"), Pool("rev")
    router = Router(default, {wire.name_to_wire("cluster.local"): a,
                              wire.name_to_wire("svc.cluster.local"): b,
                              wire.name_to_wire("10.in-addr.arpa"): rev})
    assert route(router, "cluster.local") == "a"
    assert route(router, "x.pod.cluster.local") == "a"
    assert route(router, "svc.cluster.local") == "b"
    assert route(router, "web.ns.svc.cluster.local") == "b"
    assert route(router, "xcluster.local") == "default"  # not a label boundary
    assert route(router, "local") == "default"
    assert route(router, "www.example.com") == "default"
    assert route(router, ".") == "default"
    assert route(router, "5.0.0.10.in-addr.arpa") == "rev"
    assert route(router, "5.0.0.11.in-addr.arpa") == "default"


def test_exchange_goes_to_the_routed_pool():
    default, a = Pool("default"), Pool("a")
    router = Router(default, {wire.name_to_wire("corp.example"): a})
    question = wire.name_to_wire("db.corp.example") + b"\x00\x01\x00\x01"
    assert asyncio.run(router.exchange(question, False, False, 0.0)) == (b"reply", "a")
    assert a.asked == [question] and default.asked == []


def test_no_zones_is_the_default_pool():
    default = Pool("default")
    assert Router(default).pool_for(wire.name_to_wire("a.b")) is default
    assert Router(default).pools == [default]


def test_build_router_shares_a_group_between_zones_with_the_same_upstreams():
    config = parse_config({"upstreams": ["192.0.2.1"], "forward": [
        {"zone": "corp.example", "upstreams": ["192.0.2.10", "192.0.2.11"]},
        {"zone": "10.in-addr.arpa", "upstreams": ["192.0.2.10", "192.0.2.11"]},
        {"zone": "cluster.local", "upstreams": ["tcp://192.0.2.20:53"]},
        {"zone": "same.example", "upstreams": ["192.0.2.1"]},
    ]})
    router = App(config).router
    assert len(router.pools) == 3
    assert [u.label for u in router.default.upstreams] == ["udp://192.0.2.1:53"]
    corp = router.pool_for(wire.name_to_wire("x.corp.example"))
    assert corp is router.pool_for(wire.name_to_wire("1.0.0.10.in-addr.arpa"))
    assert [u.label for u in corp.upstreams] == ["udp://192.0.2.10:53", "udp://192.0.2.11:53"]
    assert router.pool_for(wire.name_to_wire("same.example")) is router.default
    labels = [u.label for p in router.pools for u in p.upstreams]
    assert len(labels) == len(set(labels))  # one label, one group: metrics stay unambiguous


def test_router_reads_as_one_pool_for_metrics_and_logs():
    """Pool bookkeeping read through the Router covers every group (labels are unique)."""
    config = parse_config({"upstreams": ["192.0.2.1"], "forward": [
        {"zone": "corp.example", "upstreams": ["192.0.2.10", "192.0.2.11"]}]})
    router = App(config).router
    default, corp = router.pools
    default.requests["udp://192.0.2.1:53"] += 2
    corp.requests["udp://192.0.2.10:53"] += 1
    corp.errors[("udp://192.0.2.10:53", "timeout")] += 1
    corp.inflight = 3
    assert [u.label for u in router.upstreams] == ["udp://192.0.2.1:53", "udp://192.0.2.10:53",
                                                   "udp://192.0.2.11:53"]
    assert set(router.health) == {u.label for u in router.upstreams}
    assert router.requests == {"udp://192.0.2.1:53": 2, "udp://192.0.2.10:53": 1}
    assert router.errors == {("udp://192.0.2.10:53", "timeout"): 1}
    assert router.inflight == 3
    with pytest.raises(AttributeError):
        router.options


def test_router_epoch_is_a_plain_attribute_bumped_by_any_group():
    """The hit path compares entry.recheck_epoch with pool.epoch on every stale hit: on a
    Router it must be a plain attribute (no merge per read), bumped when any group recovers."""
    from resolver.config import UpstreamOptions
    from resolver.upstream.pool import UpstreamPool
    from resolver.upstream.routing import Router

    a, b = UpstreamPool([], UpstreamOptions(), SYSTEM_CLOCK), UpstreamPool([], UpstreamOptions(), SYSTEM_CLOCK)
    router = Router(a, {b"\x04corp\x00": b})
    assert "epoch" in vars(router) and router.epoch == 0
    b.on_up()
    a.on_up()
    assert router.epoch == 2
