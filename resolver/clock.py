"""The one injectable time source: TTLs, deadlines, retransmission timers and back-off.

Every part that reads time or waits for it gets a ``Clock`` from the composition root
(``app.py``), so tests move time by hand instead of sleeping (house rule 2):

- ``monotonic()`` for TTLs, deadlines and back-off (immune to wall-clock steps);
- ``wall()`` for what must survive a restart (cache snapshots, the host tier);
- ``call_at(when, callback)`` runs a callback at monotonic time ``when`` (a timer
  handle with ``cancel()``), and ``sleep_until`` / ``wait_until`` build on it: the
  client-timeout race, an exchange's deadline and its RTO, probe intervals.

``SystemClock`` is CLOCK_MONOTONIC, the clock the event loop's own timers use (asyncio
and uvloop alike), so in production a timer costs what ``loop.call_later`` costs.
``FakeClock`` moves only when told to: its timers fire when ``advance()`` passes
them, so the client-timeout race and back-off are tested without real waits.  For
tests on real sockets (a real upstream takes real time), ``FakeClock(flowing=True)``
runs in real time and ``advance()`` jumps ahead of it — TTLs expire and due timers
fire at once, without sleeping.

Latency histograms use ``time.perf_counter``: a measurement, not a decision.  The
socket housekeeping of the listeners (TCP idle timeouts, the shutdown grace) and the
periodic file checks (snapshot interval, hosts file) use the loop's timers directly:
the same CLOCK_MONOTONIC in production, and nothing a test needs to move.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from typing import Any, Callable


class Clock:
    def monotonic(self) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def wall(self) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def call_at(self, when: float, callback: Callable[[], Any]):  # pragma: no cover - interface
        """Run ``callback`` in the running loop at monotonic time ``when``; returns a
        handle with ``cancel()``."""
        raise NotImplementedError


class SystemClock(Clock):
    # Bound methods of the time module: one attribute lookup on the hot path.
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    @staticmethod
    def call_at(when: float, callback: Callable[[], Any]) -> asyncio.TimerHandle:
        # Relative to time.monotonic, not passed to loop.call_at: uvloop's loop.time()
        # is CLOCK_MONOTONIC too, but truncated to milliseconds and cached per
        # iteration; a delay is right whatever the loop's base.
        return asyncio.get_running_loop().call_later(when - time.monotonic(), callback)


# Stateless: the default of the I/O parts that a test may build without an App.
SYSTEM_CLOCK = SystemClock()


class _FakeTimer:
    """A FakeClock timer: fired by ``advance()`` (or, flowing, by the loop in real time)."""

    __slots__ = ("when", "callback", "loop", "handle", "done")

    def __init__(self, when: float, callback: Callable[[], Any], loop: asyncio.AbstractEventLoop):
        self.when = when
        self.callback = callback
        self.loop = loop
        self.handle: asyncio.TimerHandle | None = None
        self.done = False

    def cancel(self) -> None:
        self.done = True
        if self.handle is not None:
            self.handle.cancel()

    def fire(self) -> None:  # in the loop's thread
        if not self.done:
            self.done = True
            if self.handle is not None:
                self.handle.cancel()
            self.callback()


class FakeClock(Clock):
    """A clock that moves only when told to; used by unit, component and in-process tests.

    ``flowing=True``: real time plus every ``advance()`` so far (for tests whose
    upstreams are real servers on real sockets).  Thread-safe: tests advance it from
    their own thread while the forwarder's loop runs in another.
    """

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0, flowing: bool = False):
        self._mono = start
        self._wall = wall_start
        self._flowing_since = time.monotonic() if flowing else None
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._order = itertools.count()
        self._lock = threading.Lock()

    def _elapsed(self) -> float:
        return 0.0 if self._flowing_since is None else time.monotonic() - self._flowing_since

    def monotonic(self) -> float:
        return self._mono + self._elapsed()

    def wall(self) -> float:
        return self._wall + self._elapsed()

    def call_at(self, when: float, callback: Callable[[], Any]) -> _FakeTimer:
        loop = asyncio.get_running_loop()
        timer = _FakeTimer(when, callback, loop)
        with self._lock:
            if len(self._timers) > 4096:  # flowing: timers fired in real time stay here
                self._timers = [t for t in self._timers if not t[2].done]
                heapq.heapify(self._timers)
            heapq.heappush(self._timers, (when, next(self._order), timer))
        if self._flowing_since is not None:
            timer.handle = loop.call_later(max(0.0, when - self.monotonic()), timer.fire)
        elif when <= self._mono:
            loop.call_soon(timer.fire)
        return timer

    def advance(self, seconds: float) -> None:
        """Move time on; timers now due fire (in their loop, in deadline order)."""
        with self._lock:
            self._mono += seconds
            self._wall += seconds
            now = self.monotonic()
            due = []
            while self._timers and self._timers[0][0] <= now:
                due.append(heapq.heappop(self._timers)[2])
        for timer in due:
            if not timer.done and not timer.loop.is_closed():
                timer.loop.call_soon_threadsafe(timer.fire)

    def next_due(self) -> float | None:
        """When the earliest timer still set is due (None: nothing waits on this clock)."""
        with self._lock:
            while self._timers and self._timers[0][2].done:
                heapq.heappop(self._timers)
            return self._timers[0][0] if self._timers else None

    def pending(self) -> int:
        """Timers set and not yet fired or cancelled (tests: "is anything waiting on time?")."""
        with self._lock:
            return sum(1 for *_, t in self._timers if not t.done)


async def sleep_until(clock: Clock, when: float) -> None:
    """``asyncio.sleep`` on ``clock``: return once its time reaches ``when``."""
    waiter = asyncio.get_running_loop().create_future()
    timer = clock.call_at(when, lambda: waiter.done() or waiter.set_result(None))
    try:
        await waiter
    finally:
        timer.cancel()


class timeout_at:
    """``asyncio.timeout_at`` on ``clock``: cancels the task at ``when`` and turns that
    cancellation (told apart from an outside one) into TimeoutError on the way out.

        async with timeout_at(clock, deadline):
            reply = await ...
    """

    __slots__ = ("clock", "when", "task", "timer", "fired")

    def __init__(self, clock: Clock, when: float):
        self.clock = clock
        self.when = when
        self.fired = False

    async def __aenter__(self) -> "timeout_at":
        self.task = asyncio.current_task()
        self.timer = self.clock.call_at(self.when, self._expire)
        return self

    def _expire(self) -> None:
        self.fired = True
        self.task.cancel()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self.timer.cancel()
        if self.fired and exc_type is asyncio.CancelledError and self.task.uncancel() == 0:
            raise TimeoutError from exc
        return None
