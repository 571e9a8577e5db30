"""From query bytes to reply bytes: the caching stage and the forwarding stage.

The order of the stages, and why:

1. **Hit path** (``answer_fast``): a plain query (one question, class IN, RD=1, at
   most an OPT record) whose answer is cached and fresh — or stale while the
   failure recheck timer runs — is answered right here, synchronously, from the
   datagram callback: no parse, no task, no coroutine.  This is most traffic.
2. **Parse** (``resolve``): everything else is validated strictly; malformed
   queries get FORMERR/NOTIMP/BADVERS or are dropped, and questions a forwarder
   does not serve (non-IN classes, zone transfers) get REFUSED, before any cache
   or upstream work is spent on them — so no client can make an upstream look
   broken by asking it what it refuses.
2b. **Local answers** (``local.py``): localhost, local_records, the hosts file and
   block_zones, answered here and never cached, so they are never stale and no
   upstream answer can shadow them.
3. **Caching stage**: the cache reports fresh/stale/miss, ``stale.decide`` picks
   what to do, and this stage carries it out: one upstream fetch per key
   (coalescing), the RFC 8767 client-timeout race, the failure recheck timer.
4. **Forwarding stage** (``_refresh``): the upstream pool with one absolute
   deadline; the reply is validated, prepared and stored.  When a stale answer
   could be served instead (client_timeout), or for a prefetch, it runs as its
   own task, so a client answered stale does not stop the refresh that will
   repair the cache.  A plain miss — nothing to fall back on, so the client waits
   for the fetch anyway — runs it in the client's own task (one task per miss,
   measured: bench/misspath.py); clients asking the same meanwhile join it.

Every reply carries its provenance (``Source``): it drives the metrics and the
Extended DNS Error codes (RFC 8914) we attach.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time

from .. import wire
from ..cache.store import Cache, Entry
from ..clock import Clock
from ..config import Config
from ..errors import DropQuery, FormatError, UpstreamError
from ..eventloop import running_loop
from ..local.answers import LocalAnswers
from ..policy import last_known_good as lkg
from ..policy import stale as stale_policy
from ..policy.stale_rules import StaleRules
from ..stats import Stats, qtype_label
from ..upstream.pool import UpstreamPool
from .limits import ClientLimits
from .querylog import QueryLog

log = logging.getLogger("resolver.pipeline")

# (source, rcode) of the reply ``_answer`` produced, read back by ``resolve`` in the
# same task: a context variable because many queries are answered concurrently.
_SENT: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar("sent", default=None)
# While a local CNAME's target is being answered, ``_SENT`` holds this marker: the
# target's reply is part of the one client query, so it is not counted on its own.
_CHASE = ("chase", -1)

# RFC 8914 §4.15 "Not Ready": attached to the SERVFAIL sent when a cap (server.max_inflight,
# security.max_inflight_per_client) stops a query from starting upstream work and
# nothing is cached: the server could not take it on now; a retry later may succeed.
_EDE_NOT_READY = 14
_LIMIT_TEXT = {"max_inflight": b"server busy (server.max_inflight)",
               "max_inflight_per_client": b"too many queries in flight from this client"}
_STALE_REASON = {"max_inflight": "overload", "max_inflight_per_client": "client_limit"}


class Source:
    """Where a reply came from (fixed set: these are metric label values)."""

    CACHE = "cache"
    STALE = "stale"
    UPSTREAM = "upstream"
    LOCAL = "local"  # generated here: FORMERR, SERVFAIL after upstream failure, …


_TCP_LIMIT = 65535

# Bytes 2..12 of a query the hit path takes → mode (bit 1: has one additional
# record, the OPT; bit 0: CD set).  Flags: QR=0, opcode QUERY, AA=0, TC=0, RD=1,
# Z=0, AD either way (dig sets it), CD either way; QDCOUNT=1, AN=NS=0, AR=0 or 1.
_FAST_HEADERS = {
    bytes((0x01, ad | cd, 0, 1, 0, 0, 0, 0, 0, ar)): ar * 2 + (1 if cd else 0)
    for ad in (0, 0x20) for cd in (0, 0x10) for ar in (0, 1)
}

_NXDOMAIN = wire.NXDOMAIN

# Key prefixes for DO/CD, indexed by (DO << 1 | CD) (see wire.question_key).
_KEY_PREFIX = tuple(wire.key_prefix(flags) for flags in range(4))


class Pipeline:
    def __init__(self, config: Config, cache: Cache, pool: UpstreamPool, clock: Clock, stats: Stats,
                 local: LocalAnswers | None = None, limits: ClientLimits | None = None):
        self.cache = cache
        # Per-client share of upstream work (security.max_inflight_per_client): charged
        # only by a query that starts a fetch, see ``_fetch`` and the miss branch of ``_answer``.
        self.limits = limits or ClientLimits(config.security, clock.monotonic)
        self.pool = pool  # an UpstreamPool, or a routing.Router (one pool per forward zone)
        self.local = local
        self.clock = clock
        self.stats = stats
        self.inflight: dict[bytes, asyncio.Task] = {}
        self.lkg_pins: set[bytes] = set()  # upstream questions pinned by an operator (lkg_admin)
        # Bound methods looked up once: the hit path runs ~100k times a second.
        self._entries_get = cache.entries.get
        self._touch = cache.entries.move_to_end
        self._now = clock.monotonic
        self._opt_shapes: dict[bytes, tuple[int, int]] = {}
        self.query_log: QueryLog | None = None
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Apply (new) settings; called at start and on reload.  The cache is kept."""
        self.config = config
        self.stale = config.stale
        self._stale_max_age = config.stale.max_age if config.stale.enabled else -1.0  # one read on the hit path
        self.stale_window = stale_policy.stale_window(config.stale)
        self.edns_size = config.upstream.edns_buffer_size
        self._configure_query_log(config)
        self.prefetch = config.cache.prefetch
        self.lkg = lkg.LastKnownGood(config.stale.last_known_good)
        self.rules = StaleRules(config.stale)
        size = self.edns_size
        # Pre-built OPT records for the hit path: [DO][kind] where kind 0 = fresh,
        # 1 = stale positive (EDE 3), 2 = stale NXDOMAIN (EDE 19).
        self._opt = [
            [
                wire.opt_record(size, do),
                wire.opt_record(size, do, wire.ede_option(wire.EDE_STALE_ANSWER)),
                wire.opt_record(size, do, wire.ede_option(wire.EDE_STALE_NXDOMAIN)),
            ]
            for do in (False, True)
        ]

    def _configure_query_log(self, config: Config) -> None:
        """The optional query log sees every query only if the hit path is off:
        with ``logging.queries`` on, this instance's ``answer_fast`` answers nothing,
        so all queries take the (timed, logged) slow path.  Off, it costs nothing."""
        if config.logging.queries:
            self.query_log = QueryLog(config.logging.query_sample)
            self.answer_fast = _no_fast_path
        else:
            self.query_log = None
            self.__dict__.pop("answer_fast", None)

    # ------------------------------------------------------------------ hit path
    def answer_fast(self, data: bytes, tcp: bool) -> bytes | None:
        """Answer a plain query from the cache, or return None for the slow path.

        Does in place what ``resolve`` + ``wire.render`` would do, for the common
        case only; anything unusual returns None.  The key lookup validates the
        question for free: a key is in the cache only if an identical question
        once passed ``wire.parse_query``, so ``data[12:end]`` matching a key proves
        the datagram is header + that question (+ the OPT record we checked).
        Tests compare both paths byte for byte.  Every operation here was
        measured (bench/README.md): e.g. one dict lookup of the header bytes
        replaces six field checks, and the OPT record is located from the end of
        the datagram, so no scan for the end of the name is needed.
        """
        mode = _FAST_HEADERS.get(data[2:12])
        if mode is None:
            return None
        if mode < 2:  # no EDNS: the question runs to the end of the datagram
            question = data[12:]
            key = question.lower()
            if mode:
                key = _KEY_PREFIX[1] + key
            limit = 512
        else:
            info = self._opt_shapes.get(data[-11:])
            if info is not None:  # an OPT record without options, seen before
                question = data[12:-11]
            else:
                e = data.find(b"\x00", 12) + 5
                info = self._opt_at(data, e)
                if info is None:
                    return None
                question = data[12:e]
            limit, do = info
            key = question.lower()
            flags = (do << 1) | (mode & 1)
            if flags:
                key = _KEY_PREFIX[flags] + key
        if tcp:
            limit = _TCP_LIMIT
        entry = self._entries_get(key)
        if entry is None:
            return None
        now = self._now()
        if now < entry.fresh_until:
            if now <= entry.aged_until:
                body = entry.aged
            else:
                body = entry.aged_body(now)
                self._touch(key)  # LRU, at one-second granularity
                if now >= entry.prefetch_after:  # checked once per second per entry: ~free
                    self._prefetch(key)
            if mode < 2:
                reply = b"".join((data[:2], entry.hdr, question, body))
            else:
                reply = b"".join((data[:2], entry.hdr_opt, question, body, self._opt[do][0]))
            if len(reply) > limit:
                return None  # the slow path sends TC=1
            entry.tally.fresh += 1  # hit by qtype and rcode, one increment (stats.HitTally)
            return reply
        # RFC 8767 §4 failure recheck timer: a refresh failed recently, answer stale
        # at once without asking upstream (same rule as stale.decide → ANSWER_STALE).
        # (_stale_max_age is -1 with serve-stale off: the age test then always fails.)
        if (now < entry.recheck_until and now < entry.stale_until and now - entry.fresh_until < self._stale_max_age
                and entry.recheck_epoch == self.pool.epoch and entry.lkg_text is None):
            body = entry.stale_body
            if body is None:
                body = entry.stale_answer_body(self.stale.answer_ttl)
            if mode < 2:
                reply = b"".join((data[:2], entry.hdr, question, body))
            else:
                reply = b"".join((data[:2], entry.hdr_opt, question, body,
                                  self._opt[do][2 if entry.rcode == _NXDOMAIN else 1]))
            if len(reply) > limit:
                return None
            entry.tally.stale += 1  # stale answer, reason "recheck" (stats.HitTally)
            return reply
        return None

    def _opt_at(self, data: bytes, e: int) -> tuple[int, int] | None:
        """(client UDP limit, DO) if ``data[e:]`` is exactly one EDNS0 OPT record, else None.

        OPT records without options are remembered (bounded), so the next query
        with the same one is recognised by a single dict lookup.
        """
        n = len(data)
        if e < 17 or n < e + 11 or data[e : e + 3] != b"\x00\x00\x29" or data[e + 6]:
            return None
        if n != e + 11 + (data[e + 9] << 8 | data[e + 10]):
            return None
        limit = max(512, data[e + 3] << 8 | data[e + 4])
        info = (limit, data[e + 7] >> 7)
        if n == e + 11 and len(self._opt_shapes) < 256:
            self._opt_shapes[data[e:]] = info
        return info

    # ----------------------------------------------------------------- slow path
    async def resolve(self, data: bytes, tcp: bool, client: str | None = None) -> bytes | None:
        """Answer any query; None means drop it (unreadable or not a query).

        ``client`` is the asking address: a query that would start an upstream fetch
        is charged to it (security.max_inflight_per_client); None charges nobody.
        Times the answer for the request-duration histogram, by the source that
        ``_answer`` reported (``_sent``), and feeds the sampled query log.  The
        timer is ``perf_counter``: the event loop's clock ticks in milliseconds,
        coarser than the histogram's smallest buckets.
        """
        started = time.perf_counter()
        token = _SENT.set(None)
        try:
            reply = await self._answer(data, tcp, client)
            sent = _SENT.get()
        finally:
            _SENT.reset(token)
        if sent is not None:
            elapsed = time.perf_counter() - started
            self.stats.durations[sent[0]].observe(elapsed)
            if self.query_log is not None:
                self.query_log.log(data, sent[0], sent[1], elapsed)
        return reply

    def _sent(self, source: str, rcode: int) -> None:
        """Count a slow-path reply by provenance and rcode, and note it for ``resolve``."""
        if _SENT.get() is _CHASE:  # a local CNAME's target: counted once, as the whole reply
            return
        self.stats.responses_by_source[source] += 1
        self.stats.responses_by_rcode[rcode] += 1
        _SENT.set((source, rcode))

    async def _answer(self, data: bytes, tcp: bool, client: str | None = None, chase: bool = False) -> bytes | None:
        stats = self.stats
        try:
            q = wire.parse_query(data)
        except DropQuery:
            stats.dropped_malformed += 1
            return None
        except FormatError as e:
            if e.rcode != wire.REFUSED:  # REFUSED: a question we do not serve (non-IN class, AXFR)
                stats.formerr += 1
            self._sent(Source.LOCAL, e.rcode)
            return wire.error_reply(data, e.rcode, e.question_end, edns=e.rcode == wire.BADVERS or e.edns,
                                    udp_size=self.edns_size)
        if not chase:
            stats.queries_by_type[qtype_label(q.qtype)] += 1
        limit = _TCP_LIMIT if tcp else q.udp_size
        # Local answers (localhost, local_records, hosts file, block_zones) come before
        # the cache: they never expire and must win over anything cached (see local.py).
        if self.local is not None:
            reply = self.local.answer(q, limit, self.edns_size)
            if reply is not None:
                if type(reply) is not bytes:  # a local CNAME to an outside name: resolve the target
                    # Part of this one query: not counted, timed or logged on its own.
                    token = _SENT.set(_CHASE)
                    try:
                        sub = await self._answer(reply.subquery(q), True, client, chase=True)
                    finally:
                        _SENT.reset(token)
                    reply = reply.merge(q, sub, limit, self.edns_size)
                self._sent(Source.LOCAL, reply[3] & 0x0F)
                return reply
        now = self.clock.monotonic()
        _, entry = self.cache.lookup(q.key, now)
        action = stale_policy.decide(entry, now, self.stale, self.pool.epoch)

        if action == stale_policy.ANSWER_FRESH:
            stats.cache_hits += 1
            self.cache.touch(q.key)
            if now >= entry.prefetch_after:
                self._prefetch(q.key)
            return self._render(q, entry, self._aged(entry, now), limit, Source.CACHE)
        if action == stale_policy.ANSWER_STALE:
            return self._render_stale(q, entry, limit, "recheck", entry.lkg_text or b"")
        if action == stale_policy.RESOLVE_OR_STALE and self.pool.known_down(q.qname.lower()):
            # Every upstream is known down (the prober watches for its return): answer
            # stale at once instead of making each client wait client_timeout, and
            # hold the name under the recheck timer until an upstream comes back.
            # One background fetch still goes out (the pool tries the upstream due
            # back soonest), so an upstream that fails our probes but answers real
            # names is still noticed; the hold bounds it to one per name per recheck.
            self._hold(entry, now)
            if q.key not in self.inflight:
                self._fetch(q, client)  # (skipped if the client is over its share: stale either way)
            return self._render_stale(q, entry, limit, "upstreams_down")

        stats.cache_misses += 1
        key = q.key
        if action == stale_policy.RESOLVE and key not in self.inflight:
            # Nothing to fall back on and nobody asking yet: this task fetches itself
            # (no fetch task, no shield: the cheapest miss, measured); clients asking
            # the same question meanwhile join through a future in the in-flight map,
            # which gets the outcome as is — an upstream error if this task is
            # cancelled (shutdown).  Inline, not a method: a coroutine frame less.
            # The one place a plain miss starts upstream work: charged to the client.
            if client is not None and not self.limits.acquire_inflight(client):
                return self._limited(data, q, None, limit, "max_inflight_per_client", client)
            loop = running_loop()
            joined = loop.create_future()
            joined.started = loop.time()
            joined.leader = asyncio.current_task(loop)  # what cancel_refreshes must stop
            inflight = self.inflight
            inflight[key] = joined
            try:
                fresh = await self._refresh(key, wire.key_question(key), bool(q.cd), q.do)
            except BaseException as e:
                if not joined.done():  # (cancel_refreshes may have cancelled it at shutdown)
                    joined.set_exception(e if isinstance(e, UpstreamError) else UpstreamError("fetch cancelled"))
                    joined.exception()  # retrieved: each joiner handles it; nobody else must log it
                if isinstance(e, lkg.LastKnownGoodHeld):
                    return self._render_stale(q, e.entry, limit, e.reason, e.ede_text)
                if isinstance(e, UpstreamError):
                    return self._servfail(data, q, e)
                raise
            else:
                if not joined.done():
                    joined.set_result(fresh)
            finally:
                if inflight.get(key) is joined:
                    del inflight[key]
                if client is not None:
                    self.limits.release_inflight(client)
            return self._render(q, fresh, fresh.body, limit, Source.UPSTREAM)
        fetch = self._fetch(q, client)
        if fetch is None:  # it would start a fetch, and the client is over its share
            return self._limited(data, q, entry, limit, "max_inflight_per_client", client)
        if action == stale_policy.RESOLVE_OR_STALE and self.stale.client_timeout == 0:
            # Answer-first mode: stale at once; the fetch refreshes the cache behind it.
            return self._render_stale(q, entry, limit, "answer_first")
        if action == stale_policy.RESOLVE_OR_STALE:
            # RFC 8767 §5: wait at most client_timeout, then answer stale while the
            # fetch goes on in the background and repairs the cache if it succeeds.
            # The timer runs from the start of the fetch: a client that joins a
            # fetch which has already outlived client_timeout is answered at once.
            wait = self.stale.client_timeout - (running_loop().time() - fetch.started)
            try:
                async with asyncio.timeout(max(0.0, wait)):
                    fresh = await asyncio.shield(fetch)
            except TimeoutError:
                return self._render_stale(q, entry, limit, "timeout")
            except UpstreamError as e:
                return self._render_stale(q, entry, limit, e.reason, getattr(e, "ede_text", b""))
            return self._render(q, fresh, fresh.body, limit, Source.UPSTREAM)

        try:
            fresh = await asyncio.shield(fetch)  # bounded by the fetch's own deadline
        except lkg.LastKnownGoodHeld as e:
            return self._render_stale(q, e.entry, limit, e.reason, e.ede_text)
        except UpstreamError as e:
            return self._servfail(data, q, e)
        return self._render(q, fresh, fresh.body, limit, Source.UPSTREAM)

    def answer_limited(self, data: bytes, tcp: bool, client: str | None = None) -> bytes | None:
        """Answer without any upstream work: ``server.max_inflight`` is reached.

        Called synchronously by the listener instead of starting a task: a cached
        answer (fresh, or stale within its window: RFC 8767 allows serving stale
        when the resolver cannot get fresh data) or a local one, else SERVFAIL with
        EDE "Not Ready" — never silence.  Runs in a copy of the context so the
        reply bookkeeping (``_SENT``) stays out of the listener's.
        """
        return contextvars.copy_context().run(self._answer_limited, data, tcp, client)

    def _answer_limited(self, data: bytes, tcp: bool, client: str | None) -> bytes | None:
        try:
            q = wire.parse_query(data)
        except DropQuery:
            self.stats.dropped_malformed += 1
            return None
        except FormatError as e:
            self.stats.formerr += 1
            self._sent(Source.LOCAL, e.rcode)
            return wire.error_reply(data, e.rcode, e.question_end, edns=e.rcode == wire.BADVERS,
                                    udp_size=self.edns_size)
        self.stats.queries_by_type[qtype_label(q.qtype)] += 1
        limit = _TCP_LIMIT if tcp else q.udp_size
        if self.local is not None:
            reply = self.local.answer(q, limit, self.edns_size)
            if type(reply) is bytes:  # (a local CNAME to an outside name would need a fetch)
                self.stats.limited["max_inflight", Source.LOCAL] += 1
                self.limits.cap_log.note("max_inflight", client, Source.LOCAL)
                self._sent(Source.LOCAL, reply[3] & 0x0F)
                return reply
        now = self.clock.monotonic()
        _, entry = self.cache.lookup(q.key, now)
        if stale_policy.decide(entry, now, self.stale, self.pool.epoch) == stale_policy.ANSWER_FRESH:
            self.stats.limited["max_inflight", Source.CACHE] += 1
            self.limits.cap_log.note("max_inflight", client, Source.CACHE)
            return self._render(q, entry, self._aged(entry, now), limit, Source.CACHE)
        return self._limited(data, q, entry, limit, "max_inflight", client)

    def _limited(self, data: bytes, q: wire.Query, entry: Entry | None, limit: int, which: str,
                 client: str | None) -> bytes:
        """The answer when cap ``which`` stops a query from starting upstream work.

        Stale if the cache holds an entry still inside its stale window (the
        pipeline's usual stale rendering, EDE 3 or 19), else SERVFAIL with EDE 14
        "Not Ready".  SERVFAIL rather than REFUSED: a stub resolver takes REFUSED
        as "this server will not serve me" and may give up on it or on the name,
        and REFUSED is what the allow-list sends to strangers; SERVFAIL says "try
        again", and is not cached here.  Counted and logged (rate-limited).
        """
        now = self.clock.monotonic()
        if entry is not None and stale_policy.decide(entry, now, self.stale) in (
                stale_policy.ANSWER_STALE, stale_policy.RESOLVE_OR_STALE):
            answer = Source.STALE
            reply = self._render_stale(q, entry, limit, _STALE_REASON[which])
        else:
            answer = "servfail"
            self._sent(Source.LOCAL, wire.SERVFAIL)
            reply = wire.error_reply(data, wire.SERVFAIL, q.qend, edns=q.edns, udp_size=self.edns_size,
                                     ede=wire.ede_option(_EDE_NOT_READY, _LIMIT_TEXT[which]))
        self.stats.limited[which, answer] += 1
        self.limits.cap_log.note(which, client, answer)
        return reply

    def _servfail(self, data: bytes, q: wire.Query, e: UpstreamError) -> bytes:
        self.stats.servfail_upstream += 1
        self._sent(Source.LOCAL, wire.SERVFAIL)
        code = wire.EDE_NETWORK_ERROR if e.reason == "unreachable" else wire.EDE_NO_REACHABLE_AUTHORITY
        return wire.error_reply(data, wire.SERVFAIL, q.qend, edns=q.edns, udp_size=self.edns_size,
                                ede=wire.ede_option(code))

    def _aged(self, entry: Entry, now: float) -> bytes:
        return entry.aged if now <= entry.aged_until else entry.aged_body(now)

    def _render(self, q: wire.Query, entry: Entry, body: bytes, limit: int, source: str) -> bytes:
        self._sent(source, entry.rcode)
        return wire.render(q, entry.hdr, entry.hdr_opt, body, limit, self.edns_size)

    def _render_stale(self, q: wire.Query, entry: Entry, limit: int, reason: str, text: bytes = b"") -> bytes:
        self.stats.stale_answers[reason] += 1
        self._sent(Source.STALE, entry.rcode)
        code = wire.EDE_STALE_NXDOMAIN if entry.rcode == wire.NXDOMAIN else wire.EDE_STALE_ANSWER
        body = entry.stale_answer_body(self.stale.answer_ttl)
        return wire.render(q, entry.hdr, entry.hdr_opt, body, limit, self.edns_size, wire.ede_option(code, text))

    # ------------------------------------------------------------ forwarding stage
    def _fetch(self, q: wire.Query, client: str | None = None) -> asyncio.Task | None:
        """The one upstream fetch for this key: joined if already running (coalescing).

        Joining is free.  Starting one is charged to ``client`` until the fetch ends
        (even if the client was answered stale before that); None if the client is
        over its share (security.max_inflight_per_client).
        """
        task = self.inflight.get(q.key)
        if task is not None:
            self.stats.coalesced += 1
            return task
        if client is None:
            return self._start_fetch(q.key, wire.key_question(q.key), bool(q.cd), q.do)
        if not self.limits.acquire_inflight(client):
            return None
        try:
            task = self._start_fetch(q.key, wire.key_question(q.key), bool(q.cd), q.do)
        except BaseException:
            self.limits.release_inflight(client)
            raise
        task.add_done_callback(lambda _t, release=self.limits.release_inflight: release(client))
        return task

    def _start_fetch(self, key: bytes, upstream_question: bytes, cd: bool, do: bool) -> asyncio.Task:
        loop = running_loop()
        task = loop.create_task(self._refresh(key, upstream_question, cd, do))
        task.started = loop.time()
        self.inflight[key] = task
        task.add_done_callback(lambda t, key=key: self._fetch_done(key, t))
        return task

    def _prefetch(self, key: bytes) -> None:
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
        # The key is the flag byte (if any) + the question with the name lower-cased.
        flags = key[0] & 0x7F if key[0] & wire.KEY_FLAGGED else -1
        question = wire.key_question(key)
        if self.pool.known_down(question[:-4]):
            return
        self.stats.prefetches += 1
        self._start_fetch(key, question, flags > 0 and bool(flags & wire.KEY_CD),
                          flags > 0 and bool(flags & wire.KEY_DO))

    def _hold(self, entry: Entry, now: float, epoch: int | None = None) -> None:
        """Start the RFC 8767 §4 failure recheck timer on ``entry`` under ``epoch`` (the
        current one by default).  A fetch sent into an outage that fails after an
        upstream came back holds under the epoch it was sent in, which no longer
        holds: the next query fetches again instead of serving stale for ``recheck``."""
        entry.recheck_until = now + self.stale.recheck
        entry.recheck_epoch = self.pool.epoch if epoch is None else epoch

    def _fetch_done(self, key: bytes, task: asyncio.Task) -> None:
        if self.inflight.get(key) is task:
            del self.inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: waiters handle it; nobody else must log it

    async def _refresh(self, key: bytes, question: bytes, cd: bool, do: bool) -> Entry:
        """Ask upstream and store the answer.  Returns the (possibly uncached) entry."""
        loop = running_loop()
        deadline = loop.time() + self.config.upstream.total_timeout
        epoch = self.pool.epoch  # a failure is held (recheck) under the epoch it was sent in
        try:
            reply, _upstream = await self.pool.exchange(question, cd, do, deadline)
            cache_cfg = self.config.cache
            prepared = wire.parse_reply(reply, question, min_ttl=cache_cfg.min_ttl, max_ttl=cache_cfg.max_ttl,
                                        max_negative_ttl=cache_cfg.max_negative_ttl)
            self._check_vanished(key, question, prepared)
        except UpstreamError:
            self._refresh_failed(key, epoch)
            raise
        except Exception as e:  # a bug must not leave waiters hanging: log, fail as upstream error
            log.exception("internal error while resolving %r", question)
            self._refresh_failed(key, epoch)
            raise UpstreamError(f"internal error: {e}") from e
        now = self.clock.monotonic()
        if prepared.ttl > 0 and not prepared.tc:
            rule = self.rules.find(question) if self.rules else None  # resolved at insert, never per hit
            entry = self.cache.put(key, prepared, now, self.rules.window(rule, self.stale_window))
            if rule is not None and rule.answer_ttl:
                entry.stale_answer_body(rule.answer_ttl)  # pre-built: every stale answer uses it
            if self.prefetch:
                entry.prefetch_after = now + prepared.ttl * (1.0 - self.prefetch)
            if self.lkg_pins and question in self.lkg_pins and prepared.kind == wire.POSITIVE:
                entry.stale_until = math.inf  # pinned: kept however long the incident lasts
            return entry
        return Entry(prepared, now, 0.0)  # answered, but not cacheable (TTL 0, no SOA, TC)

    def pin(self, question: bytes) -> bool:
        """Pin the last-known-good answer of ``question`` (admin); True if positive records are cached."""
        return lkg.pin(self.lkg_pins, self.cache, question)

    def unpin(self, question: bytes) -> bool:
        window = self.rules.window(self.rules.find(question), self.stale_window) if self.rules else self.stale_window
        return lkg.unpin(self.lkg_pins, self.cache, question, window)

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
        raise held  # → _refresh_failed holds the entry (recheck)

    def _refresh_failed(self, key: bytes, epoch: int | None = None) -> None:
        now = self.clock.monotonic()
        entry = self.cache.get(key)
        if entry is not None and now < entry.stale_until and entry.kind != wire.FAILURE:
            # RFC 8767 §4 failure recheck timer: answer this name stale at once for a while.
            self._hold(entry, now, epoch)
            return
        servfail_ttl = self.config.cache.servfail_ttl
        if servfail_ttl > 0 and (entry is None or now >= entry.stale_until):
            # RFC 9520 §3.2: remember the failure briefly so a retry storm does not
            # hammer a broken upstream; never stale-served.
            self.cache.put(key, _servfail_prepared(servfail_ttl), now, 0.0)

    async def cancel_refreshes(self) -> None:
        """Stop every upstream fetch: fetch tasks, and client tasks leading a fetch of their own."""
        tasks = [getattr(fetch, "leader", None) or fetch for fetch in self.inflight.values()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _servfail_prepared(ttl: int) -> wire.Prepared:
    hdr = bytes((0x81, 0x80 | wire.SERVFAIL)) + b"\x00\x01\x00\x00\x00\x00\x00\x00"
    hdr_opt = hdr[:-1] + b"\x01"
    return wire.Prepared(wire.FAILURE, wire.SERVFAIL, ttl, hdr, hdr_opt, b"", (), False)


def _no_fast_path(data: bytes, tcp: bool) -> None:
    """Stands in for ``Pipeline.answer_fast`` while the query log is on."""
    return None
