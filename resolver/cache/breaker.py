"""A circuit breaker for a lower cache tier: stop asking a server that times out.  Sans-IO.

CoreDNS's forward plugin marks an upstream down after N failures and probes it
back (``plugin/pkg/proxy/health.go``); this is the same for the fleet tier's
Redis.  ``closed``: every request goes; ``failures`` timeouts or errors in a row
open it.  ``open``: nothing goes (a miss does not wait at all) until ``reset``
seconds have passed; then ``half_open``: one request goes as the probe — its
success closes the breaker, its failure opens it for another ``reset``.

Time comes in as ``now`` (monotonic seconds); no clock, no I/O.
"""

from __future__ import annotations

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)  # metric label values


class Breaker:
    __slots__ = ("failures", "reset", "state", "failed_in_row", "opened_at", "probing", "opened")

    def __init__(self, failures: int, reset: float):
        self.failures = failures  # in a row, to open
        self.reset = reset  # seconds open before a probe
        self.state = CLOSED
        self.failed_in_row = 0
        self.opened_at = 0.0
        self.probing = False  # the half-open probe is out
        self.opened = 0  # times it opened (a counter for metrics)

    def allow(self, now: float) -> bool:
        """May a request go now?  In ``half_open`` only one at a time (the probe)."""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            if now - self.opened_at < self.reset:
                return False
            self.state = HALF_OPEN
            self.probing = False
        if self.probing:
            return False
        self.probing = True
        return True

    def succeeded(self) -> None:
        self.failed_in_row = 0
        self.probing = False
        self.state = CLOSED

    def failed(self, now: float) -> None:
        self.failed_in_row += 1
        if self.state == HALF_OPEN or self.failed_in_row >= self.failures:
            if self.state != OPEN:
                self.opened += 1
            self.state = OPEN
            self.opened_at = now
            self.probing = False
