"""The composition root: builds every part from a `Config` and a `Clock`.

Nothing else in the package wires objects together; tests build an `App` with a
fake clock or ephemeral ports and drive it through ``start()`` / ``stop()``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from dataclasses import replace
from importlib import metadata

from . import eventloop, wire
from .cache.host import HostTier
from .cache.persist import Persister
from .cache.store import Cache
from .clock import Clock, SystemClock
from .config import ADMIN_SOCKET_AUTO, Address, Config, read_fleet_secret, read_token
from .errors import ConfigError
from .local.answers import LocalAnswers, purge
from .local.hosts import HostsFile
from .ops import metrics
from .ops.admin import AdminStats, Gate, HttpListener, default_socket_path
from .ops.adminapi import build_router as build_admin_router
from .ops.outagelog import StaleEpisodes
from .ops.reload import ReloadStats, check_reloadable
from .serve import handover
from .serve.acl import AccessControl
from .serve.limits import ClientLimits
from .serve.listeners import Listeners
from .serve.pipeline import Pipeline
from .serve.ratelimit import RateLimiter
from .stats import Stats
from .upstream import https as doh
from .upstream import tls as dot
from .upstream.plain import Upstream
from .upstream.pool import UpstreamPool
from .upstream.probe import Prober
from .upstream.routing import build_router

log = logging.getLogger("resolver")

SWEEP_INTERVAL = 10.0
FREEZE_MIN_ENTRIES = 50_000  # below this, full collections are cheap enough
GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)
UNSTEER_AFTER = 30.0  # seconds (plus twice the grace) after start: a predecessor's handover is over


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a server that allocates per query.

    Nearly everything a query allocates (coroutines, futures, tuples) is freed by
    reference counting soon after; the collector is only needed for cycles, mostly
    exceptions holding their tracebacks.  With CPython's default thresholds (700,
    10, 10) it still cost ~10% of a cache miss's CPU: a young collection every 700
    allocations finds the ~2,000 objects of in-flight queries alive, promotes them,
    and the older generations scan them again.  At 10,000 most are gone before a
    collection (A/B on bench misses: the same throughput as with the collector
    off).  Larger thresholds save no more (`bench/misspath.py`, 15,000 misses:
    275.1k instructions per miss at 10,000, 274.3k at 50,000) but lengthen each
    young collection's pause (~0.25 µs per surviving object: ~2.5 ms at 10,000,
    ~11 ms at 50,000, measured).  What exists once started (modules, configuration,
    a restored cache) is frozen, so full collections never walk it again.  Called
    once per process by the command line's ``main``, after start-up.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


def version() -> str:
    try:
        return metadata.version("resolver")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def build_pool(config: Config, clock: Clock, upstreams=None) -> UpstreamPool:
    """A pool for ``upstreams`` (default: the top-level ones); one per forward group."""
    upstreams = upstreams or config.upstreams
    size = config.upstream.edns_buffer_size
    ca_file = config.upstream.tls_ca_file
    tls = dot.client_context(ca_file) if any(u.transport == "tls" for u in upstreams) else None
    # DoH's context offers only HTTP/2 by ALPN, so it is not shared with DoT's.
    https = doh.client_context(ca_file) if any(u.transport == "https" for u in upstreams) else None
    upstreams = [dot.TlsUpstream(u, size, tls, clock) if u.transport == "tls"
                 else doh.HttpsUpstream(u, size, https, clock) if u.transport == "https"
                 else Upstream(u, size, config.security.upstream_0x20, clock)
                 for u in upstreams]
    return UpstreamPool(upstreams, config.upstream, clock)


def bound_addresses(config: Config) -> list[tuple[str, int, tuple[str, ...]]]:
    """Every (host, port, protocols) the process listens on: DNS listeners and the metrics port."""
    addresses = [(a.host, a.port, ("UDP", "TCP")) for a in config.listen]
    if config.metrics.enabled:
        addresses.append((config.metrics.listen.host, config.metrics.listen.port, ("TCP",)))
    return addresses


def refuse_if_bound(configs: list[Config]) -> None:
    """Raise handover.AddressInUse if an address of any of ``configs`` (one per worker) is taken."""
    handover.refuse_if_bound(dict.fromkeys(a for config in configs for a in bound_addresses(config)))


class App:
    def __init__(self, config: Config, clock: Clock | None = None, worker: int = 0, workers: int = 1,
                 join: bool = False):
        self.config = config
        # join: bind next to whoever holds our addresses (a deliberate handover, or a sibling
        # worker); otherwise refuse to start if they are taken (handover.refuse_if_bound).
        self.join = join
        self.worker = worker  # index among `workers` processes; only worker 0 writes the snapshot
        self.clock = clock or SystemClock()
        self.stats = Stats()
        self.cache = Cache(config.cache.max_entries, self.stats.tally)
        # Zone → upstream group (one pool each); reads as one pool for metrics and logs.
        self.router = build_router(config, lambda upstreams: build_pool(config, self.clock, upstreams))
        self.prober = Prober(config.upstream)  # notices recovery of down upstreams
        for pool in self.router.pools:
            self.prober.attach(pool)
        self.local = LocalAnswers(config)  # localhost, local_records, hosts file, block_zones
        self.hosts = HostsFile(config.hosts_file, self._hosts_changed) if config.hosts_file.enabled else None
        self.limits = ClientLimits(config.security, self.clock.monotonic)
        self.pipeline = Pipeline(config, self.cache, self.router, self.clock, self.stats, self.local, self.limits)
        self.acl = AccessControl(config.security)
        self.rrl = RateLimiter(config.security)
        self.listeners = Listeners(self.pipeline, config.server, self.stats, self.acl, self.limits, self.rrl)
        self.listeners.group_size = workers
        # The cache on disk: the host tier (L2, shared by every worker and the next
        # process, behind the in-process cache; opened in start(), after the fork) or,
        # with engine "snapshot", the periodic snapshot (only worker 0 writes it).
        self.host_tier = HostTier(config.cache.persist, self.clock) if self._host_tier_on(config) else None
        self.persist = Persister(self.cache, self.clock, self._snapshot_config(config), writer=worker == 0)
        # The fleet tier (L3, a Redis shared by every node; README "Fleet"): read on a miss in
        # both tiers above, raced against the upstream; written behind.  Started in start().
        self.fleet = self._build_fleet(config, self.clock)
        self.reloads = ReloadStats()
        self.reloads.last_success_wall = self.clock.wall()  # start-up is the first successful load
        self.collector = metrics.ResolverCollector(self.stats, self.cache, lambda: self.router,
                                                   self.clock.monotonic, version(), self.local, self.hosts)
        self.collector.lifecycle = self  # snapshot, reload and handover counters
        self.registry = metrics.build_registry(self.collector)
        # Two HTTP listeners, one route table (adminapi.py): the metrics listener serves
        # only the public routes (it may be on 0.0.0.0 for Prometheus and the kubelet);
        # the admin listener (Unix socket, optional TCP) serves all, behind admin.Gate.
        self.version = version()
        self.admin_stats = AdminStats()
        # /readyz names this process, so a handover can wait for the successor itself.
        pids = (os.getpid(), os.getppid()) if workers > 1 else (os.getpid(),)
        self.readiness = handover.readiness_route(lambda: self.ready, pids)
        self.http_routes = build_admin_router(self)
        self.admin = HttpListener(self.http_routes, Gate(privileged=False), "metrics",
                                  config.metrics.max_connections, config.metrics.timeout)
        token = read_token(config.admin.token_file) if config.admin.token_file else None
        self.control = HttpListener(self.http_routes, Gate(privileged=True, token=token), "admin",
                                    config.admin.max_connections, config.admin.timeout)
        self.control_up = False  # the admin listener is bound (resolver_admin_listener_up)
        self.reload_source = None  # set by the command line: re-read the config file (POST /reload)
        self.started_at = self.clock.monotonic()
        self.episodes = StaleEpisodes(self.stats, lambda: self.router, self.clock.monotonic)
        self.ready = False
        self._sweeper: asyncio.Task | None = None
        self._hosts_watch: asyncio.Task | None = None
        self._frozen_at = 0  # cache size at the last gc.freeze()

    async def start(self) -> None:
        """Bind everything; raises OSError if an address cannot be bound.

        The cache snapshot is loaded first: the first query after a restart (in
        an upstream outage, say) must find it.
        """
        eventloop.forget()  # this App's loop, not one cached by an earlier run in this thread
        if not self.join:
            handover.refuse_if_bound(bound_addresses(self.config))
        if self.host_tier is not None and self.host_tier.open():
            # Opened, not loaded: L1 misses read through to it (Cache.lookup) and new
            # entries are written behind (Cache.put → the writer thread).
            self.cache.lower = self.host_tier
            self.host_tier.start()
        self.persist.load()
        if self.fleet is not None:
            # No connection and no scan here: Redis may be down, and DNS must start anyway.
            self.fleet.start()
            self.cache.fleet = self.pipeline.caching.fleet = self.fleet
        if self.config.metrics.enabled:
            listen = self.config.metrics.listen
            await self.admin.start_tcp(listen.host, listen.port)
            log.info("metrics and health on http://%s/metrics", listen)
        await self._start_control()
        if self.hosts is not None:
            self.hosts.check()
            self._hosts_watch = asyncio.get_running_loop().create_task(self.hosts.watch())
        purge(self.cache, self.local.owns)  # a name now local must not be answered from cache
        await self.listeners.start(self.config.listen)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        self.persist.start()
        # A predecessor told to stop after we bound steers its traffic to us; once it
        # has surely finished, remove its steering program (handover.unsteer).
        loop = asyncio.get_running_loop()
        loop.call_later(2 * self.config.server.shutdown_grace + UNSTEER_AFTER, self.listeners.unsteer)
        self.ready = True
        log.info("forwarding to %s", ", ".join(u.label for u in self.config.upstreams))
        for f in self.config.forward:
            log.info("forwarding %s to %s", wire.name_to_text(f.zone), ", ".join(u.label for u in f.upstreams))

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, finish in-flight queries within ``grace``, then cancel the rest."""
        self.ready = False
        eventloop.forget()
        grace = self.config.server.shutdown_grace if grace is None else grace
        self.listeners.close()
        await self.listeners.drain(grace)
        await self.pipeline.cancel_refreshes()
        await self.prober.close()
        self.router.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._hosts_watch is not None:
            self._hosts_watch.cancel()
        await self.persist.stop()  # the final snapshot, after the last answers are cached
        if self.host_tier is not None:
            self.cache.lower = None
            await asyncio.to_thread(self.host_tier.stop)  # writes what is still queued
        if self.fleet is not None:
            self.cache.fleet = self.pipeline.caching.fleet = None
            await self.fleet.stop()  # sends what is still queued, within fleet.write_timeout
        self.admin.close()
        self.control.close()

    @staticmethod
    def _build_fleet(config: Config, clock: Clock):
        """The fleet tier, or None when it names no store (``fleet.url`` or ``fleet.sentinels``).
        redis is imported only then: a process without the tier does not pay for loading it (~80 ms at start)."""
        if not config.fleet.enabled:
            return None
        from .cache.fleet import FleetTier

        return FleetTier(config.fleet, read_fleet_secret(config.fleet.secret_file), clock)

    @property
    def admin_socket(self) -> str:
        """The admin Unix socket's path ("" = none)."""
        socket_path = self.config.admin.socket
        return default_socket_path() if socket_path == ADMIN_SOCKET_AUTO else socket_path

    async def _start_control(self) -> None:
        """The admin listener: a Unix socket (0600) and/or a TCP address (admin section).

        A failure to bind it is logged, not fatal: answering DNS matters more than the
        operator's control channel (an unwritable state volume must not take DNS down);
        ``resolver_admin_listener_up`` shows it, and ``resolver ctl`` says it cannot connect.
        """
        admin = self.config.admin
        if not admin.enabled:
            return
        try:
            if self.admin_socket:
                await self.control.start_unix(self.admin_socket)
                log.info("admin API on unix:%s (resolver ctl)", self.admin_socket)
            if admin.listen:
                host, _, port = admin.listen.rpartition(":")  # validated by config (port 0 only in tests)
                address = Address(host.strip("[]"), int(port))
                await self.control.start_tcp(address.host, address.port)
                log.info("admin API on http://%s%s", address, " (bearer token required)" if admin.token_file else "")
            self.control_up = True
        except OSError as e:
            log.error("admin API not available (DNS is served without it): %s", e,
                      extra={"event": "admin_listener_failed"})

    def reload(self, config: Config) -> None:
        """Apply a new configuration to the running parts; the cache is kept.

        Raises ConfigError, changing nothing, if a key only a restart can apply
        differs.  In-flight queries finish on the pool they started with.
        """
        check_reloadable(self.config, config)
        if (self._host_tier_on(config) or self._host_tier_on(self.config)) and \
                config.cache.persist != self.config.cache.persist:
            # The file is open and shared with the other workers: reopening it under a
            # new path or map size while they keep theirs would split the tier.
            raise ConfigError("cache.persist", "the host cache tier cannot change on reload (restart to apply it)")
        if bool(config.security.rate_limit) != bool(self.config.security.rate_limit):
            # The UDP protocol class (with or without the limiter) is chosen at bind time.
            raise ConfigError("security.rate_limit", "turning rate limiting on or off needs a restart")
        self.config = config
        old = self.router
        self.router = build_router(config, lambda upstreams: build_pool(config, self.clock, upstreams))
        for pool in self.router.pools:
            self.prober.attach(pool)
        self.pipeline.pool = self.router
        # In-flight queries finish on the old pools; their kept-open (DoT) connections
        # close once idle work is done.
        try:
            asyncio.get_running_loop().call_later(self.config.upstream.total_timeout + 1, old.close)
        except RuntimeError:  # called outside the loop (tests): nothing is in flight there
            old.close()
        # Local data: new records and block zones, the hosts file's current data kept.
        local = LocalAnswers(config)
        local.set_hosts(self.local.hosts)
        local.answers = self.local.answers  # counters never go backwards
        self.local = self.pipeline.local = self.collector.local = local
        purge(self.cache, local.owns)  # names that became local must not be answered from cache
        self.pipeline.configure(config)
        self.cache.resize(config.cache.max_entries)
        self.listeners.reconfigure(config.server)  # after pipeline.configure: re-points the UDP hit path
        for part in (self.acl, self.limits, self.rrl):
            part.configure(config.security)
        self.persist.reconfigure(self._snapshot_config(config))
        log.info("forwarding to %s", ", ".join(u.label for u in config.upstreams))

    @staticmethod
    def _host_tier_on(config: Config) -> bool:
        return bool(config.cache.persist.path) and config.cache.persist.engine == "host"

    @staticmethod
    def _snapshot_config(config: Config):
        """The snapshot settings: off (no path) unless ``cache.persist.engine`` is "snapshot"."""
        persist = config.cache.persist
        return persist if persist.engine == "snapshot" else replace(persist, path="")

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
                self.freeze_long_lived()
            except Exception:  # background task boundary
                log.exception("cache sweep failed")

    def freeze_long_lived(self) -> bool:
        """Move the grown cache out of the garbage collector's full passes.

        Each full collection walks every tracked object, so with a large cache it
        costs ~0.5 µs per entry (a 0.6 s stall at 1M entries, measured by the bench
        while filling).  Cache entries hold no reference cycles, so once frozen they
        are still freed by reference counting when evicted; one collection first keeps
        cyclic garbage out of the frozen set.  Done only when the cache has grown by a
        quarter since the last freeze, so it runs O(log n) times while filling.
        """
        size = len(self.cache)
        if size < FREEZE_MIN_ENTRIES or size < self._frozen_at * 1.25:
            return False
        gc.collect()
        gc.freeze()
        self._frozen_at = size
        return True
