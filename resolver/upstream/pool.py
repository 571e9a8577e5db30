"""The upstream list: order, health and failover until the client's deadline.

Upstreams are tried in configured order.  One that fails ``max_failures`` times in
a row is marked down and skipped for a back-off period that doubles (up to
``backoff_max``) each time a retry fails, so a dead upstream costs a few timeouts,
not one per query.  When the back-off ends, the next query tries it again (the
probe); one good answer brings it back.  If every upstream is down, the one due
back soonest is tried anyway: a resolver that refuses to try has no chance of
noticing recovery, and the client's deadline still bounds the wait.

SERVFAIL and REFUSED count as failures here (unlike CoreDNS): an upstream that
answers but cannot resolve is as useless to our clients as a silent one, and RFC
8767 serves stale on both.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from .. import wire
from ..config import UpstreamOptions
from ..errors import UpstreamError, UpstreamServfail, UpstreamTimeout
from ..eventloop import running_loop
from ..policy import upstream_order as upstream_policy
from ..stats import UPSTREAM_BUCKETS, Histogram
from .plain import Upstream

log = logging.getLogger("resolver.pool")

_FAILURE_RCODES = {wire.SERVFAIL: "servfail", wire.REFUSED: "refused"}


class Health:
    """Consecutive-failure tracking for one upstream (loop-time based)."""

    __slots__ = ("failures", "down_until", "backoff", "up", "srtt", "rttvar", "samples", "recovered_at")

    def __init__(self):
        self.failures = 0
        self.down_until = 0.0
        self.backoff = 0.0
        self.up = True
        self.srtt = 0.0      # smoothed round-trip time of good answers (RFC 6298 style)
        self.rttvar = 0.0
        self.samples = 0
        self.recovered_at = float("-inf")  # loop time it last came back up


class UpstreamPool:
    def __init__(self, upstreams: list[Upstream], options: UpstreamOptions):
        self.upstreams = upstreams
        self.options = options
        self.health = {u.label: Health() for u in upstreams}
        self.requests: Counter = Counter()       # label -> exchanges started
        self.errors: Counter = Counter()         # (label, reason) -> failures
        self.inflight = 0
        # Time to a reply (any rcode) per upstream; timeouts and errors are in ``errors``.
        self.latency = {u.label: Histogram(UPSTREAM_BUCKETS) for u in upstreams}
        # Bumped each time an upstream comes back up: a failure recheck timer set
        # under an older epoch no longer holds (see Pipeline, RFC 8767 §4 timers).
        self.epoch = 0
        self.probes: Counter = Counter()         # (label, "ok" | "fail") -> background probes
        self.on_down = None                      # callback(pool, upstream) when one is marked down
        self.on_up = None                        # callback() when an upstream comes back (Router's epoch)
        self.hedges = 0                          # second upstreams asked because the first was slow
        self._turn = 0                           # round_robin position

    def _order(self, now: float) -> list[Upstream]:
        if len(self.upstreams) == 1:  # nothing to choose: up, or down and due back soonest
            return self.upstreams
        usable = [u for u in self.upstreams if self.health[u.label].down_until <= now]
        if usable:
            self._turn += 1
            return upstream_policy.order(usable, self.health, self.options.policy, self._turn)
        # All down: try the one due back soonest rather than nothing.
        return [min(self.upstreams, key=lambda u: self.health[u.label].down_until)]

    async def exchange(self, question: bytes, cd: bool, do: bool, deadline: float) -> tuple[bytes, Upstream]:
        """Resolve through the first upstream that gives a usable reply.

        Returns (reply, upstream).  A reply with SERVFAIL/REFUSED from every tried
        upstream raises UpstreamServfail; silence raises UpstreamTimeout; etc.
        """
        loop = running_loop()
        order = self._order(loop.time())
        if len(order) > 1 and self.options.hedge_after != upstream_policy.HEDGE_OFF:
            return await self._hedged(order, question, cd, do, deadline)
        last_error: UpstreamError | None = None
        for upstream in order:
            if loop.time() >= deadline:
                break
            try:
                return await self._attempt(upstream, question, cd, do, deadline), upstream
            except UpstreamError as e:
                last_error = e
        raise last_error or UpstreamTimeout("no time left to ask any upstream")

    async def _hedged(self, order: list[Upstream], question: bytes, cd: bool, do: bool,
                      deadline: float) -> tuple[bytes, Upstream]:
        """Ask ``order[0]``; if it is slower than its hedge delay, ask the next one too.

        The first usable reply wins and the other attempts are cancelled; a failed
        attempt starts the next upstream at once, as in the sequential walk.
        """
        loop = running_loop()
        pending: dict[asyncio.Task, Upstream] = {}
        last_error: UpstreamError | None = None
        nxt = 0

        def start() -> None:
            nonlocal nxt
            upstream = order[nxt]
            nxt += 1
            pending[loop.create_task(self._attempt(upstream, question, cd, do, deadline))] = upstream

        start()
        try:
            while pending:
                now = loop.time()
                if now >= deadline:
                    break
                wait = deadline - now
                if nxt < len(order):
                    h = self.health[order[nxt - 1].label]
                    wait = min(wait, upstream_policy.hedge_delay(h, self.options.hedge_after,
                                                                 self.options.attempt_timeout))
                done, _ = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    if nxt < len(order) and loop.time() < deadline:
                        self.hedges += 1
                        start()
                    continue
                for task in done:
                    upstream = pending.pop(task)
                    try:
                        return task.result(), upstream
                    except UpstreamError as e:
                        last_error = e
                if not pending and nxt < len(order):
                    start()
        finally:
            for task in pending:
                if task.done():
                    if not task.cancelled():
                        task.exception()  # retrieved: a loser's failure is not worth a log line
                else:
                    task.cancel()
        raise last_error or UpstreamTimeout("no time left to ask any upstream")

    async def _attempt(self, upstream: Upstream, question: bytes, cd: bool, do: bool, deadline: float) -> bytes:
        """One try at one upstream, with health and latency accounting; raises UpstreamError."""
        loop = running_loop()
        start = loop.time()
        attempt_deadline = min(deadline, start + self.options.attempt_timeout)
        self.requests[upstream.label] += 1
        self.inflight += 1
        try:
            reply = await upstream.exchange(question, cd, do, attempt_deadline)
        except UpstreamError as e:
            self._failed(upstream, e.reason, loop.time(), start)
            raise
        finally:
            self.inflight -= 1
        self.latency[upstream.label].observe(loop.time() - start)
        rcode = reply[3] & 0x0F
        if rcode in _FAILURE_RCODES or rcode not in (wire.NOERROR, wire.NXDOMAIN):
            reason = _FAILURE_RCODES.get(rcode, "rcode")
            self._failed(upstream, reason, loop.time(), start)
            raise UpstreamServfail(reason, f"{upstream.label} answered rcode {rcode}")
        upstream_policy.observe(self.health[upstream.label], loop.time() - start)
        self._succeeded(upstream)
        return reply

    def _failed(self, upstream: Upstream, reason: str, now: float, started: float | None = None) -> None:
        self.errors[(upstream.label, reason)] += 1
        h = self.health[upstream.label]
        if started is not None and started < h.recovered_at:
            # Sent into the outage before the upstream came back (e.g. into a blackhole):
            # its late timeout says nothing about the upstream now, so it must not
            # mark it down again right after a probe found it up.
            return
        h.failures += 1
        if h.failures >= self.options.max_failures:
            h.backoff = min(self.options.backoff_max, h.backoff * 2 if h.backoff else self.options.backoff)
            h.down_until = now + h.backoff
            if h.up:
                h.up = False
                log.warning("upstream %s marked down after %d consecutive failures (last: %s); retry in %.1fs",
                            upstream.label, h.failures, reason, h.backoff,
                            extra={"event": "upstream_down", "upstream": upstream.label, "reason": reason})
                if self.on_down is not None:
                    self.on_down(self, upstream)

    def _succeeded(self, upstream: Upstream) -> None:
        h = self.health[upstream.label]
        if not h.up:
            log.warning("upstream %s is back up", upstream.label,
                        extra={"event": "upstream_up", "upstream": upstream.label})
            self.epoch += 1
            if self.on_up is not None:
                self.on_up()
            h.recovered_at = running_loop().time()
        h.failures = 0
        h.backoff = 0.0
        h.down_until = 0.0
        h.up = True

    def all_down(self, now: float) -> bool:
        return all(self.health[u.label].down_until > now for u in self.upstreams)

    def close(self) -> None:
        """Close kept-open upstream connections (DNS over TLS)."""
        for upstream in self.upstreams:
            close = getattr(upstream, "close", None)
            if close is not None:
                close()

    def known_down(self, qname: bytes | None = None) -> bool:
        """True when every upstream is marked down (``max_failures`` reached, no good answer since).

        ``qname`` is for the Router's signature (one group per zone); a pool serves all names."""
        for h in self.health.values():
            if h.up:
                return False
        return True

    async def probe(self, upstream: Upstream, question: bytes, deadline: float) -> bool:
        """One background health check of ``upstream``; a usable reply marks it up.

        A failed probe leaves the client-side back-off alone (the upstream is already
        down) and is counted only under ``probes``, so that probing a dead upstream
        does not inflate its per-query error figures.
        """
        try:
            reply = await upstream.exchange(question, False, False, deadline)
        except UpstreamError:
            self.probes[(upstream.label, "fail")] += 1
            return False
        if reply[3] & 0x0F not in (wire.NOERROR, wire.NXDOMAIN):
            self.probes[(upstream.label, "fail")] += 1
            return False
        self.probes[(upstream.label, "ok")] += 1
        self._succeeded(upstream)
        return True
