"""The fleet tier's counters (``fleet.py``), apart from the redis client so the metrics
collector can show them without importing redis when the tier is off."""

from __future__ import annotations

from ..stats import Histogram

# Read latency buckets (seconds): a same-zone Redis answers in well under a millisecond;
# the top buckets show a read cut off at the budget.
READ_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
REJECT_REASONS = ("mac", "malformed")  # metric label values (fleet_record.FleetRecordError.reason)


class FleetStats:
    """Plain counters, read by the metrics collector at scrape time."""

    __slots__ = ("reads", "hits", "misses", "rejected", "timeouts", "errors", "skipped", "queued",
                 "writes", "dropped", "write_errors", "read_latency")

    def __init__(self):
        self.reads = 0  # reads sent to Redis
        self.hits = 0  # reads that found a usable entry
        self.misses = 0  # reads that found nothing usable (absent, past its stale limit, refused)
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)  # values refused, by reason: never served
        self.timeouts = 0  # reads and write batches cut off by their budget
        self.errors = 0  # reads and write batches that failed (connection refused, reset, ...)
        self.skipped = 0  # misses that did not ask the fleet: the breaker was open
        self.queued = 0  # entries put on the write queue
        self.writes = 0  # entries written (SET) or deleted
        self.dropped = 0  # entries not written: queue full, breaker open, or the batch failed
        self.write_errors = 0  # write batches that failed or timed out
        self.read_latency = Histogram(READ_BUCKETS)
