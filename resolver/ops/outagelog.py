"""Log lines for the start and end of each "serving stale" episode, rate-limited.

An operator reading the log during an incident wants three lines, not a million:
"serving stale answers (upstreams failing: …)", a periodic "still serving stale:
N answers in the last T s", and "stopped serving stale after T s, N answers".
This is driven by a periodic ``tick`` from the app (every sweep interval), which
compares the stale-answer counters with the previous tick: no work at all on the
query path, and at most one line per ``report_every`` seconds while it lasts.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable

from ..stats import Stats
from ..upstream.pool import UpstreamPool

log = logging.getLogger("resolver.stale")


class StaleEpisodes:
    def __init__(self, stats: Stats, pool: Callable[[], UpstreamPool], now: Callable[[], float],
                 report_every: float = 60.0):
        self.stats = stats
        self.pool = pool  # a getter: a reload may replace the pool
        self.now = now
        self.report_every = report_every
        self.active = False
        self.started = 0.0
        self.total = 0          # stale answers in the current episode
        self.pending: Counter = Counter()  # reason -> answers since the last line
        self.last_report = 0.0
        self._seen = self._counts()

    def _counts(self) -> Counter:
        counts = Counter(self.stats.stale_answers)
        counts["recheck"] += self.stats.tally.stale_hits()
        return counts

    def _down(self) -> list[str]:
        return [label for label, h in self.pool().health.items() if not h.up]

    def tick(self) -> None:
        now = self.now()
        counts = self._counts()
        delta = counts - self._seen  # only positive differences
        self._seen = counts
        n = sum(delta.values())
        if n and not self.active:
            self.active, self.started, self.last_report, self.total = True, now, now, n
            self.pending = Counter()
            down = self._down()
            log.warning("serving stale answers: upstreams failing (%s); upstreams down: %s",
                        _reasons(delta), _listing(down),
                        extra={"event": "stale_started", "answers": n, "reasons": dict(delta),
                               "upstreams_down": down})
        elif n:
            self.total += n
            self.pending += delta
            if now - self.last_report >= self.report_every:
                down = self._down()
                log.warning("still serving stale: %d answers in the last %.0fs (%s); upstreams down: %s",
                            sum(self.pending.values()), now - self.last_report, _reasons(self.pending),
                            _listing(down),
                            extra={"event": "stale_continues", "answers": sum(self.pending.values()),
                                   "reasons": dict(self.pending), "upstreams_down": down})
                self.last_report, self.pending = now, Counter()
        elif self.active:
            self.active = False
            log.warning("stopped serving stale after %.0fs: %d stale answers in all", now - self.started, self.total,
                        extra={"event": "stale_stopped", "answers": self.total, "seconds": now - self.started})


def _listing(labels: list[str]) -> str:
    return ", ".join(labels) if labels else "none marked down"


def _reasons(counts: Counter) -> str:
    return ", ".join(f"{reason}={count}" for reason, count in sorted(counts.items()))
