"""The RFC 8767 serve-stale decision, as a pure function of (entry, now, settings).

The cache reports what it holds; this module decides what to do with it; the
caching stage in ``pipeline.py`` carries the decision out.  Keeping the decision
here, in one small function, is what lets a table-driven unit test cover every
outcome (the same idea as Unbound's ``reply_info_can_answer_expired``).
"""

from __future__ import annotations

from ..cache.store import Entry
from ..config import StaleConfig

# What the caching stage should do with a query.
ANSWER_FRESH = "answer_fresh"            # serve from cache, TTLs aged
ANSWER_STALE = "answer_stale"            # serve stale now: the failure recheck timer runs (RFC 8767 §4)
RESOLVE_OR_STALE = "resolve_or_stale"    # ask upstream; serve stale after client_timeout or on failure
RESOLVE = "resolve"                      # nothing usable cached: ask upstream, SERVFAIL on failure


def decide(entry: Entry | None, now: float, stale: StaleConfig, epoch: int | None = None) -> str:
    """Choose how to answer, given the cached entry (or None) at time ``now``.

    ``entry.stale_until`` already folds in max_age (the RFC 8767 max stale timer)
    as it was when the entry was stored; ``stale.max_age`` is re-checked here so a
    reload that shortens it takes effect at once.  ``epoch`` is the upstream pool's
    recovery count: a recheck timer set before an upstream came back up no longer
    holds, so fresh data returns on the next query instead of after ``recheck``.
    """
    if entry is None:
        return RESOLVE
    if now < entry.fresh_until:
        return ANSWER_FRESH
    if not stale.enabled or now >= entry.stale_until or now - entry.fresh_until >= stale.max_age:
        return RESOLVE
    if now < entry.recheck_until and (epoch is None or entry.recheck_epoch == epoch):
        return ANSWER_STALE
    return RESOLVE_OR_STALE


def stale_window(stale: StaleConfig) -> float:
    """How long past expiry a new entry is kept for serving stale."""
    return stale.max_age if stale.enabled else 0.0
