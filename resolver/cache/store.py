"""The answer cache: prepared wire answers with absolute deadlines.  Mechanism, no policy.

Each entry stores the deadlines that matter, computed once at insert (as Unbound's
``reply_info`` does): ``fresh_until`` (DNS expiry), ``stale_until`` (RFC 8767 max
stale timer) and ``recheck_until`` (RFC 8767 failure recheck timer, set by the
pipeline after a failed refresh).  Entries live until ``stale_until``, not until
DNS expiry, so that an outage finds them.  Whether an expired entry may be served
is decided in ``policy/stale.py``; this module only reports what it holds.

Recency is tracked at one-second granularity: an entry moves to the young end of
the LRU when its aged copy is renewed (at most once per second, see
``Entry.aged_body``), which keeps the per-hit cost to a dict lookup.  Eviction
takes the oldest entries first.

Below this in-process level (L1) there may be a lower one (``lower``: the host
tier, ``host.py``, shared by every worker and the next process).  ``lookup`` —
the slow path's read; the hit path reads ``entries`` directly and never gets
here — consults it when L1 has nothing usable, and adopts what it finds with its
absolute deadlines, so the serve-stale rules apply to it exactly as to an entry
learnt here.  ``put`` hands every new entry to it (a queue append: the write is
batched off the loop).  This module does no I/O itself.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from .. import wire
from ..stats import Cell, HitTally

FRESH, STALE, MISS = "fresh", "stale", "miss"
# A lower tier's copy replaces an expired entry here only if its DNS expiry is this
# much later (seconds): wall-clock round trips blur deadlines by milliseconds.
LOWER_NEWER_BY = 1.0


class Entry:
    """One cached answer.  Slots keep it small: a million of these must fit in RAM."""

    __slots__ = (
        "kind", "rcode", "hdr", "hdr_opt", "body", "ttl_offsets",
        "stored_at", "fresh_until", "stale_until", "recheck_until",
        "aged_until", "aged", "stale_body", "tally",
        "recheck_epoch", "prefetch_after", "lkg_text",
    )

    def __init__(self, prepared: wire.Prepared, now: float, max_stale: float, tally: Cell | None = None):
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
        self.aged_until = now  # ``aged`` (the body as stored) holds until this instant
        self.aged = prepared.body
        self.stale_body = None
        self.tally = tally or Cell()  # hit counters; Cache.put passes a shared HitTally cell
        self.recheck_epoch = 0  # the upstream pool's epoch when recheck_until was set
        self.prefetch_after = self.fresh_until  # set by the pipeline (cache.prefetch); never by default
        self.lkg_text = None  # EDE extra text while held by last-known-good (answered by the slow path)

    def aged_body(self, now: float) -> bytes:
        """The body with TTLs aged for time ``now``; computed at most once per second.

        The age is the time cached rounded *up* to whole seconds, so a TTL never
        states more time left than there is (RFC 1035 §3.2.1: the TTL is the time
        the record may still be cached): 2.2 s after caching a TTL-300 answer the
        client sees 297, the whole seconds left.  The copy stays valid while
        ``now <= aged_until`` (the next whole second after storing), which is the
        one comparison the hit path makes.
        """
        if now <= self.aged_until:
            return self.aged
        age = math.ceil(now - self.stored_at)
        self.aged = wire.age_body(self.body, self.ttl_offsets, age)
        self.aged_until = self.stored_at + age
        return self.aged

    def stale_answer_body(self, answer_ttl: int) -> bytes:
        """The body with every TTL set to the stale answer TTL (RFC 8767 §4)."""
        body = self.stale_body
        if body is None:
            body = self.stale_body = wire.fixed_ttl_body(self.body, self.ttl_offsets, answer_ttl)
        return body


class Cache:
    """A bounded LRU map from cache key (the lower-cased question) to `Entry`.

    ``entries`` is exposed so the hit path can do a single ``dict.get``; everything
    else goes through methods.
    """

    def __init__(self, max_entries: int, tally: HitTally | None = None):
        self.max_entries = max_entries
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.evictions = 0
        self.tally = tally if tally is not None else HitTally()
        # Entries per whole second of expiry (ceil(fresh_until)), kept in step with
        # ``entries`` by every method below, so ``counts`` costs O(distinct expiry
        # seconds), not O(entries): a scrape of a million-entry cache stays cheap.
        self._expiry: dict[int, int] = {}
        # Identical header/offset tuples are shared between entries: most A/AAAA
        # answers have the same 10 header bytes, which saves ~100 bytes per entry.
        self._interned: dict = {}
        # The lower tier (``host.HostTier``) or None; set by the composition root.
        self.lower = None
        # The fleet tier (``fleet.FleetTier``, shared by every node) or None: written behind
        # from ``put``; read by the caching stage (async, raced against the upstream), not here.
        self.fleet = None
        self.misses = 0  # slow-path lookups that found nothing in this process (per-tier metrics)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: bytes) -> Entry | None:
        return self.entries.get(key)

    def lookup(self, key: bytes, now: float) -> tuple[str, Entry | None]:
        """FRESH, STALE (expired but within its stale window) or MISS.

        With a lower tier: on a miss here, or an entry past its DNS expiry (another
        worker may have refreshed it meanwhile), the lower tier's copy is adopted
        if it is fresher; the one extra read happens only off the hit path.
        """
        entry = self.entries.get(key)
        if entry is not None and now < entry.fresh_until:
            return FRESH, entry
        if entry is None:
            self.misses += 1
        elif now >= entry.stale_until:
            del self.entries[key]
            self._forget(entry)
            entry = None
        lower = self.lower
        if lower is not None:
            found = lower.fetch(key, now)
            # "Fresher" by more than the clock conversion's blur: our own copy read back
            # must not replace the entry here (it would drop its recheck timer).
            if found is not None and (entry is None or found.fresh_until > entry.fresh_until + LOWER_NEWER_BY):
                entry = self._adopt_from_lower(key, found)
        if entry is None:
            return MISS, None
        if now < entry.fresh_until:
            return FRESH, entry
        return STALE, entry

    def _adopt_from_lower(self, key: bytes, entry: Entry) -> Entry:
        """Take an entry found in the lower tier into L1, as the youngest, within ``max_entries``."""
        entries = self.entries
        old = entries.get(key)
        if old is not None:
            self._forget(old)
        self.adopt(key, entry)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            self._forget(entries.popitem(last=False)[1])
            self.evictions += 1
        return entry

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
        entry = Entry(prepared, now, max_stale, self.tally.cell(key, prepared.rcode))
        entries = self.entries
        old = entries.get(key)
        if old is not None:
            self._forget(old)
        entries[key] = entry
        entries.move_to_end(key)
        self._remember(entry)
        while len(entries) > self.max_entries:
            self._forget(entries.popitem(last=False)[1])
            self.evictions += 1
        if self.lower is not None:
            self.lower.enqueue(key, entry)  # written behind, batched (host.py)
        if self.fleet is not None:
            self.fleet.enqueue(key, entry)  # written behind, batched (fleet.py)
        return entry

    def adopt_lower(self, key: bytes, entry: Entry) -> Entry:
        """Take an entry read from a lower tier elsewhere (the fleet, by the caching stage) into
        L1 as the youngest, within ``max_entries``; it is not written back to any tier."""
        return self._adopt_from_lower(key, entry)

    def adopt(self, key: bytes, entry: Entry) -> None:
        """Insert an entry built elsewhere (a snapshot restore) with the bookkeeping
        ``put`` does: its hit-tally cell and the expiry counts.  No LRU eviction:
        the caller sizes what it restores."""
        entry.tally = self.tally.cell(key, entry.rcode)
        self.entries[key] = entry
        self._remember(entry)

    def remove(self, key: bytes) -> bool:
        """Drop ``key`` here and (if there is one) in the lower tier; True if it was held here."""
        if self.lower is not None:
            self.lower.forget(key)
        if self.fleet is not None:
            self.fleet.forget(key)
        entry = self.entries.pop(key, None)
        if entry is None:
            return False
        self._forget(entry)
        return True

    def remove_lower_where(self, match) -> None:
        """Drop every key with ``match(key)`` true from the lower tier (an operator's flush of a
        name's every type, or of a zone): keys this process never held are found there too."""
        if self.lower is not None:
            self.lower.forget_where(match)

    def clear(self) -> None:
        if self.lower is not None:
            self.lower.forget_all()
        self.entries.clear()
        self._expiry.clear()

    def resize(self, max_entries: int) -> None:
        self.max_entries = max_entries
        while len(self.entries) > max_entries:
            self._forget(self.entries.popitem(last=False)[1])
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
            self._forget(self.entries.pop(key))
        return len(dead)

    def counts(self, now: float) -> tuple[int, int]:
        """(fresh, stale) entry counts, to the second; O(distinct expiry seconds), for scrapes."""
        stale = 0
        for second, n in self._expiry.items():
            if second <= now:
                stale += n
        total = len(self.entries)
        stale = min(stale, total)
        return total - stale, stale

    def _remember(self, entry: Entry) -> None:
        second = math.ceil(entry.fresh_until)
        self._expiry[second] = self._expiry.get(second, 0) + 1

    def _forget(self, entry: Entry) -> None:
        second = math.ceil(entry.fresh_until)
        n = self._expiry.get(second, 0) - 1
        if n > 0:
            self._expiry[second] = n
        else:
            self._expiry.pop(second, None)
