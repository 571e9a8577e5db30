"""Last-known-good: do not let a sudden empty answer replace records we just had.

In the 2025 us-east-1 outage the authoritative servers *answered* — with an empty
record set for the DynamoDB endpoint — so RFC 8767 serve-stale never triggered and
resolvers passed the emptiness on and cached it.  This module decides, for a reply
that is NXDOMAIN or NODATA while the cache still holds positive records for the
same question, what should happen:

* always: the event is reported (``resolver_answers_vanished_total``), the early
  warning of such an outage whatever the configuration;
* for names in the configured zones whose records were confirmed less than
  ``max_age`` ago: ``enforce`` keeps serving the cached records (as a stale answer,
  EDE 3 with an explanatory text) and re-asks at the recheck interval; ``shadow``
  lets the empty answer through and only counts and logs what enforce would do.

Pure: values in, a verdict out; the pipeline acts on it.  The trade-off is
deliberate and documented: a real deletion is hidden for up to ``max_age``.
"""

from __future__ import annotations

import math

from .. import wire
from ..cache.store import Cache, Entry
from ..config import LastKnownGoodConfig
from ..errors import UpstreamError

# Verdicts.
NONE = None              # nothing vanished
VANISHED = "vanished"    # records vanished; not defended (zone not listed, too old, or not servable)
ENFORCE = "enforce"      # serve the last records instead
SHADOW = "shadow"        # would have served them: count and log only


class LastKnownGoodHeld(UpstreamError):
    """Raised by the refresh instead of caching an empty answer; waiters answer from ``entry``."""

    reason = "last_known_good"

    def __init__(self, entry: Entry, empty_kind: str):
        self.entry = entry
        what = "NXDOMAIN" if empty_kind == wire.NEGATIVE_NXDOMAIN else "NODATA"
        # RFC 8914 §2: EXTRA-TEXT is UTF-8 for humans debugging; keep it short.
        self.ede_text = f"upstream answered {what}; serving last known good records".encode()
        super().__init__(self.ede_text.decode())


def in_zones(name: str, zones: tuple[str, ...]) -> bool:
    """Is ``name`` (presentation form) at or below one of ``zones`` ("" = the root)?

    The text form of the test `LastKnownGood.check` makes on wire names."""
    return wire.zone_of(wire.name_to_wire(name), {wire.zone_to_wire(z) for z in zones}) is not None


class LastKnownGood:
    def __init__(self, config: LastKnownGoodConfig):
        self.config = config
        # The config holds zones as text; questions are wire names: convert once.
        self.zones = frozenset(wire.zone_to_wire(zone) for zone in config.zones)

    def check(self, old: Entry | None, new: wire.Prepared, question: bytes, now: float,
              pinned: bool = False) -> str | None:
        """The verdict for storing ``new`` (the upstream's reply to ``question``) over ``old``.

        ``pinned``: an operator pinned this question (lkg_admin): enforce whatever the config.
        """
        if old is None or old.kind != wire.POSITIVE or new.kind not in (wire.NODATA, wire.NEGATIVE_NXDOMAIN):
            return NONE
        if pinned and now < old.stale_until:
            return ENFORCE
        config = self.config
        if not config.zones or now - old.stored_at >= config.max_age or now >= old.stale_until:
            return VANISHED
        if wire.zone_of(question[:-4].lower(), self.zones) is None:
            return VANISHED
        return ENFORCE if config.mode == "enforce" else SHADOW


# -- operator pins (lkg_admin) ------------------------------------------------------

def _positive_entries(cache: Cache, question: bytes) -> list[Entry]:
    """Cached positive entries for ``question`` under every DO/CD variant of its key."""
    found = []
    for docd in range(4):
        entry = cache.get(wire.question_key(question, docd))
        if entry is not None and entry.kind == wire.POSITIVE:
            found.append(entry)
    return found


def pin(pins: set, cache: Cache, question: bytes) -> bool:
    """Pin ``question``: its positive entries are kept past any stale window and defended
    against empty answers whatever the config.  True if positive records are cached now."""
    pins.add(question)
    entries = _positive_entries(cache, question)
    for entry in entries:
        entry.stale_until = math.inf
    return bool(entries)


def unpin(pins: set, cache: Cache, question: bytes, stale_window: float) -> bool:
    """Undo ``pin``: entries get back ``stale_window`` (the one a new entry for the name gets)."""
    if question not in pins:
        return False
    pins.discard(question)
    for entry in _positive_entries(cache, question):
        entry.stale_until = entry.fresh_until + stale_window
    return True
