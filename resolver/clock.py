"""The injectable time source for cache deadlines, so tests can move time by hand.

TTL arithmetic uses ``monotonic()`` (immune to wall-clock steps); ``wall()`` is
for things that must survive a restart, such as cache snapshots and the host tier.
Deadlines of upstream exchanges and back-off still use the event loop's clock and
latency histograms ``time.perf_counter``: those are not injectable yet.
"""

import time


class Clock:
    def monotonic(self) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def wall(self) -> float:  # pragma: no cover - interface
        raise NotImplementedError


class SystemClock(Clock):
    # Bound methods of the time module: one attribute lookup on the hot path.
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)


class FakeClock(Clock):
    """A clock that moves only when told to; used by unit and component tests."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0):
        self._mono = start
        self._wall = wall_start

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += seconds
