"""Plain counters bumped on the hot path and read by the metrics collector at scrape time.

An attribute increment on a slotted object costs tens of nanoseconds and takes no
lock; prometheus_client's own Counter.inc() takes a lock per call.  So the query
path only touches this object, and ``metrics.py`` turns it into Prometheus
families when Prometheus asks.  Label values come from fixed sets (below).

The cache-hit path does not even touch this object: it bumps one cell of a
``HitTally`` that the cache entry points at (see ``HitTally``), so a hit is
counted by query type, rcode and source with one attribute increment on a shared cell.
"""

from __future__ import annotations

import bisect
from collections import Counter

# Fixed label sets, so a hostile client cannot create unbounded series.
STALE_REASONS = ("timeout", "servfail", "refused", "rcode", "unreachable", "bad_response", "recheck", "error",
                 "upstreams_down", "answer_first", "slow_upstream", "lossy_upstream", "last_known_good", "client_limit", "overload")
# Caps that, when reached, answer from what we have instead of starting upstream work
# (serve/limits.py), and how such a query was answered.
LIMITS = ("max_inflight", "max_inflight_per_client")
LIMITED_ANSWERS = ("cache", "stale", "local", "servfail")
# TCP connection caps under which the oldest idle connection is closed for a new one.
TCP_LIMITS = ("tcp_max_connections", "tcp_max_connections_per_client")
SOURCES = ("cache", "stale", "upstream", "local", "fleet")
TRANSPORTS = ("udp", "tcp")
# Query types by name: the common ones; every other type is counted as "other".
QTYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
               33: "SRV", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 255: "ANY", 257: "CAA"}
QTYPES = (*QTYPE_NAMES.values(), "other")
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 16: "BADVERS"}
RCODES = (*RCODE_NAMES.values(), "other")

# Request duration buckets (seconds): from "answered within the datagram callback"
# up to past upstream.total_timeout's default (4 s).
DURATION_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
# Upstream exchange latency buckets (seconds).
UPSTREAM_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)


def qtype_label(qtype: int) -> str:
    return QTYPE_NAMES.get(qtype, "other")


def rcode_label(rcode: int) -> str:
    return RCODE_NAMES.get(rcode, "other")


class Histogram:
    """A lock-free histogram (one event loop thread): counts per bucket plus a sum.

    ``counts[i]`` counts observations <= ``bounds[i]`` and above the previous
    bound; the last slot is +Inf.  The collector makes them cumulative.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class Cell:
    """Two counters on a slotted object: ``cell.fresh += 1`` is the same bytecode as
    the ``stats.cache_hits += 1`` it replaced (measured: a list item increment is slower)."""

    __slots__ = ("fresh", "stale")

    def __init__(self):
        self.fresh = 0  # fresh answers from the hit path
        self.stale = 0  # stale answers from the hit path (failure recheck timer)


class HitTally:
    """Hit counters shared by cache entries: one cell per (query type, rcode).

    ``Cache.put`` gives every entry the cell for its query type and rcode, so the
    hit path counts a fresh hit with ``entry.tally.fresh += 1`` and a stale answer
    under the failure recheck timer with ``entry.tally.stale += 1`` — no lookup, no
    lock — and the count survives the entry's eviction (the cell is shared, not
    per entry).  The number of cells is bounded by the fixed label sets.
    """

    __slots__ = ("cells", "_by_wire")

    def __init__(self):
        self.cells: dict[tuple[str, str], Cell] = {}
        self._by_wire: dict[tuple[bytes, int], Cell] = {}  # (qtype bytes, rcode) → cell: one lookup per put

    def cell(self, key: bytes, rcode: int) -> Cell:
        """The cell for a cache key (its last four bytes are qtype and qclass)."""
        memo = (key[-4:-2], rcode)
        cell = self._by_wire.get(memo)
        if cell is None:
            cell = self._cell(key, rcode)
            if len(self._by_wire) < 1024:  # bounded whatever query types clients invent
                self._by_wire[memo] = cell
        return cell

    def _cell(self, key: bytes, rcode: int) -> Cell:
        qtype = (key[-4] << 8 | key[-3]) if len(key) >= 4 else -1
        label = (qtype_label(qtype), rcode_label(rcode))
        cell = self.cells.get(label)
        if cell is None:
            cell = self.cells[label] = Cell()
        return cell

    def fresh_hits(self) -> int:
        return sum(c.fresh for c in self.cells.values())

    def stale_hits(self) -> int:
        return sum(c.stale for c in self.cells.values())


class Stats:
    __slots__ = (
        "queries_udp", "queries_tcp",
        "cache_hits", "cache_misses", "stale_answers",
        "coalesced", "dropped_overload", "dropped_malformed", "formerr",
        "responses_by_rcode", "responses_by_source", "servfail_upstream",
        "tcp_connections", "tcp_refused", "internal_errors",
        "queries_by_type", "tally", "durations",
        # security: resolver/serve/acl.py, limits.py, ratelimit.py
        "acl_refused_udp", "acl_refused_tcp", "limited", "tcp_refused_client_limit", "tcp_idle_closed",
        "tcp_closed_slow", "rate_limited_dropped", "rate_limited_slipped",
        "prefetches", "answers_vanished", "lkg_answers",
    )

    def __init__(self):
        self.queries_udp = 0
        self.queries_tcp = 0
        self.cache_hits = 0          # fresh answers from cache on the slow path (hit path: ``tally``)
        self.cache_misses = 0        # queries that needed an upstream fetch (incl. coalesced)
        self.stale_answers: Counter = Counter()   # reason -> count (slow path; recheck hits also in ``tally``)
        self.coalesced = 0           # misses that joined an upstream query already in flight
        self.dropped_overload = 0    # misses dropped while shutting down (a successor takes new ones)
        self.dropped_malformed = 0   # datagrams without a readable header, or QR=1
        self.formerr = 0             # FORMERR / NOTIMP / BADVERS answers to bad queries
        self.responses_by_rcode: Counter = Counter()   # rcode int -> count (slow path; hit path in ``tally``)
        self.responses_by_source: Counter = Counter()  # source -> count
        self.servfail_upstream = 0   # SERVFAIL sent because no upstream answered and nothing stale was cached
        self.tcp_connections = 0
        self.tcp_refused = 0         # connections closed at once: over tcp_max_connections, none idle
        self.internal_errors = 0     # bugs caught at the listener boundary (→ SERVFAIL)
        self.queries_by_type: Counter = Counter()      # qtype label -> parsed queries (slow path)
        self.tally = HitTally()      # hit-path answers by (qtype, rcode): shared with the cache
        # Slow-path request durations by source; hit-path answers are added at scrape.
        self.durations = {source: Histogram(DURATION_BUCKETS) for source in SOURCES}
        self.acl_refused_udp = 0     # datagrams from clients outside security.allow
        self.acl_refused_tcp = 0     # TCP connections from clients outside security.allow
        # (limit, answer) -> queries answered without new upstream work because a cap was
        # reached (server.max_inflight, security.max_inflight_per_client): LIMITS × LIMITED_ANSWERS
        self.limited: Counter = Counter()
        self.tcp_refused_client_limit = 0   # connections closed: client over its connection cap, none idle
        self.tcp_idle_closed: Counter = Counter()  # TCP_LIMITS -> idle connections closed for a new one
        self.tcp_closed_slow = 0     # connections closed: message trickled past tcp_read_timeout,
                                     # or replies piling up unread
        self.rate_limited_dropped = 0  # UDP responses not sent: client over security.rate_limit
        self.rate_limited_slipped = 0  # ... sent as an empty TC=1 reply instead (slip)
        self.prefetches = 0          # background refreshes of entries asked in the last part of their TTL
        self.answers_vanished = 0    # a name with cached positive records answered NXDOMAIN/NODATA
        self.lkg_answers: Counter = Counter()  # "enforce" | "shadow" -> last-known-good decisions

