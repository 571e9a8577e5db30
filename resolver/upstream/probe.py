"""Background probes that notice an upstream's recovery without client traffic.

The pool marks an upstream down after ``max_failures`` consecutive failures and,
from then on, client queries skip it (and, once every upstream is down, stale
answers go out at once).  Nothing client-driven would then ever find out that it
came back, or only after a back-off that grows to ``backoff_max``.  So while an
upstream is down, this module sends it one small query every ``probe_interval``
seconds, doubling up to ``probe_interval_max``: a dead upstream costs at most one
query per interval, and a recovery is seen within about an interval plus a round
trip.  A useful reply marks it up, which bumps the pool's epoch so names held by
the failure recheck timer are refreshed on their next query (fresh data within
about a second of recovery).

What to ask: the question that last failed in this pool (``pool.failed_question``
— a name the group is serving stale right now), else ``probe_name`` NS.  The root
NS question alone is not enough: an authoritative-only upstream (a corporate
server, a Kubernetes zone's server, NSD, knot) answers it REFUSED forever.  The
verdicts:

* NOERROR or NXDOMAIN: the upstream resolves names again → up.
* SERVFAIL (or another failure rcode), silence, ICMP: still down.  An upstream
  that SERVFAILs everything stays down.
* REFUSED / FORMERR / NOTIMP: reachable, but the reply is about the question, so
  the next probe asks the other question; when both questions (or the only one)
  got such replies the upstream is marked up: it is answering, and real queries
  judge it from there (a reply about the client's question never marks it down
  again, so a REFUSED to ". NS" cannot keep it down forever).

One probe loop per down upstream; the loop ends when the upstream is up again,
from a probe or from client traffic.
"""

from __future__ import annotations

import asyncio
import logging

from .. import wire
from ..clock import sleep_until
from ..config import UpstreamOptions
from .plain import Upstream
from .pool import UpstreamPool

log = logging.getLogger("resolver.health")

_MAX_IN_FLIGHT = 4  # probes outstanding per upstream (each bounded by attempt_timeout)


def probe_question(name: str) -> bytes:
    """The wire question ``name IN NS`` (root by default: every recursive resolver answers it)."""
    return wire.question_bytes(wire.name_to_wire(name), wire.TYPE_NS)


class Prober:
    """Runs a probe loop for each upstream a pool reports down (``pool.on_down``)."""

    def __init__(self, options: UpstreamOptions):
        self.options = options
        self.question = probe_question(options.probe_name)  # the fallback question
        self.tasks: dict[tuple[int, str], asyncio.Task] = {}
        self.closed = False

    def attach(self, pool: UpstreamPool) -> None:
        pool.on_down = self.watch

    def watch(self, pool: UpstreamPool, upstream: Upstream) -> None:
        """Start probing ``upstream`` (no-op if already probing it).  Called from the loop."""
        key = (id(pool), upstream.label)
        if self.closed or key in self.tasks:
            return
        task = asyncio.get_running_loop().create_task(self._probe_loop(pool, upstream))
        self.tasks[key] = task
        task.add_done_callback(lambda t, key=key: self.tasks.pop(key, None))

    async def _probe_loop(self, pool: UpstreamPool, upstream: Upstream) -> None:
        """Send a probe every interval until the upstream is up.

        Probes are not awaited before the next one is sent: into a blackhole each
        would take attempt_timeout to fail, and a recovery would then be noticed
        up to attempt_timeout + interval late.  So a probe goes out on schedule
        (at most ``_MAX_IN_FLIGHT`` outstanding), and the first good reply ends it.
        """
        loop = asyncio.get_running_loop()
        health = pool.health[upstream.label]
        interval = self.options.probe_interval
        in_flight: set[asyncio.Task] = set()
        inconclusive: set[bytes] = set()  # questions answered REFUSED/FORMERR/NOTIMP
        sent = 0

        def judged(task: asyncio.Task, question: bytes) -> None:
            in_flight.discard(task)
            if task.cancelled() or task.exception() is not None or task.result() is not None:
                return
            inconclusive.add(question)  # reachable; is every question we have inconclusive?
            if not health.up and inconclusive >= set(self._questions(pool)):
                pool.mark_up(upstream)

        clock = pool.clock  # probe intervals and deadlines on the pool's clock
        try:
            while not health.up:
                await sleep_until(clock, clock.monotonic() + interval)
                if health.up:  # a probe or client traffic got a good answer meanwhile
                    return
                if len(in_flight) < _MAX_IN_FLIGHT:
                    # Alternate between the questions not yet answered inconclusively, so a
                    # name that fails on its own (a broken zone) cannot hide a recovery.
                    questions = [q for q in self._questions(pool) if q not in inconclusive] or [self.question]
                    question = questions[sent % len(questions)]
                    sent += 1
                    deadline = clock.monotonic() + self.options.attempt_timeout
                    task = loop.create_task(pool.probe(upstream, question, deadline))
                    in_flight.add(task)
                    task.add_done_callback(lambda t, q=question: judged(t, q))
                interval = min(interval * 2, self.options.probe_interval_max)
        except asyncio.CancelledError:
            raise
        except Exception:  # background task boundary: log, and let client traffic take over
            log.exception("health probe of %s failed", upstream.label)
        finally:
            for task in in_flight:
                task.cancel()

    def _questions(self, pool: UpstreamPool) -> tuple[bytes, ...]:
        """What to ask, best first: the question that last failed, then ``probe_name`` NS."""
        failed = pool.failed_question
        if failed is None or failed == self.question:
            return (self.question,)
        return (failed, self.question)

    async def close(self) -> None:
        self.closed = True
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
