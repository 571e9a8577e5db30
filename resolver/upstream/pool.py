"""The upstream list: order, health and failover until the client's deadline.

Upstreams are tried in configured order (or as ``upstream.policy`` says).  Each
send is timed against its upstream's retransmission timeout (RTO), which adapts
to the measured round-trip time as TCP's does (RFC 6298: SRTT + 4·RTTVAR, within
[``attempt_timeout_min``, ``attempt_timeout_max``], ``attempt_timeout`` before
any sample, doubled on each expiry).  An expired send is not given up: its socket
keeps listening until the query's deadline while the next upstream — or, with
one upstream, the same one with a fresh ID and port — is asked, and the first
usable reply wins.  So a slow upstream is not a dead one, and a lost datagram
costs one RTO, not the query.  One that fails ``max_failures`` times in
a row is marked down and skipped for a back-off period that doubles (up to
``backoff_max``) each time a retry fails, so a dead upstream costs a few timeouts,
not one per query.  When the back-off ends, the next query tries it again (the
probe); one good answer brings it back.  If every upstream is down, the one due
back soonest is tried anyway: a resolver that refuses to try has no chance of
noticing recovery, and the client's deadline still bounds the wait.

SERVFAIL counts as a failure here (unlike CoreDNS): an upstream that answers but
cannot resolve is as useless to our clients as a silent one, and RFC 8767 serves
stale on it.  REFUSED, FORMERR and NOTIMP are about the question the client
asked, so they never count against the upstream (nothing a client sends may
change how we judge an upstream); the next upstream is asked, and the caller
serves stale or SERVFAIL if none answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from .. import wire
from ..clock import Clock
from ..config import UpstreamOptions
from ..errors import UpstreamError, UpstreamServfail, UpstreamTimeout
from ..eventloop import running_loop
from ..policy import upstream_order as upstream_policy
from ..stats import UPSTREAM_BUCKETS, Histogram
from .plain import UdpSend, Upstream

log = logging.getLogger("resolver.pool")

_FAILURE_RCODES = {wire.SERVFAIL: "servfail"}
# Replies about the client's question, not about the upstream (RFC 1035 §4.1.1).
_ABOUT_THE_QUESTION = {wire.REFUSED: "refused", wire.FORMERR: "formerr", wire.NOTIMP: "notimp"}
_NXDOMAIN = wire.NXDOMAIN
# Sends per exchange at most (with the RTO doubling, a 4 s deadline and the 50 ms
# minimum RTO allow 7): bounds the sockets one query can hold open.
_MAX_SENDS = 8


class _Wake:
    """The fast path's timer: cancels the waiting task at the send's RTO (as
    ``asyncio.timeout`` does, without its context-manager cost), or at once when the
    upstream, down when the send went out, comes back (``recovered``)."""

    __slots__ = ("task", "fired", "recovered")

    def __init__(self, task: asyncio.Task):
        self.task = task
        self.fired = False
        self.recovered = False

    def fire(self) -> None:
        if self.task is not None and not self.fired:
            self.fired = True
            self.task.cancel()

    def comeback(self, _future=None) -> None:
        if self.task is not None and not self.fired:
            self.recovered = True
            self.fire()


class _Send:
    """One send of an exchange in ``UpstreamPool._race``: to whom, when, its RTO."""

    __slots__ = ("upstream", "started", "rto", "late")

    def __init__(self, upstream, started: float, rto: float):
        self.upstream = upstream
        self.started = started
        self.rto = rto
        self.late = False  # passed its RTO unanswered


class Health:
    """Consecutive-failure tracking for one upstream (times on the pool's clock)."""

    __slots__ = ("failures", "down_until", "backoff", "up", "srtt", "rttvar", "samples", "recovered_at", "rto",
                 "loss", "sends")

    def __init__(self):
        self.failures = 0
        self.down_until = 0.0
        self.backoff = 0.0
        self.up = True
        self.srtt = 0.0      # smoothed round-trip time of good answers (RFC 6298 style)
        self.rttvar = 0.0
        self.samples = 0
        self.rto = 0.0       # retransmission timeout for the next send; 0 = none measured yet
        self.recovered_at = float("-inf")  # clock time it last came back up
        self.loss = 0.0      # share of recent sends that passed their RTO (upstream_policy.observe_send)
        self.sends = 0       # sends folded into ``loss``, counted up to LOSS_MIN_SENDS


class UpstreamPool:
    def __init__(self, upstreams: list[Upstream], options: UpstreamOptions, clock: Clock):
        self.upstreams = upstreams
        self.options = options
        self.clock = clock  # deadlines, RTO timers, back-off and RTT samples
        self.health = {u.label: Health() for u in upstreams}
        self.requests: Counter = Counter()       # label -> exchanges started
        self.errors: Counter = Counter()         # (label, reason) -> failures
        self.inflight = 0
        # Time to a reply (any rcode) per upstream; timeouts and errors are in ``errors``.
        self.latency = {u.label: Histogram(UPSTREAM_BUCKETS) for u in upstreams}
        # Bumped each time an upstream comes back up: a failure recheck timer set
        # under an older epoch no longer holds (see serve/refresher.py, RFC 8767 §4 timers).
        self.epoch = 0
        self.probes: Counter = Counter()         # (label, "ok" | "fail") -> background probes
        self.on_down = None                      # callback(pool, upstream) when one is marked down
        self.on_up = None                        # callback() when an upstream comes back (Router's epoch)
        self.hedges = 0                          # second upstreams asked because the first was slow
        self.retransmits = 0                     # sends again to the same upstream past its RTO
        self._by_label = {u.label: u for u in upstreams}
        # The question that last failed (timeout, SERVFAIL): what the group is now
        # serving stale, and so what the health probe asks (upstream/probe.py).
        self.failed_question: bytes | None = None
        self._comeback: asyncio.Future | None = None
        # The RTO before any sample (RFC 6298 §2.1), within the configured bounds.
        self._initial_rto = min(options.attempt_timeout_max, max(options.attempt_timeout_min, options.attempt_timeout))
        self._turn = 0                           # round_robin position
        # Which upstreams share fate (upstream_policy.providers): with more than one
        # provider, the order takes them in turns, so the hedge goes to another one.
        self._provider = upstream_policy.providers(upstreams)
        self._diverse = len(set(self._provider.values())) > 1

    def _order(self, now: float) -> list[Upstream]:
        if len(self.upstreams) == 1:  # nothing to choose: up, or down and due back soonest
            return self.upstreams
        usable = []
        for u in self.upstreams:
            h = self.health[u.label]
            if h.down_until <= now:
                if not h.up:
                    # Its back-off is over: this exchange tries it (half-open), and the
                    # others skip it until the verdict instead of all paying its RTO.
                    h.down_until = now + h.backoff
                usable.append(u)
        if usable:
            self._turn += 1
            ordered = upstream_policy.order(usable, self.health, self.options.policy, self._turn)
            return upstream_policy.diversify(ordered, self._provider) if self._diverse else ordered
        # All down: try the one due back soonest rather than nothing.
        return [min(self.upstreams, key=lambda u: self.health[u.label].down_until)]

    def _rto(self, label: str) -> float:
        """The retransmission timeout for the next send to ``label`` (upstream_policy.rto)."""
        o = self.options
        return upstream_policy.rto(self.health[label], o.attempt_timeout, o.attempt_timeout_min,
                                   o.attempt_timeout_max)

    def _comeback_future(self) -> asyncio.Future:
        """Resolved when any upstream of this pool comes back up (``_succeeded``)."""
        future = self._comeback
        if future is None or future.done():
            future = self._comeback = running_loop().create_future()
        return future

    def _back_off(self, label: str, rto: float) -> None:
        """A send to ``label`` passed its RTO ``rto``: double it (RFC 6298 §5.5), at once
        and for every exchange — concurrent queries into a blackhole then back off
        together — until a new sample resets it.  As Unbound's ``rtt_lost``: the RTO
        this send used is doubled, not the current one (many sends expiring at once
        double it once), and if replies meanwhile brought the RTO below it, this was
        a lost datagram, not a slowdown: no back-off, the next send goes out on the
        current RTO."""
        h = self.health[label]
        upstream_policy.observe_send(h, lost=True)  # lost or late: either way the client waited an RTO
        if h.rto and h.rto < rto:
            return
        h.rto = max(h.rto, min(self.options.attempt_timeout_max, rto * 2))

    async def exchange(self, question: bytes, cd: bool, do: bool, deadline: float) -> tuple[bytes, Upstream]:
        """Resolve through the first upstream that gives a usable reply before ``deadline``.

        Returns (reply, upstream).  Raises UpstreamTimeout when nothing usable came
        back in time, UpstreamServfail when every upstream asked answered with a
        failure rcode (or about the question: REFUSED, FORMERR, NOTIMP), etc.

        The common case — one UDP upstream that answers — is done right here in
        the caller's task, as cheaply as a single exchange: one socket, one
        ``sock_recv``, one timer.  The timer is the upstream's retransmission
        timeout (RTO, adaptive: upstream_policy.rto), not the deadline: when it
        fires, ``_race`` takes over this socket (it keeps listening: a slow
        upstream is not a dead one) and sends again.
        """
        loop = running_loop()
        clock = self.clock
        now = clock.monotonic()
        order = self._order(now)
        upstream = order[0]
        if len(order) > 1 or not getattr(upstream, "udp", False):
            return await self._race(order, question, cd, do, deadline)
        if now >= deadline:
            raise UpstreamTimeout("no time left to ask any upstream")
        label = upstream.label
        health = self.health[label]
        rto = health.rto or self._initial_rto
        self.requests[label] += 1
        try:
            send = upstream.send_udp(question, cd, do, now)
        except UpstreamError as e:
            self._failed(upstream, e.reason, now, now, question)
            raise
        task = asyncio.current_task(loop)
        wake = _Wake(task)
        timer = clock.call_at(min(now + rto, deadline), wake.fire)
        comeback = None
        if not health.up:  # sent into an outage: if it ends meanwhile, send again at once
            comeback = self._comeback_future()
            comeback.add_done_callback(wake.comeback)
        self.inflight += 1
        try:
            reply = await upstream.receive(loop, send)
        except asyncio.CancelledError:
            if wake.fired and task.uncancel() == 0:
                # Past its RTO without a reply (or the upstream came back): send again,
                # and keep this socket listening.
                return await self._race(order, question, cd, do, deadline, (send, rto, not wake.recovered))
            send[0].close()
            raise
        except UpstreamError as e:
            send[0].close()
            self._failed(upstream, e.reason, clock.monotonic(), now, question)
            raise
        finally:
            self.inflight -= 1
            wake.task = None
            timer.cancel()
            if comeback is not None:  # a long outage must not pile up callbacks of finished queries
                comeback.remove_done_callback(wake.comeback)
        send[0].close()
        rtt = clock.monotonic() - now
        self.latency[label].observe(rtt)
        rcode = reply[3] & 0x0F
        if rcode != wire.NOERROR and rcode != _NXDOMAIN:
            raise self._unusable(upstream, rcode, now, question)
        self._won(upstream, rtt)
        if reply[2] & 0x02:  # TC=1
            reply = await self._over_tcp(upstream, reply, question, cd, do, deadline)
        return upstream.scrub(reply, question), upstream

    def _won(self, upstream: Upstream, rtt: float, late: bool = False) -> None:
        """Account a usable reply: an RTT sample (resets the RTO) and a success; a send
        answered before its RTO also counts as not lost (``late``: it had passed it,
        and ``_back_off`` counted it lost then)."""
        o = self.options
        h = self.health[upstream.label]
        upstream_policy.observe(h, rtt, o.attempt_timeout_min, o.attempt_timeout_max)
        if not late:
            upstream_policy.observe_send(h, lost=False)
        self._succeeded(upstream)

    async def _over_tcp(self, upstream: Upstream, reply: bytes, question: bytes, cd: bool, do: bool,
                        deadline: float) -> bytes:
        """The UDP reply was truncated (TC=1): ask again over TCP (RFC 7766 §5)."""
        try:
            return await upstream.tcp_retry(question, cd, do, deadline)
        except UpstreamError as e:
            self._failed(upstream, e.reason, self.clock.monotonic(), None, question)
            raise

    def _unusable(self, upstream: Upstream, rcode: int, started: float, question: bytes) -> UpstreamServfail:
        """Account a reply that is no answer; returns the error to raise.

        FORMERR, NOTIMP and REFUSED are about the question the client asked (RFC
        1035 §4.1.1): the upstream is alive and will answer other names, so they are
        counted but never mark it down (a few CHAOS queries must not take a healthy
        upstream out).  SERVFAIL and other rcodes are failures of the upstream.
        """
        about_question = _ABOUT_THE_QUESTION.get(rcode)
        if about_question is not None:
            self.errors[(upstream.label, about_question)] += 1
            return UpstreamServfail(about_question, f"{upstream.label} answered rcode {rcode}")
        reason = _FAILURE_RCODES.get(rcode, "rcode")
        self._failed(upstream, reason, self.clock.monotonic(), started, question)
        return UpstreamServfail(reason, f"{upstream.label} answered rcode {rcode}")

    async def _race(self, order: list[Upstream], question: bytes, cd: bool, do: bool, deadline: float,
                    first: tuple[UdpSend, float, bool] | None = None) -> tuple[bytes, Upstream]:
        """Send, and send again each time the last send passes its RTO (or the hedge
        delay, towards another upstream), until a usable reply or the deadline.

        No socket stops listening before the deadline: the first usable reply from
        any send wins (each send has its own ID and socket, so the RTT sample is
        taken from the send that was answered — Karn's ambiguity cannot arise).
        Sends go round ``order``; with one upstream they retransmit to it (fresh
        ID and source port, RFC 5452 §9.2), as Unbound does.  The RTO doubles on
        each expiry (RFC 6298 §5.5).  An upstream that answered with a failure
        rcode or is unreachable gets no more sends in this exchange, and the next
        one is asked at once.  Health is judged once per upstream per exchange when
        it ends: a failure rcode or unreachable is a failure; silence is a timeout
        only if the exchange ended without an answer, or another upstream won after
        this one had passed its RTO; a reply about the question is no failure.
        ``first`` is the caller's send, its RTO and whether it expired (else its
        upstream came back from an outage).  Sends into an outage are not
        retransmitted by the timer (the prober watches), but when their upstream
        comes back every exchange still waiting sends again at once, so the
        clients waiting on them get the recovery, not a timeout.
        """
        loop = running_loop()
        clock = self.clock
        o = self.options
        hedging = len(order) > 1 and o.hedge_after != upstream_policy.HEDGE_OFF
        pending: dict[asyncio.Task, _Send] = {}
        asked: dict[str, float] = {}       # label -> time of its first send in this exchange
        late: set[str] = set()             # labels with a send past its RTO, unanswered
        failed: dict[str, tuple[str, float]] = {}  # label -> (reason, when): no more sends
        finished: set[str] = set()         # labels that get no more sends in this exchange
        last_error: UpstreamError | None = None
        winner: tuple[_Send, bytes, float] | None = None
        cursor = 0
        sends = 0
        last: _Send | None = None
        next_at = clock.monotonic()
        prompt = False  # the next send replaces a failed one (no hedge, no retransmission)
        comeback: asyncio.Future | None = None  # resolved when a down upstream comes back

        def watch(upstream, started: float, rto: float, awaitable, sock=None) -> _Send:
            send = _Send(upstream, started, rto)
            task = loop.create_task(awaitable)
            if sock is not None:  # closed once the task is over: its reader is gone by then
                task.add_done_callback(lambda _t, sock=sock: sock.close())
            pending[task] = send
            return send

        def launch(upstream, now: float) -> None:
            nonlocal sends, last, last_error, next_at, prompt
            sends += 1
            label = upstream.label
            rto = self._rto(label)  # shared: backed off by expiries, reset by replies
            asked.setdefault(label, now)
            self.requests[label] += 1
            if getattr(upstream, "udp", False):
                try:
                    udp = upstream.send_udp(question, cd, do, now)
                except UpstreamError as e:
                    failed[label] = (e.reason, now)
                    finished.add(label)
                    last_error = e
                    next_at, prompt = now, True
                    return
                last = watch(upstream, now, rto, upstream.receive(loop, udp), udp[0])
            else:  # a stream: one exchange, to the deadline; never re-sent
                finished.add(label)
                last = watch(upstream, now, rto, upstream.exchange(question, cd, do, deadline))
            next_at = now + rto

        def candidate():
            """The upstream for the next send, round ``order`` from ``cursor``; None if none is left."""
            if sends >= _MAX_SENDS:
                return None
            for i in range(len(order)):
                upstream = order[(cursor + i) % len(order)]
                label = upstream.label
                # A down upstream gets one send per exchange: the prober (upstream/probe.py)
                # watches for its return, so retransmitting into an outage only adds load.
                if label not in finished and (label not in asked or self.health[label].up):
                    return upstream
            return None

        counted = first is None  # the caller's fast path already counts itself in flight
        if counted:
            self.inflight += 1
        try:
            if first is not None:  # the caller's send, past its RTO (or its upstream came back)
                send, rto, expired = first
                upstream = order[0]
                sends = 1
                started = send[3]
                asked[upstream.label] = started
                last = watch(upstream, started, rto, upstream.receive(loop, send), send[0])
                if expired:
                    last.late = True
                    late.add(upstream.label)
                    self._back_off(upstream.label, rto)
                cursor = 1
                next_at, prompt = clock.monotonic(), not expired
            while True:
                now = clock.monotonic()
                if now >= deadline:
                    break
                upstream = candidate()
                if upstream is not None and now >= next_at:
                    if not prompt and last is not None:  # the timer, not a failure, sends this one
                        if upstream is last.upstream:
                            self.retransmits += 1
                        elif not last.late:
                            self.hedges += 1
                    prompt = False
                    cursor = order.index(upstream) + 1
                    launch(upstream, now)
                    nxt = candidate()
                    if hedging and nxt is not None and nxt is not upstream:
                        # Ask the next upstream too if this one is slower than usual.
                        h = self.health[upstream.label]
                        next_at = min(next_at, now + upstream_policy.hedge_delay(h, o.hedge_after, o.attempt_timeout))
                    continue
                if not pending:
                    if upstream is None:
                        break
                    next_at, prompt = now, True
                    continue
                wake = deadline if upstream is None else min(deadline, next_at)
                if comeback is None and any(not self.health[label].up for label in asked):
                    comeback = self._comeback_future()
                waiting = [*pending] if comeback is None else [*pending, comeback]
                waiting.append(alarm := loop.create_future())
                timer = clock.call_at(wake, lambda alarm=alarm: alarm.done() or alarm.set_result(None))
                try:
                    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    timer.cancel()
                    alarm.cancel()
                done.discard(alarm)
                now = clock.monotonic()
                if comeback is not None and comeback in done:  # an upstream is back: send at once
                    done.discard(comeback)
                    comeback = None
                    next_at, prompt = now, True
                for task in done:
                    send = pending.pop(task)
                    label = send.upstream.label
                    try:
                        reply = task.result()
                    except UpstreamError as e:
                        failed[label] = (e.reason, now)
                        finished.add(label)
                        last_error = e
                        next_at, prompt = now, True  # the next upstream at once
                        continue
                    rtt = now - send.started
                    self.latency[label].observe(rtt)
                    rcode = reply[3] & 0x0F
                    if rcode == wire.NOERROR or rcode == _NXDOMAIN:
                        winner = (send, reply, rtt)
                        break
                    finished.add(label)
                    about_question = _ABOUT_THE_QUESTION.get(rcode)
                    if about_question is not None:
                        self.errors[(label, about_question)] += 1
                        failed.pop(label, None)
                        asked.pop(label, None)  # alive: no health verdict from this exchange
                        last_error = UpstreamServfail(about_question, f"{label} answered rcode {rcode}")
                    else:
                        reason = _FAILURE_RCODES.get(rcode, "rcode")
                        failed[label] = (reason, now)
                        last_error = UpstreamServfail(reason, f"{label} answered rcode {rcode}")
                    next_at, prompt = now, True
                if winner is not None:
                    break
                for send in pending.values():
                    if not send.late and now >= send.started + send.rto:
                        send.late = True
                        late.add(send.upstream.label)
                        self._back_off(send.upstream.label, send.rto)
        finally:
            if counted:
                self.inflight -= 1
            for task in pending:
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: a loser's failure is not worth a log line
        now = clock.monotonic()
        won = winner[0].upstream.label if winner is not None else None
        for label, first_sent in asked.items():
            if label == won:
                continue
            upstream = self._by_label[label]
            if label in failed:
                reason, when = failed[label]
                self._failed(upstream, reason, when, first_sent, question)
            elif label in late or winner is None:
                # Silent until the end, or still silent past its RTO when another answered.
                self._failed(upstream, "timeout", now, first_sent, question)
        if winner is not None:
            send, reply, rtt = winner
            upstream = send.upstream
            self._won(upstream, rtt, send.late)
            if not getattr(upstream, "udp", False):  # a stream: already complete and scrubbed
                return reply, upstream
            if reply[2] & 0x02:  # TC=1
                reply = await self._over_tcp(upstream, reply, question, cd, do, deadline)
            return upstream.scrub(reply, question), upstream
        if now >= deadline or last_error is None:
            raise UpstreamTimeout("no reply from any upstream in time")
        raise last_error

    def _failed(self, upstream: Upstream, reason: str, now: float, started: float | None = None,
                question: bytes | None = None) -> None:
        self.errors[(upstream.label, reason)] += 1
        if question is not None:
            self.failed_question = question
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
            if self._comeback is not None and not self._comeback.done():
                self._comeback.set_result(None)  # exchanges sent into the outage send again
            self._comeback = None
            h.recovered_at = self.clock.monotonic()
            h.loss, h.sends = 0.0, 0  # what it lost was the outage (down/up): measure it afresh
        h.failures = 0
        h.backoff = 0.0
        h.down_until = 0.0
        h.up = True

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

    def known_slow(self, threshold: float, qname: bytes | None = None) -> bool:
        """True when every upstream that is up has a measured smoothed RTT above
        ``threshold``: whichever is asked, its reply is expected late
        (``stale.slow_upstream``).  An upstream not yet measured is not slow."""
        slow = False
        for h in self.health.values():
            if h.up:
                if h.samples == 0 or h.srtt <= threshold:
                    return False
                slow = True
        return slow

    def known_lossy(self, threshold: float, qname: bytes | None = None) -> bool:
        """True when every upstream that is up loses (or answers past its RTO) at least
        ``threshold`` of its recent sends: a refresh then often waits an RTO or more
        (``stale.lossy_upstream``).  An upstream with fewer than LOSS_MIN_SENDS sends
        seen is not lossy.  The estimate moves only with our own sends' fate."""
        lossy = False
        for h in self.health.values():
            if h.up:
                if h.sends < upstream_policy.LOSS_MIN_SENDS or h.loss < threshold:
                    return False
                lossy = True
        return lossy

    async def probe(self, upstream: Upstream, question: bytes, deadline: float) -> bool | None:
        """One background health check of ``upstream``: True if it answered usefully
        (NOERROR/NXDOMAIN: it resolves names again) and is now marked up; None if it
        is reachable but the reply is about the question (REFUSED, FORMERR, NOTIMP:
        e.g. an authoritative-only server asked ". NS"), which proves nothing about
        other names (the prober decides, upstream/probe.py); False if it failed.

        A failed probe leaves the client-side back-off alone (the upstream is already
        down) and is counted only under ``probes``, so that probing a dead upstream
        does not inflate its per-query error figures.
        """
        started = self.clock.monotonic()
        try:
            reply = await upstream.exchange(question, False, False, deadline)
        except UpstreamError:
            self.probes[(upstream.label, "fail")] += 1
            return False
        rcode = reply[3] & 0x0F
        if rcode in _ABOUT_THE_QUESTION:
            self.probes[(upstream.label, "reachable")] += 1
            return None
        if rcode not in (wire.NOERROR, wire.NXDOMAIN):
            self.probes[(upstream.label, "fail")] += 1
            return False
        self.probes[(upstream.label, "ok")] += 1
        o = self.options
        upstream_policy.observe(self.health[upstream.label], self.clock.monotonic() - started,
                                o.attempt_timeout_min, o.attempt_timeout_max)
        self._succeeded(upstream)
        return True

    def mark_up(self, upstream: Upstream) -> None:
        """The prober's verdict that a down upstream answers again (upstream/probe.py)."""
        self._succeeded(upstream)
