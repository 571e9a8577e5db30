"""The composition root: builds every part from a `Config` and a `Clock`.

Nothing else in the package wires objects together; tests build an `App` with a
fake clock or ephemeral ports and drive it through ``start()`` / ``stop()``.
"""

from __future__ import annotations

import asyncio
import logging
from importlib import metadata

from . import dot, metrics
from .admin import AdminServer
from .cache import Cache
from .clock import Clock, SystemClock
from .config import Config
from .health import Prober
from .lkg_admin import PinHandler
from .pipeline import Pipeline
from .pool import UpstreamPool
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


def build_pool(config: Config) -> UpstreamPool:
    size = config.upstream.edns_buffer_size
    tls = dot.client_context(config.upstream.tls_ca_file) if any(
        u.transport == "tls" for u in config.upstreams) else None
    upstreams = [dot.TlsUpstream(u, size, tls) if u.transport == "tls" else Upstream(u, size)
                 for u in config.upstreams]
    return UpstreamPool(upstreams, config.upstream)


class App:
    def __init__(self, config: Config, clock: Clock | None = None):
        self.config = config
        self.clock = clock or SystemClock()
        self.stats = Stats()
        self.cache = Cache(config.cache.max_entries)
        self.pool = build_pool(config)
        self.prober = Prober(config.upstream)  # notices recovery of down upstreams
        self.prober.attach(self.pool)
        self.pipeline = Pipeline(config, self.cache, self.pool, self.clock, self.stats)
        self.listeners = Listeners(self.pipeline, config.server, self.stats)
        self.collector = metrics.ResolverCollector(self.stats, self.cache, lambda: self.pool,
                                                   self.clock.monotonic, version())
        self.registry = metrics.build_registry(self.collector)
        self.admin = AdminServer(lambda: metrics.render(self.registry), lambda: self.ready)
        self.admin.handlers.append(PinHandler(lambda: self.pipeline))  # /lkg/pin, /lkg/unpin
        self.ready = False
        self._sweeper: asyncio.Task | None = None

    async def start(self) -> None:
        """Bind everything; raises OSError if an address cannot be bound."""
        if self.config.metrics.enabled:
            await self.admin.start(self.config.metrics.listen.host, self.config.metrics.listen.port)
        await self.listeners.start(self.config.listen)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        self.ready = True
        log.info("forwarding to %s", ", ".join(u.label for u in self.config.upstreams))

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, finish in-flight queries within ``grace``, then cancel the rest."""
        self.ready = False
        grace = self.config.server.shutdown_grace if grace is None else grace
        self.listeners.close()
        await self.listeners.drain(grace)
        await self.pipeline.cancel_refreshes()
        await self.prober.close()
        self.pool.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.admin.close()

    @property
    def dns_port(self) -> int:
        return self.listeners.bound[0][1]

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self.cache.sweep(self.clock.monotonic())
            except Exception:  # background task boundary
                log.exception("cache sweep failed")
