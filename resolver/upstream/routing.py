"""Conditional forwarding: which upstream group a question goes to.

Each ``forward`` zone names its own upstreams; the longest zone that contains the
question's name wins, and the top-level ``upstreams`` serve every other name (as
dnsmasq's ``server=/zone/ip``, Unbound's ``forward-zone`` and CoreDNS's server
blocks do).  A group is an ordinary `UpstreamPool`, so health, back-off and
failover work per group unchanged; zones that list the same upstreams share one
pool, and config/validate.py refuses any other overlap, so an upstream's metric label
names exactly one group.  Reverse zones (``10.in-addr.arpa``) are zones like any
other.

Routing runs on the miss path only (``Refresher.refresh`` → ``exchange``): the
cache key is the question, so a cached answer is served without asking which
group fetched it.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from ..config import Config, UpstreamAddress
from ..wire import zone_of
from .pool import UpstreamPool


class Router:
    """Zone → `UpstreamPool`, with the default pool for names in no zone.

    Duck-types the pool's ``exchange`` so the pipeline needs no change; code that
    needs the group itself (e.g. health checks per name) calls ``pool_for``.
    """

    def __init__(self, default: UpstreamPool, zones: dict[bytes, UpstreamPool] | None = None):
        self.default = default
        self.zones = dict(zones or {})  # wire-form zone, lower-case → pool
        # Every group once, the default first (metrics iterate this).
        self.pools: list[UpstreamPool] = [default]
        for pool in self.zones.values():
            if all(pool is not p for p in self.pools):
                self.pools.append(pool)
        # A plain attribute, bumped when any group's upstream recovers: the hit path
        # compares it with an entry's recheck epoch, and must not pay for a merge.
        self.epoch = sum(getattr(pool, "epoch", 0) for pool in self.pools)
        for pool in self.pools:
            pool.on_up = self._recovered

    def _recovered(self) -> None:
        self.epoch += 1

    def pool_for(self, qname: bytes) -> UpstreamPool:
        """The group for a lower-case wire name: longest matching zone, else the default.

        One dict lookup per label of the name (``wire.zone_of``).
        """
        zones = self.zones
        if zones:
            zone = zone_of(qname, zones)
            if zone is not None:
                return zones[zone]
        return self.default

    def __getattr__(self, name: str):
        """Read-only views over every group, so code that reads a pool's bookkeeping
        (metrics, logs: ``upstreams``, ``health``, ``requests``, ``errors``, ``inflight``,
        …) reads all groups through the Router unchanged.  Merging is exact because
        config/validate.py keeps each upstream label in one group.  Methods are not merged:
        what "all down" or "probe" means is per group, so call them on ``pools``.
        """
        pools = self.__dict__.get("pools")
        if not pools or name.startswith("_"):
            raise AttributeError(name)
        values = [getattr(p, name) for p in pools]
        first = values[0]
        if isinstance(first, Counter):
            return sum(values, Counter())
        if isinstance(first, dict):
            return {k: v for value in values for k, v in value.items()}
        if isinstance(first, list):
            return [item for value in values for item in value]
        if isinstance(first, (int, float)) and not isinstance(first, bool):
            return sum(values)
        raise AttributeError(f"Router does not merge {name!r} across groups; use Router.pools")

    def known_down(self, qname: bytes | None = None) -> bool:
        """Is every upstream of the group serving ``qname`` known down (all groups if None)?"""
        if qname is not None:
            return self.pool_for(qname).known_down()
        return all(pool.known_down() for pool in self.pools)

    def known_slow(self, threshold: float, qname: bytes) -> bool:
        """Is the group serving ``qname`` answering slower than ``threshold`` (UpstreamPool.known_slow)?"""
        return self.pool_for(qname).known_slow(threshold)

    def known_lossy(self, threshold: float, qname: bytes) -> bool:
        """Does the group serving ``qname`` lose ``threshold`` of its sends (UpstreamPool.known_lossy)?"""
        return self.pool_for(qname).known_lossy(threshold)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()

    def exchange(self, question: bytes, cd: bool, do: bool, deadline: float):
        """``UpstreamPool.exchange`` on the group that serves ``question`` (lower-case).

        Returns that coroutine rather than awaiting it: no frame of its own on the miss path."""
        return self.pool_for(question[:-4]).exchange(question, cd, do, deadline)


def build_router(config: Config, make_pool: Callable[[tuple[UpstreamAddress, ...]], UpstreamPool]) -> Router:
    """One pool per distinct upstream list: the top-level upstreams, then each forward group.

    ``make_pool`` (from app.py, the composition root) builds a pool for one list.
    """
    groups = {config.upstreams: make_pool(config.upstreams)}
    zones = {}
    for f in config.forward:
        if f.upstreams not in groups:
            groups[f.upstreams] = make_pool(f.upstreams)
        zones[f.zone] = groups[f.upstreams]
    return Router(groups[config.upstreams], zones)
