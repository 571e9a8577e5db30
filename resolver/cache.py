"""The answer cache: prepared wire answers with absolute deadlines.  Mechanism, no policy.

Each entry stores the deadlines that matter, computed once at insert (as Unbound's
``reply_info`` does): ``fresh_until`` (DNS expiry), ``stale_until`` (RFC 8767 max
stale timer) and ``recheck_until`` (RFC 8767 failure recheck timer, set by the
pipeline after a failed refresh).  Entries live until ``stale_until``, not until
DNS expiry, so that an outage finds them.  Whether an expired entry may be served
is decided in ``stale.py``; this module only reports what it holds.

Recency is tracked at one-second granularity: an entry moves to the young end of
the LRU when it is touched in a new second (``Entry.aged_sec`` changes), which
keeps the per-hit cost to a dict lookup.  Eviction takes the oldest entries first.
"""

from __future__ import annotations

from collections import OrderedDict

from . import wire

FRESH, STALE, MISS = "fresh", "stale", "miss"


class Entry:
    """One cached answer.  Slots keep it small: a million of these must fit in RAM."""

    __slots__ = (
        "kind", "rcode", "hdr", "hdr_opt", "body", "ttl_offsets",
        "stored_at", "fresh_until", "stale_until", "recheck_until",
        "aged_sec", "aged", "stale_body",
        "recheck_epoch", "prefetch_after", "lkg_text",
    )

    def __init__(self, prepared: wire.Prepared, now: float, max_stale: float):
        self.kind = prepared.kind
        self.rcode = prepared.rcode
        self.hdr = prepared.hdr
        self.hdr_opt = prepared.hdr_opt
        self.body = prepared.body
        self.ttl_offsets = prepared.ttl_offsets
        self.stored_at = now
        self.fresh_until = now + prepared.ttl
        self.stale_until = self.fresh_until + max_stale
        self.recheck_until = 0.0
        self.aged_sec = -1
        self.aged = prepared.body
        self.stale_body = None
        self.recheck_epoch = 0  # the upstream pool's epoch when recheck_until was set
        self.prefetch_after = self.fresh_until  # set by the pipeline (cache.prefetch); never by default
        self.lkg_text = None  # EDE extra text while held by last-known-good (answered by the slow path)

    def aged_body(self, sec: int) -> bytes:
        """The body with TTLs aged to second ``sec``; computed once per second."""
        if sec == self.aged_sec:
            return self.aged
        self.aged = wire.age_body(self.body, self.ttl_offsets, int(sec - self.stored_at))
        self.aged_sec = sec
        return self.aged

    def stale_answer_body(self, answer_ttl: int) -> bytes:
        """The body with every TTL set to the stale answer TTL (RFC 8767 §4)."""
        body = self.stale_body
        if body is None:
            body = self.stale_body = wire.fixed_ttl_body(self.body, self.ttl_offsets, answer_ttl)
        return body

    def ttl_left(self, now: float) -> float:
        return self.fresh_until - now


class Cache:
    """A bounded LRU map from cache key (the lower-cased question) to `Entry`.

    ``entries`` is exposed so the hit path can do a single ``dict.get``; everything
    else goes through methods.
    """

    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.evictions = 0
        # Identical header/offset tuples are shared between entries: most A/AAAA
        # answers have the same 10 header bytes, which saves ~100 bytes per entry.
        self._interned: dict = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: bytes) -> Entry | None:
        return self.entries.get(key)

    def lookup(self, key: bytes, now: float) -> tuple[str, Entry | None]:
        """FRESH, STALE (expired but within its stale window) or MISS."""
        entry = self.entries.get(key)
        if entry is None:
            return MISS, None
        if now < entry.fresh_until:
            return FRESH, entry
        if now < entry.stale_until:
            return STALE, entry
        del self.entries[key]
        return MISS, None

    def touch(self, key: bytes) -> None:
        try:
            self.entries.move_to_end(key)
        except KeyError:
            pass

    def put(self, key: bytes, prepared: wire.Prepared, now: float, max_stale: float) -> Entry:
        intern = self._interned
        if len(intern) > 4096:
            intern.clear()
        prepared.hdr = intern.setdefault(prepared.hdr, prepared.hdr)
        prepared.hdr_opt = intern.setdefault(prepared.hdr_opt, prepared.hdr_opt)
        prepared.ttl_offsets = intern.setdefault(prepared.ttl_offsets, prepared.ttl_offsets)
        entry = Entry(prepared, now, max_stale)
        entries = self.entries
        entries[key] = entry
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            self.evictions += 1
        return entry

    def remove(self, key: bytes) -> bool:
        return self.entries.pop(key, None) is not None

    def clear(self) -> None:
        self.entries.clear()

    def resize(self, max_entries: int) -> None:
        self.max_entries = max_entries
        while len(self.entries) > max_entries:
            self.entries.popitem(last=False)
            self.evictions += 1

    def sweep(self, now: float, budget: int = 10_000) -> int:
        """Drop up to ``budget`` entries past their stale window, oldest first.

        Called periodically so that dead entries do not hold memory until LRU
        pressure pushes them out.  Bounded work per call keeps the loop responsive.
        """
        dead = []
        for i, (key, entry) in enumerate(self.entries.items()):
            if i >= budget:
                break
            if now >= entry.stale_until:
                dead.append(key)
        for key in dead:
            del self.entries[key]
        return len(dead)

    def counts(self, now: float) -> tuple[int, int]:
        """(fresh, stale) entry counts; O(n), for scrapes only."""
        fresh = 0
        for entry in self.entries.values():
            if now < entry.fresh_until:
                fresh += 1
        return fresh, len(self.entries) - fresh
