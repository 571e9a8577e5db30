"""From query bytes to an ``Answer``: the stages, wired in the order a query meets them.

1. **Fast path** (``fastpath.FastPath.answer_fast``): a plain query (one question,
   class IN, RD=1, at most an OPT record) whose answer is cached and fresh — or
   stale while the failure recheck timer runs — is answered synchronously from
   the datagram callback: no parse, no task, no coroutine.  This is most
   traffic, so it comes first and costs nothing else.
2. **Parse** (``resolve``): everything else is validated strictly; malformed
   queries get FORMERR/NOTIMP/BADVERS or are dropped, and questions a forwarder
   does not serve (non-IN classes, zone transfers) get REFUSED, before any cache
   or upstream work is spent on them — so no client can make an upstream look
   broken by asking it what it refuses.
3. **Local answers** (``local/answers.py``): localhost, local_records, the hosts
   file and block_zones, answered here and never cached, so they are never stale
   and no upstream answer can shadow them.  A local CNAME to an outside name
   chases its target through the caching stage as part of the same query.
4. **Caching stage** (``caching.CachingStage``): the cache reports
   fresh/stale/miss, ``policy.stale.plan`` decides every outcome, and the stage
   carries it out: one upstream fetch per key (coalescing), the RFC 8767
   client-timeout race, the failure recheck timer, the caps.
5. **Refresher** (``refresher.Refresher``): the upstream pool with one absolute
   deadline; the reply is validated, checked against last-known-good and stored.
   When a stale answer could be served instead (client_timeout), or for a
   prefetch, it runs as its own task, so a client answered stale does not stop
   the refresh that will repair the cache.  A plain miss — nothing to fall back
   on, so the client waits for the fetch anyway — runs it in the client's own
   task (one task per miss, measured: bench/misspath.py); clients asking the
   same meanwhile join it.

Every stage returns an ``Answer`` (reply bytes + provenance); ``resolve`` counts,
times and logs from it once per client query, and the listeners send ``.reply``.
"""

from __future__ import annotations

import time

from .. import wire
from ..cache.store import Cache
from ..clock import Clock
from ..config import Config
from ..errors import DropQuery, FormatError
from ..local.answers import LocalAnswers
from ..policy import stale as stale_policy
from ..stats import Stats, qtype_label
from ..upstream.pool import UpstreamPool
from .answer import DROP, Answer, Source
from .caching import CachingStage
from .fastpath import TCP_LIMIT, FastPath, no_fast_path
from .limits import ClientLimits
from .querylog import QueryLog
from .refresher import Refresher

__all__ = ["Answer", "Pipeline", "Source"]


class Pipeline:
    """Composes the stages; ``answer_fast`` is the fast path's bound method (re-pointed
    by ``configure``: the listeners look it up again on reload)."""

    def __init__(self, config: Config, cache: Cache, pool: UpstreamPool, clock: Clock, stats: Stats,
                 local: LocalAnswers | None = None, limits: ClientLimits | None = None):
        self.cache = cache
        # Per-client share of upstream work (security.max_inflight_per_client): charged
        # only by a query that starts a fetch (see caching.py and refresher.py).
        self.limits = limits or ClientLimits(config.security, clock.monotonic)
        self.local = local
        self.clock = clock
        self.stats = stats
        self.refresher = Refresher(config, cache, pool, clock, stats, self.limits)
        self.fast = FastPath(config, cache, pool, clock, self.refresher.prefetch)
        self.caching = CachingStage(config, cache, pool, clock, stats, self.limits, self.refresher)
        self._pool = pool
        self.query_log: QueryLog | None = None
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Apply (new) settings; called at start and on reload.  The cache is kept."""
        self.config = config
        self.stale = config.stale
        self.edns_size = config.upstream.edns_buffer_size
        self.refresher.configure(config)
        self.fast.configure(config)
        self.caching.configure(config)
        self._configure_query_log(config)

    def _configure_query_log(self, config: Config) -> None:
        """The optional query log sees every query only if the hit path is off:
        with ``logging.queries`` on, this instance's ``answer_fast`` answers nothing,
        so all queries take the (timed, logged) slow path.  Off, it costs nothing."""
        if config.logging.queries:
            self.query_log = QueryLog(config.logging.query_sample)
            self.answer_fast = no_fast_path
        else:
            self.query_log = None
            self.answer_fast = self.fast.answer_fast

    # The pool is re-pointed on reload (app.reload); every stage reads it.
    @property
    def pool(self):
        return self._pool

    @pool.setter
    def pool(self, pool) -> None:
        self._pool = self.refresher.pool = self.fast.pool = self.caching.pool = pool

    @property
    def inflight(self) -> dict:
        """The refresher's fetches in flight, by key (each awaitable)."""
        return self.refresher.inflight

    @property
    def lkg_pins(self) -> set[bytes]:
        return self.refresher.lkg_pins

    @property
    def stale_window(self) -> float:
        return self.refresher.stale_window

    def pin(self, question: bytes) -> bool:
        """Pin the last-known-good answer of ``question`` (admin); True if positive records are cached."""
        return self.refresher.pin(question)

    def unpin(self, question: bytes) -> bool:
        return self.refresher.unpin(question)

    async def cancel_refreshes(self) -> None:
        """Stop every upstream fetch (shutdown)."""
        await self.refresher.cancel_all()

    # ----------------------------------------------------------------- slow path
    async def resolve(self, data: bytes, tcp: bool, client: str | None = None) -> Answer:
        """Answer any query; an ``Answer`` whose ``reply`` is None means drop it.

        ``client`` is the asking address: a query that would start an upstream fetch
        is charged to it (security.max_inflight_per_client); None charges nobody.
        Counts the answer by provenance, times it for the request-duration
        histogram and feeds the sampled query log.  The timer is ``perf_counter``:
        the event loop's clock ticks in milliseconds, coarser than the histogram's
        smallest buckets.
        """
        started = time.perf_counter()
        answer = await self._answer(data, tcp, client)
        if answer.source is not None:
            self._count(answer)
            elapsed = time.perf_counter() - started
            self.stats.durations[answer.source].observe(elapsed)
            if self.query_log is not None:
                self.query_log.log(data, answer.source, answer.rcode, elapsed)
        return answer

    def _count(self, answer: Answer) -> None:
        """Count one client reply by provenance, rcode and stale reason."""
        stats = self.stats
        stats.responses_by_source[answer.source] += 1
        stats.responses_by_rcode[answer.rcode] += 1
        if answer.stale_reason is not None:
            stats.stale_answers[answer.stale_reason] += 1

    async def _answer(self, data: bytes, tcp: bool, client: str | None = None, chase: bool = False) -> Answer:
        stats = self.stats
        try:
            q = wire.parse_query(data)
        except DropQuery:
            stats.dropped_malformed += 1
            return DROP
        except FormatError as e:
            if e.rcode != wire.REFUSED:  # REFUSED: a question we do not serve (non-IN class, AXFR)
                stats.formerr += 1
            return Answer(wire.error_reply(data, e.rcode, e.question_end, edns=e.rcode == wire.BADVERS or e.edns,
                                           udp_size=self.edns_size), Source.LOCAL, e.rcode)
        if not chase:
            stats.queries_by_type[qtype_label(q.qtype)] += 1
        limit = TCP_LIMIT if tcp else q.udp_size
        # Local answers (localhost, local_records, hosts file, block_zones) come before
        # the cache: they never expire and must win over anything cached (see local/answers.py).
        if self.local is not None:
            reply = self.local.answer(q, limit, self.edns_size)
            if reply is not None:
                if type(reply) is not bytes:  # a local CNAME to an outside name: resolve the target
                    # Part of this one query: its answer is counted once, as the whole reply
                    # (a stale target makes the whole reply a stale answer).
                    sub = await self._answer(reply.subquery(q), True, client, chase=True)
                    reply = reply.merge(q, sub.reply, limit, self.edns_size)
                    # (the target's EDE travels with it only if the client speaks EDNS: see merge)
                    return Answer(reply, Source.LOCAL, reply[3] & wire.RCODE_MASK, sub.stale_reason, sub.ede if q.edns else None)
                return Answer(reply, Source.LOCAL, reply[3] & wire.RCODE_MASK)
        return await self.caching.answer(q, data, limit, client)

    def answer_limited(self, data: bytes, tcp: bool, client: str | None = None) -> Answer:
        """Answer without any upstream work: ``server.max_inflight`` is reached.

        Called synchronously by the listener instead of starting a task: a cached
        answer (fresh, or stale within its window: RFC 8767 allows serving stale
        when the resolver cannot get fresh data) or a local one, else SERVFAIL with
        EDE "Not Ready" — never silence.  Counted by provenance like ``resolve``.
        """
        try:
            q = wire.parse_query(data)
        except DropQuery:
            self.stats.dropped_malformed += 1
            return DROP
        except FormatError as e:
            self.stats.formerr += 1
            answer = Answer(wire.error_reply(data, e.rcode, e.question_end, edns=e.rcode == wire.BADVERS,
                                             udp_size=self.edns_size), Source.LOCAL, e.rcode)
            self._count(answer)
            return answer
        self.stats.queries_by_type[qtype_label(q.qtype)] += 1
        limit = TCP_LIMIT if tcp else q.udp_size
        if self.local is not None:
            reply = self.local.answer(q, limit, self.edns_size)
            if type(reply) is bytes:  # (a local CNAME to an outside name would need a fetch)
                self.caching.note_cap(stale_policy.OVERLOAD, client, Source.LOCAL)
                answer = Answer(reply, Source.LOCAL, reply[3] & wire.RCODE_MASK)
                self._count(answer)
                return answer
        answer = self.caching.answer_overloaded(q, data, limit, client)
        self._count(answer)
        return answer
