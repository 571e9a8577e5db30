"""The composition root: builds every part from a `Config` and a `Clock`.

Nothing else in the package wires objects together; tests build an `App` with a
fake clock or ephemeral ports and drive it through ``start()`` / ``stop()``.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import metadata

from . import metrics, wire
from .admin import AdminServer
from .cache import Cache
from .clock import Clock, SystemClock
from .config import Config
from .hosts import HostsFile
from .local import LocalAnswers, purge
from .outagelog import StaleEpisodes
from .pipeline import Pipeline
from .pool import UpstreamPool
from .routing import build_router
from .server import Listeners
from .stats import Stats
from .upstream import Upstream

log = logging.getLogger("resolver")

SWEEP_INTERVAL = 10.0


def version() -> str:
    try:
        return metadata.version("resolver")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_pool(config: Config, upstreams=None) -> UpstreamPool:
    """A pool for ``upstreams`` (default: the top-level ones); one per forward group."""
    upstreams = [Upstream(u, config.upstream.edns_buffer_size) for u in (upstreams or config.upstreams)]
    return UpstreamPool(upstreams, config.upstream)


class App:
    def __init__(self, config: Config, clock: Clock | None = None):
        self.config = config
        self.clock = clock or SystemClock()
        self.stats = Stats()
        self.stats.last_reload_ok = self.clock.wall()  # start-up is the first successful load
        self.cache = Cache(config.cache.max_entries, self.stats.tally)
        # Zone → upstream group (one pool each); reads as one pool for metrics and logs.
        self.pool = self.router = build_router(config, lambda upstreams: build_pool(config, upstreams))
        self.local = LocalAnswers(config)  # localhost, local_records, hosts file, block_zones
        self.hosts = HostsFile(config.hosts_file, self._hosts_changed) if config.hosts_file.enabled else None
        self.pipeline = Pipeline(config, self.cache, self.pool, self.clock, self.stats, self.local)
        self.listeners = Listeners(self.pipeline, config.server, self.stats)
        self.collector = metrics.ResolverCollector(self.stats, self.cache, lambda: self.pool,
                                                   self.clock.monotonic, version(), self.local, self.hosts)
        self.registry = metrics.build_registry(self.collector)
        self.admin = AdminServer(lambda: metrics.render(self.registry), lambda: self.ready, self.cache,
                                 self.clock.monotonic, config.metrics.allow_remote_admin)
        self.episodes = StaleEpisodes(self.stats, lambda: self.pool, self.clock.monotonic)
        self.ready = False
        self._sweeper: asyncio.Task | None = None
        self._hosts_watch: asyncio.Task | None = None

    async def start(self) -> None:
        """Bind everything; raises OSError if an address cannot be bound."""
        if self.config.metrics.enabled:
            await self.admin.start(self.config.metrics.listen.host, self.config.metrics.listen.port)
        if self.hosts is not None:
            self.hosts.check()
            self._hosts_watch = asyncio.get_running_loop().create_task(self.hosts.watch())
        purge(self.cache, self.local.owns)  # a name now local must not be answered from cache
        await self.listeners.start(self.config.listen)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        self.ready = True
        log.info("forwarding to %s", ", ".join(u.label for u in self.config.upstreams))
        for f in self.config.forward:
            log.info("forwarding %s to %s", wire.name_to_text(f.zone), ", ".join(u.label for u in f.upstreams))

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, finish in-flight queries within ``grace``, then cancel the rest."""
        self.ready = False
        grace = self.config.server.shutdown_grace if grace is None else grace
        self.listeners.close()
        await self.listeners.drain(grace)
        await self.pipeline.cancel_refreshes()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._hosts_watch is not None:
            self._hosts_watch.cancel()
        self.admin.close()

    @property
    def dns_port(self) -> int:
        return self.listeners.bound[0][1]

    def _hosts_changed(self, data: dict) -> None:
        added = self.local.set_hosts(data)
        if added:  # cached upstream answers for these would shadow them on the hit path
            purge(self.cache, added.__contains__)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self.cache.sweep(self.clock.monotonic())
                self.episodes.tick()  # "serving stale" start/end log lines
            except Exception:  # background task boundary
                log.exception("cache sweep failed")
