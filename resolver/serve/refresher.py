"""The refresher: one upstream fetch per key, and what its outcome does to the cache.

It owns the in-flight map (coalescing: clients asking the same question join the
one fetch), prefetch of popular entries near expiry, the store (per-name stale
rules and operator pins resolved at insert), the last-known-good check (an empty
answer must not silently replace records we just had), and the failure hold
(``policy.stale.after_failure``: the RFC 8767 §4 recheck timer, or a briefly
remembered SERVFAIL, RFC 9520 §3.2).  The caching stage decides *whether* to
fetch; this module only fetches.

Each fetch in flight is an ``InFlight`` record: what to await, when it started
(the client-timeout race runs from there) and which task to cancel at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import math

from .. import wire
from ..cache.store import Cache, Entry
from ..clock import Clock
from ..config import Config
from ..errors import UpstreamError
from ..eventloop import running_loop
from ..policy import last_known_good as lkg
from ..policy import stale as stale_policy
from ..policy.stale_rules import StaleRules
from ..stats import Stats
from ..upstream.pool import UpstreamPool
from .limits import ClientLimits

log = logging.getLogger("resolver.pipeline")


class InFlight:
    """One upstream fetch in flight for a key.

    ``done`` resolves to the fetched ``Entry`` or raises ``UpstreamError``;
    ``started`` is the loop time it began; ``leader`` is the task doing the work
    (a fetch task, or the client's own task for a plain miss), which shutdown
    cancels.  Awaitable, so ``asyncio.gather(*inflight.values())`` waits for all.
    """

    __slots__ = ("done", "started", "leader")

    def __init__(self, done: asyncio.Future, started: float, leader: asyncio.Task | None):
        self.done = done
        self.started = started
        self.leader = leader

    def __await__(self):
        return self.done.__await__()


class Refresher:
    def __init__(self, config: Config, cache: Cache, pool: UpstreamPool, clock: Clock, stats: Stats,
                 limits: ClientLimits):
        self.cache = cache
        self.pool = pool  # an UpstreamPool, or a routing.Router (one pool per forward zone)
        self.clock = clock
        self.stats = stats
        self.limits = limits
        self.inflight: dict[bytes, InFlight] = {}
        self.lkg_pins: set[bytes] = set()  # upstream questions pinned by an operator (lkg_admin)
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.config = config
        self.stale = config.stale
        self.stale_window = stale_policy.stale_window(config.stale)
        self.prefetch_share = config.cache.prefetch
        self.lkg = lkg.LastKnownGood(config.stale.last_known_good)
        self.rules = StaleRules(config.stale)

    # ------------------------------------------------------------------ starting
    def fetch(self, q: wire.Query, charged: str | None = None) -> InFlight:
        """The one upstream fetch for this key: joined if already running (coalescing).

        Joining is free.  ``charged``: the client the caching stage charged for
        starting it (security.max_inflight_per_client), released when the fetch
        ends (even if the client was answered stale before that).
        """
        running = self.inflight.get(q.key)
        if running is not None:
            if charged is not None:  # (the caching stage charges only when nothing runs)
                self.limits.release_inflight(charged)
            self.stats.coalesced += 1
            return running
        try:
            record = self._start(q.key, wire.key_question(q.key), bool(q.cd), q.do)
        except BaseException:
            if charged is not None:
                self.limits.release_inflight(charged)
            raise
        if charged is not None:
            record.done.add_done_callback(lambda _t, release=self.limits.release_inflight: release(charged))
        return record

    def _start(self, key: bytes, upstream_question: bytes, cd: bool, do: bool) -> InFlight:
        loop = running_loop()
        task = loop.create_task(self.refresh(key, upstream_question, cd, do))
        record = self.inflight[key] = InFlight(task, self.clock.monotonic(), task)
        task.add_done_callback(lambda t, key=key: self._done(key, record))
        return record

    def _done(self, key: bytes, record: InFlight) -> None:
        if self.inflight.get(key) is record:
            del self.inflight[key]
        if not record.done.cancelled():
            record.done.exception()  # retrieved: waiters handle it; nobody else must log it

    async def lead(self, q: wire.Query, charged: str | None) -> Entry:
        """Fetch in the calling (client's) task: the cheapest miss, measured.

        No fetch task, no shield: nothing to fall back on, so the client waits for
        the fetch anyway.  Clients asking the same question meanwhile join through
        the record's future, which gets the outcome as is — an upstream error if
        this task is cancelled (shutdown).  ``charged``: the client the caching stage
        charged for it, released when it ends.
        """
        key = q.key
        loop = running_loop()
        joined = loop.create_future()
        record = InFlight(joined, self.clock.monotonic(), asyncio.current_task(loop))
        inflight = self.inflight
        inflight[key] = record
        try:
            fresh = await self.refresh(key, wire.key_question(key), bool(q.cd), q.do)
        except BaseException as e:
            if not joined.done():  # (cancel_all may have cancelled it at shutdown)
                joined.set_exception(e if isinstance(e, UpstreamError) else UpstreamError("fetch cancelled"))
                joined.exception()  # retrieved: each joiner handles it; nobody else must log it
            raise
        else:
            if not joined.done():
                joined.set_result(fresh)
            return fresh
        finally:
            if inflight.get(key) is record:
                del inflight[key]
            if charged is not None:
                self.limits.release_inflight(charged)

    def prefetch(self, key: bytes) -> None:
        """Refresh a popular entry before it expires (the last ``cache.prefetch`` of its TTL).

        Called synchronously from the hit path, so it only schedules: one task per
        key at most (the in-flight map), none while every upstream is known down
        (the prober watches those; a prefetch could only fail and add load).
        """
        if key in self.inflight:
            return
        try:
            running_loop()
        except RuntimeError:  # no loop (a synchronous caller such as a benchmark): skip
            return
        if self.pool.known_down(wire.key_name(key)):
            return
        flags = wire.key_flags(key)
        self.stats.prefetches += 1
        self._start(key, wire.key_question(key), bool(flags & wire.KEY_CD), bool(flags & wire.KEY_DO))

    def hold(self, entry: Entry, now: float, epoch: int | None = None) -> None:
        """Start the RFC 8767 §4 failure recheck timer on ``entry`` under ``epoch`` (the
        current one by default).  A fetch sent into an outage that fails after an
        upstream came back holds under the epoch it was sent in, which no longer
        holds: the next query fetches again instead of serving stale for ``recheck``."""
        entry.recheck_until = now + self.stale.recheck
        entry.recheck_epoch = self.pool.epoch if epoch is None else epoch

    # ------------------------------------------------------------------ fetching
    async def refresh(self, key: bytes, question: bytes, cd: bool, do: bool) -> Entry:
        """Ask upstream and store the answer.  Returns the (possibly uncached) entry."""
        deadline = self.clock.monotonic() + self.config.upstream.total_timeout
        epoch = self.pool.epoch  # a failure is held (recheck) under the epoch it was sent in
        try:
            reply, _upstream = await self.pool.exchange(question, cd, do, deadline)
            cache_cfg = self.config.cache
            prepared = wire.parse_reply(reply, question, min_ttl=cache_cfg.min_ttl, max_ttl=cache_cfg.max_ttl,
                                        max_negative_ttl=cache_cfg.max_negative_ttl)
            self._check_vanished(key, question, prepared)
        except UpstreamError:
            self._failed(key, epoch)
            raise
        except Exception as e:  # a bug must not leave waiters hanging: log, fail as upstream error
            log.exception("internal error while resolving %r", question)
            self._failed(key, epoch)
            raise UpstreamError(f"internal error: {e}") from e
        now = self.clock.monotonic()
        if prepared.ttl > 0 and not prepared.tc:
            rule = self.rules.find(question) if self.rules else None  # resolved at insert, never per hit
            entry = self.cache.put(key, prepared, now, self.rules.window(rule, self.stale_window))
            if rule is not None and rule.answer_ttl:
                entry.stale_answer_body(rule.answer_ttl)  # pre-built: every stale answer uses it
            if self.prefetch_share:
                entry.prefetch_after = now + prepared.ttl * (1.0 - self.prefetch_share)
            if self.lkg_pins and question in self.lkg_pins and prepared.kind == wire.POSITIVE:
                entry.stale_until = math.inf  # pinned: kept however long the incident lasts
            return entry
        return Entry(prepared, now, 0.0)  # answered, but not cacheable (TTL 0, no SOA, TC)

    def _check_vanished(self, key: bytes, question: bytes, prepared: wire.Prepared) -> None:
        """Count (and under last-known-good, refuse) an empty answer replacing positive records."""
        old = self.cache.get(key)
        if old is None:  # nothing cached: nothing can vanish (the common miss)
            return
        verdict = self.lkg.check(old, prepared, question, self.clock.monotonic(), question in self.lkg_pins)
        if verdict is lkg.NONE:
            return
        self.stats.answers_vanished += 1
        if verdict == lkg.VANISHED:
            return
        self.stats.lkg_answers[verdict] += 1
        name = wire.name_to_text(question[:-4])
        if verdict == lkg.SHADOW:
            log.warning("last-known-good (shadow): %s now answers %s; enforce would keep its records",
                        name, prepared.kind)
            return
        log.warning("last-known-good: %s now answers %s; serving its last records", name, prepared.kind)
        held = lkg.LastKnownGoodHeld(old, prepared.kind)
        old.lkg_text = held.ede_text  # held answers carry the text too (via the slow path)
        raise held  # → _failed holds the entry (recheck)

    def _failed(self, key: bytes, epoch: int | None = None) -> None:
        now = self.clock.monotonic()
        entry = self.cache.get(key)
        outcome = stale_policy.after_failure(entry, now, self.config.cache.servfail_ttl)
        if outcome == stale_policy.HOLD:
            self.hold(entry, now, epoch)
        elif outcome == stale_policy.CACHE_SERVFAIL:
            self.cache.put(key, wire.failure_prepared(wire.SERVFAIL, self.config.cache.servfail_ttl), now, 0.0)

    # ------------------------------------------------------------------ pins, shutdown
    def pin(self, question: bytes) -> bool:
        """Pin the last-known-good answer of ``question`` (admin); True if positive records are cached."""
        return lkg.pin(self.lkg_pins, self.cache, question)

    def unpin(self, question: bytes) -> bool:
        window = self.rules.window(self.rules.find(question), self.stale_window) if self.rules else self.stale_window
        return lkg.unpin(self.lkg_pins, self.cache, question, window)

    async def cancel_all(self) -> None:
        """Stop every upstream fetch: fetch tasks, and client tasks leading a fetch of their own."""
        tasks = [record.leader or record.done for record in self.inflight.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
