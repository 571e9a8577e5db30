"""Plain counters bumped on the hot path and read by the metrics collector at scrape time.

An attribute increment on a slotted object costs tens of nanoseconds and takes no
lock; prometheus_client's own Counter.inc() takes a lock per call.  So the query
path only touches this object, and ``metrics.py`` turns it into Prometheus
families when Prometheus asks.  Label values come from fixed sets (below).
"""

from __future__ import annotations

from collections import Counter

# Fixed label sets, so a hostile client cannot create unbounded series.
STALE_REASONS = ("timeout", "servfail", "refused", "rcode", "unreachable", "bad_response", "recheck", "error",
                 "upstreams_down", "answer_first", "last_known_good")
SOURCES = ("cache", "stale", "upstream", "local")
TRANSPORTS = ("udp", "tcp")


class Stats:
    __slots__ = (
        "queries_udp", "queries_tcp",
        "cache_hits", "cache_misses", "stale_answers",
        "coalesced", "dropped_overload", "dropped_malformed", "formerr",
        "responses_by_rcode", "responses_by_source", "servfail_upstream",
        "tcp_connections", "tcp_refused", "internal_errors",
        "prefetches", "answers_vanished", "lkg_answers",
    )

    def __init__(self):
        self.queries_udp = 0
        self.queries_tcp = 0
        self.cache_hits = 0          # fresh answers from cache (fast and slow path)
        self.cache_misses = 0        # queries that needed an upstream fetch (incl. coalesced)
        self.stale_answers: Counter = Counter()   # reason -> count
        self.coalesced = 0           # misses that joined an upstream query already in flight
        self.dropped_overload = 0    # misses dropped because max_inflight was reached
        self.dropped_malformed = 0   # datagrams without a readable header, or QR=1
        self.formerr = 0             # FORMERR / NOTIMP / BADVERS answers to bad queries
        self.responses_by_rcode: Counter = Counter()   # rcode int -> count (slow path; fast path folded in at scrape)
        self.responses_by_source: Counter = Counter()  # source -> count
        self.servfail_upstream = 0   # SERVFAIL sent because no upstream answered and nothing stale was cached
        self.tcp_connections = 0
        self.tcp_refused = 0         # connections closed at once: over tcp_max_connections
        self.internal_errors = 0     # bugs caught at the listener boundary (→ SERVFAIL)
        self.prefetches = 0          # background refreshes of entries asked in the last part of their TTL
        self.answers_vanished = 0    # a name with cached positive records answered NXDOMAIN/NODATA
        self.lkg_answers: Counter = Counter()  # "enforce" | "shadow" -> last-known-good decisions
