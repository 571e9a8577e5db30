"""The caching stage: carry out ``policy.stale.plan`` for a parsed query.

The cache reports what it holds, ``plan`` decides from plain values (the entry's
deadlines, now, the stale settings, the pool's recovery epoch, whether every
upstream is known down, whether the key's fetch is in flight, whether a cap is
reached), and this stage acts: render the cached or stale answer, start or join
the key's one fetch (``Refresher``), race it against ``client_timeout``
(RFC 8767 §5), hold the name under the failure recheck timer (§4).  Every
outcome is returned as an ``Answer`` carrying its provenance.
"""

from __future__ import annotations

import asyncio

from .. import wire
from ..cache.store import Cache, Entry
from ..clock import Clock, timeout_at
from ..config import Config
from ..errors import UpstreamError
from ..eventloop import running_loop
from ..policy import last_known_good as lkg
from ..policy import stale as stale_policy
from ..stats import Stats
from .answer import Answer, Source
from .limits import ClientLimits
from .refresher import Refresher

# RFC 8914 §4.15 "Not Ready": attached to the SERVFAIL sent when a cap (server.max_inflight,
# security.max_inflight_per_client) stops a query from starting upstream work and
# nothing is cached: the server could not take it on now; a retry later may succeed.
_EDE_NOT_READY = 14
_LIMIT_TEXT = {stale_policy.OVERLOAD: b"server busy (server.max_inflight)",
               stale_policy.CLIENT_LIMIT: b"too many queries in flight from this client"}

_FRESH = stale_policy.FRESH
_STALE = stale_policy.STALE
_NOT_READY = stale_policy.NOT_READY
_UPSTREAM = stale_policy.UPSTREAM
_CLIENT_LIMIT = stale_policy.CLIENT_LIMIT
_OVERLOAD = stale_policy.OVERLOAD
_CAP_REASONS = frozenset(stale_policy.CAP_REASON.values())
_QUIET_STALE = frozenset(("recheck", "upstreams_down"))  # stale answers that are no cache miss


async def first_done(a: asyncio.Future, b: asyncio.Future) -> None:
    """Return once ``a`` or ``b`` is done: ``asyncio.wait(FIRST_COMPLETED)`` without its sets
    and bookkeeping (measured: a third of the fleet read's cost on the miss path)."""
    if a.done() or b.done():
        return
    waiter = running_loop().create_future()

    def wake(_):
        if not waiter.done():
            waiter.set_result(None)

    a.add_done_callback(wake)
    b.add_done_callback(wake)
    try:
        await waiter
    finally:
        a.remove_done_callback(wake)
        b.remove_done_callback(wake)


class CachingStage:
    def __init__(self, config: Config, cache: Cache, pool, clock: Clock, stats: Stats, limits: ClientLimits,
                 refresher: Refresher):
        self.cache = cache
        self.pool = pool  # re-pointed on reload (Pipeline.pool)
        self.clock = clock
        self.stats = stats
        self.limits = limits
        self.refresher = refresher
        self.fleet = None  # the fleet tier (cache/fleet.py), set by the composition root; read on a miss
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.stale = config.stale
        self.edns_size = config.upstream.edns_buffer_size

    def upstream_state(self, qname: bytes) -> tuple[bool, bool, bool]:
        """(known down, known slow, known lossy) for the upstream group serving ``qname``:
        the facts about upstreams that ``policy/stale.plan`` reads for an expired entry."""
        if self.pool.known_down(qname):
            return True, False, False
        slow, lossy = self.stale.slow_upstream, self.stale.lossy_upstream
        if slow > 0 and self.pool.known_slow(slow, qname):
            return False, True, False
        return False, False, lossy > 0 and self.pool.known_lossy(lossy, qname)

    async def answer(self, q: wire.Query, data: bytes, limit: int, client: str | None) -> Answer:
        """Answer ``q`` from the cache, the stale data or the key's one upstream fetch."""
        now = self.clock.monotonic()
        _, entry = self.cache.lookup(q.key, now)
        fetching = q.key in self.refresher.inflight
        # ``upstreams_down``, ``_slow`` and ``_lossy`` only matter past the TTL: not asked
        # for a miss or a fresh entry.
        down = slow = lossy = False
        if entry is not None and now >= entry.fresh_until:
            down, slow, lossy = self.upstream_state(q.qname.lower())
        p = stale_policy.plan(entry, now, self.stale, self.pool.epoch, upstreams_down=down, upstreams_slow=slow,
                              upstreams_lossy=lossy,
                              fetching=fetching)
        charged = None
        if p.fetch and not fetching and client is not None:
            # Starting a fetch is charged to the client (security.max_inflight_per_client);
            # over its share, the plan's capped row decides instead.
            if self.limits.acquire_inflight(client):
                charged = client
            else:
                p = stale_policy.plan(entry, now, self.stale, self.pool.epoch, upstreams_down=down,
                                      upstreams_slow=slow, upstreams_lossy=lossy, fetching=fetching,
                                      cap=_CLIENT_LIMIT)
        if p.answer is _FRESH:
            self.stats.cache_hits += 1
            self.cache.touch(q.key)
            if now >= entry.prefetch_after:
                self.refresher.prefetch(q.key)
            return self.render(q, entry, self.aged(entry, now), limit, Source.CACHE)
        if p.answer is _STALE and p.reason in _QUIET_STALE:
            if p.hold:
                self.refresher.hold(entry, now)
            if p.fetch:
                self.refresher.fetch(q, charged)
            return self.render_stale(q, entry, limit, p.reason, entry.lkg_text or b"")
        self.stats.cache_misses += 1
        if p.answer is _NOT_READY or p.reason in _CAP_REASONS:
            return self.capped(data, q, entry, limit, p, client)
        if p.answer is _UPSTREAM and p.wait is None and not fetching:
            if self.fleet is not None and entry is None:
                read = self.fleet.request(q.key)
                if read is not None:  # (None: the fleet's breaker is open: a plain miss)
                    return await self.race_fleet(q, data, limit, charged, read)
            # Nothing to fall back on and nobody asking yet: this task fetches itself.
            # The one place a plain miss starts upstream work: charged to the client.
            try:
                fresh = await self.refresher.lead(q, charged)
            except lkg.LastKnownGoodHeld as e:
                return self.render_stale(q, e.entry, limit, e.reason, e.ede_text)
            except UpstreamError as e:
                return self.servfail(data, q, e)
            return self.render(q, fresh, fresh.body, limit, Source.UPSTREAM)
        fetch = self.refresher.fetch(q, charged)
        if p.answer is _STALE:  # answer-first: stale at once; the fetch refreshes the cache behind it
            return self.render_stale(q, entry, limit, p.reason)
        if p.wait is not None:
            return await self.race_client_timeout(q, entry, limit, fetch.done, fetch.started + p.wait)
        return await self.await_fetch(q, data, limit, fetch.done)

    async def race_client_timeout(self, q: wire.Query, entry: Entry, limit: int, done: asyncio.Future,
                                  until: float) -> Answer:
        """RFC 8767 §5: the fetch's answer if it comes by ``until`` (its start plus
        client_timeout: a client that joins a fetch which has already outlived it is
        answered at once), else the stale ``entry``; stale too if the fetch fails."""
        try:
            async with timeout_at(self.clock, until):
                fresh = await asyncio.shield(done)
        except TimeoutError:
            return self.render_stale(q, entry, limit, "timeout")
        except UpstreamError as e:
            return self.render_stale(q, entry, limit, e.reason, getattr(e, "ede_text", b""))
        return self.render(q, fresh, fresh.body, limit, Source.UPSTREAM)

    async def await_fetch(self, q: wire.Query, data: bytes, limit: int, done: asyncio.Future) -> Answer:
        """The fetch's answer, with nothing stale to fall back on: SERVFAIL if it fails,
        unless last-known-good held the old records."""
        try:
            fresh = await asyncio.shield(done)  # bounded by the fetch's own deadline
        except lkg.LastKnownGoodHeld as e:
            return self.render_stale(q, e.entry, limit, e.reason, e.ede_text)
        except UpstreamError as e:
            return self.servfail(data, q, e)
        return self.render(q, fresh, fresh.body, limit, Source.UPSTREAM)

    async def race_fleet(self, q: wire.Query, data: bytes, limit: int, charged: str | None,
                         read: asyncio.Future) -> Answer:
        """A miss in both local tiers with the fleet tier on: ask the fleet and the upstream at once.

        The upstream fetch starts first and runs on whatever the fleet says (it
        refreshes the fleet's copy too); the fleet read takes at most its budget.
        An entry from the fleet goes into the local cache with its deadlines on our
        clock, and from there the normal ``plan`` applies: fresh is answered at once
        (source "fleet"); stale waits for the fetch up to ``client_timeout`` like any
        stale entry, or is answered at once when every upstream is known down (EDE 3).
        An upstream that fails before the fleet has answered waits for the read.
        ``read``: the fleet read, already requested (``FleetTier.request``; it never raises).
        """
        fetch = self.refresher.fetch(q, charged)
        done = fetch.done
        await first_done(read, done)
        failed = done.done() and (done.cancelled() or done.exception() is not None)
        if failed and not read.done():
            await read  # bounded by the read budget
        found = read.result() if read.done() else None
        if failed and found is None:
            # The upstream failed and the fleet gave nothing (absent, or a read cut off by a
            # cold connection or a busy moment): one more read before SERVFAIL, the last
            # resort; bounded by the budget, and none while the breaker is open.
            found = await self.fleet.read(q.key)
        if found is not None and (not done.done() or failed):
            held = self.cache.get(q.key)  # an answer stored meanwhile wins; a SERVFAIL memory does not
            if held is None or held.kind == wire.FAILURE:
                entry = self.cache.adopt_lower(q.key, found)
                now = self.clock.monotonic()
                if now < entry.fresh_until:
                    return self.render(q, entry, self.aged(entry, now), limit, Source.FLEET)
                if failed:
                    if stale_policy.decide(entry, now, self.stale, self.pool.epoch) == stale_policy.RESOLVE_OR_STALE:
                        self.refresher.hold(entry, now)  # as after_failure does for an entry held here
                        error = None if done.cancelled() else done.exception()
                        return self.render_stale(q, entry, limit, getattr(error, "reason", "error"))
                else:
                    down, slow, lossy = self.upstream_state(q.qname.lower())
                    p = stale_policy.plan(entry, now, self.stale, self.pool.epoch, upstreams_down=down,
                                          upstreams_slow=slow, upstreams_lossy=lossy, fetching=True)
                    if p.answer is _STALE:
                        if p.hold:
                            self.refresher.hold(entry, now)
                        return self.render_stale(q, entry, limit, p.reason)
                    if p.wait is not None:
                        return await self.race_client_timeout(q, entry, limit, done, fetch.started + p.wait)
        return await self.await_fetch(q, data, limit, done)

    def answer_overloaded(self, q: wire.Query, data: bytes, limit: int, client: str | None) -> Answer:
        """Answer without any upstream work: ``server.max_inflight`` is reached.

        Fresh or stale from the cache (RFC 8767 allows serving stale when the
        resolver cannot get fresh data), else SERVFAIL with EDE "Not Ready".
        """
        now = self.clock.monotonic()
        _, entry = self.cache.lookup(q.key, now)
        p = stale_policy.plan(entry, now, self.stale, self.pool.epoch, cap=_OVERLOAD)
        if p.answer is _FRESH:
            answer = self.render(q, entry, self.aged(entry, now), limit, Source.CACHE)
            self.note_cap(_OVERLOAD, client, Source.CACHE)
            return answer
        if p.answer is _STALE and p.reason not in _CAP_REASONS:  # "recheck": what the hit path answers too
            answer = self.render_stale(q, entry, limit, p.reason, entry.lkg_text or b"")
            self.note_cap(_OVERLOAD, client, Source.STALE)
            return answer
        return self.capped(data, q, entry, limit, p, client)

    def capped(self, data: bytes, q: wire.Query, entry: Entry | None, limit: int, p: stale_policy.Plan,
               client: str | None) -> Answer:
        """The answer when a cap stops a query from starting upstream work.

        Stale (EDE 3 or 19) if ``plan`` found the entry servable, else SERVFAIL with
        EDE 14 "Not Ready".  SERVFAIL rather than REFUSED: a stub resolver takes
        REFUSED as "this server will not serve me" and may give up on it or on the
        name, and REFUSED is what the allow-list sends to strangers; SERVFAIL says
        "try again", and is not cached here.  Counted and logged (rate-limited).
        """
        if p.answer is _STALE:
            which = _OVERLOAD if p.reason == stale_policy.CAP_REASON[_OVERLOAD] else _CLIENT_LIMIT
            answer = self.render_stale(q, entry, limit, p.reason)
            label = Source.STALE
        else:
            which = p.reason
            answer = Answer(wire.error_reply(data, wire.SERVFAIL, q.qend, edns=q.edns, udp_size=self.edns_size,
                                             ede=wire.ede_option(_EDE_NOT_READY, _LIMIT_TEXT[which])),
                            Source.LOCAL, wire.SERVFAIL, ede=_EDE_NOT_READY)
            label = "servfail"
        self.note_cap(which, client, label)
        return answer

    def note_cap(self, which: str, client: str | None, label: str) -> None:
        self.stats.limited[which, label] += 1
        self.limits.cap_log.note(which, client, label)

    # ------------------------------------------------------------------ rendering
    def servfail(self, data: bytes, q: wire.Query, e: UpstreamError) -> Answer:
        self.stats.servfail_upstream += 1
        code = wire.EDE_NETWORK_ERROR if e.reason == "unreachable" else wire.EDE_NO_REACHABLE_AUTHORITY
        return Answer(wire.error_reply(data, wire.SERVFAIL, q.qend, edns=q.edns, udp_size=self.edns_size,
                                       ede=wire.ede_option(code)), Source.LOCAL, wire.SERVFAIL, ede=code)

    @staticmethod
    def aged(entry: Entry, now: float) -> bytes:
        return entry.aged if now <= entry.aged_until else entry.aged_body(now)

    def render(self, q: wire.Query, entry: Entry, body: bytes, limit: int, source: str) -> Answer:
        return Answer(wire.render(q, entry.hdr, entry.hdr_opt, body, limit, self.edns_size), source, entry.rcode)

    def render_stale(self, q: wire.Query, entry: Entry, limit: int, reason: str, text: bytes = b"") -> Answer:
        code = wire.EDE_STALE_NXDOMAIN if entry.rcode == wire.NXDOMAIN else wire.EDE_STALE_ANSWER
        body = entry.stale_answer_body(self.stale.answer_ttl)
        reply = wire.render(q, entry.hdr, entry.hdr_opt, body, limit, self.edns_size, wire.ede_option(code, text))
        return Answer(reply, Source.STALE, entry.rcode, reason, code)
