"""The RFC 8767 serve-stale decision: every outcome of a query, as pure functions.

The cache reports what it holds; this module decides what to do with it; the
caching stage (``serve/caching.py``) carries the decision out and the refresher
(``serve/refresher.py``) asks ``after_failure`` when a fetch fails.  Keeping every
outcome here, in two small functions over plain values, is what lets one
table-driven unit test cover them all (the same idea as Unbound's
``reply_info_can_answer_expired``).  The hit path (``serve/fastpath.py``) inlines
a precomputed form of the two rows it serves (fresh, and stale under the failure
recheck timer); a test runs it against every row of ``plan``'s table.

``plan``'s rows, first match wins:

==  =============================================  =========================================
 1  nothing cached, or not servable stale           cap reached → SERVFAIL "Not Ready" (EDE 14)
    (stale off, past ``stale_until`` / max_age)     else fetch, SERVFAIL on failure
 2  fresh                                           answer from cache
 3  failure recheck timer runs (same epoch)         stale now, "recheck" (RFC 8767 §4)
 4  ``server.max_inflight`` reached                 stale now, "overload"
 5  every upstream known down                       stale now, "upstreams_down"; hold the
                                                    name (recheck) and fetch once behind it
 6  client over its share, no fetch to join         stale now, "client_limit"
 7  ``client_timeout`` 0 (answer-first)             stale now, "answer_first"; fetch behind it
 8  the upstream group is slow (best smoothed RTT   stale now, "slow_upstream"; fetch behind it
    above ``slow_upstream``)
 9  the upstream group loses datagrams (at least    stale now, "lossy_upstream"; fetch behind it
    ``lossy_upstream`` of its recent sends passed
    their RTO)
10  otherwise                                       fetch; stale after ``client_timeout``
                                                    ("timeout") or on failure (its reason)
==  =============================================  =========================================

A failed fetch that a last-known-good check refused (an empty answer replacing
records) is answered stale with the reason "last_known_good" in both fetch rows.
"""

from __future__ import annotations

from typing import NamedTuple

from .. import wire
from ..cache.store import Entry
from ..config import StaleConfig

# ``decide``: how the cached entry stands (the RFC 8767 timers alone).
ANSWER_FRESH = "answer_fresh"            # serve from cache, TTLs aged
ANSWER_STALE = "answer_stale"            # serve stale now: the failure recheck timer runs (RFC 8767 §4)
RESOLVE_OR_STALE = "resolve_or_stale"    # ask upstream; serve stale after client_timeout or on failure
RESOLVE = "resolve"                      # nothing usable cached: ask upstream, SERVFAIL on failure

# ``plan``: what the caching stage answers now.
FRESH = "fresh"            # the cached answer, TTLs aged (source "cache")
STALE = "stale"            # the stale answer, EDE 3 or 19, with ``reason`` (source "stale")
UPSTREAM = "upstream"      # wait for the fetch (at most ``wait`` seconds if a stale fallback exists)
NOT_READY = "not_ready"    # SERVFAIL with EDE 14 "Not Ready": a cap stops the fetch, nothing servable

# Caps that stop a query from starting upstream work (``cap`` argument).
OVERLOAD = "max_inflight"                   # server.max_inflight: no new work at all
CLIENT_LIMIT = "max_inflight_per_client"    # security.max_inflight_per_client: joining is free
# The stale reason (metric label) each cap answers with.
CAP_REASON = {OVERLOAD: "overload", CLIENT_LIMIT: "client_limit"}

# ``after_failure``: what a failed fetch leaves in the cache.
HOLD = "hold"                    # start the failure recheck timer on the entry (RFC 8767 §4)
CACHE_SERVFAIL = "cache_servfail"  # remember the failure briefly (RFC 9520 §3.2)
NOTHING = None


class Plan(NamedTuple):
    answer: str                  # FRESH, STALE, UPSTREAM or NOT_READY
    reason: str | None = None    # STALE: the stale reason; NOT_READY: the cap
    fetch: bool = False          # start the key's one fetch, or join it if one runs
    hold: bool = False           # start the failure recheck timer now
    wait: float | None = None    # UPSTREAM: seconds before answering stale ("timeout"); None: no fallback


_FRESH = Plan(FRESH)
_RECHECK = Plan(STALE, "recheck")
_RESOLVE = Plan(UPSTREAM, fetch=True)
_NOT_READY = {cap: Plan(NOT_READY, cap) for cap in CAP_REASON}
_CAPPED = {cap: Plan(STALE, reason) for cap, reason in CAP_REASON.items()}
_SLOW = Plan(STALE, "slow_upstream", fetch=True)
_LOSSY = Plan(STALE, "lossy_upstream", fetch=True)
_DOWN = {True: Plan(STALE, "upstreams_down", fetch=True, hold=True),
         False: Plan(STALE, "upstreams_down", hold=True)}
_ANSWER_FIRST = Plan(STALE, "answer_first", fetch=True)


def decide(entry: Entry | None, now: float, stale: StaleConfig, epoch: int | None = None) -> str:
    """How the cached entry (or None) stands at time ``now``: the RFC 8767 timers.

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


def plan(entry: Entry | None, now: float, stale: StaleConfig, epoch: int | None = None, *,
         upstreams_down: bool = False, upstreams_slow: bool = False, upstreams_lossy: bool = False,
         fetching: bool = False, cap: str | None = None) -> Plan:
    """What to answer for a query whose cached entry is ``entry`` (or None), and why.

    ``upstreams_down``: every upstream for the name is known down (the prober
    watches for its return); only read for an entry that is past its TTL.
    ``upstreams_slow``: the name's upstream group answers, but slower than
    ``stale.slow_upstream`` (its best smoothed RTT); only read past the TTL.
    ``upstreams_lossy``: the name's upstream group answers, but at least
    ``stale.lossy_upstream`` of its recent sends passed their RTO (lost or late);
    only read past the TTL.
    ``fetching``: this key's fetch is already in flight (joining it is free).
    ``cap``: OVERLOAD or CLIENT_LIMIT if that cap is reached, else None.
    """
    if entry is None:  # the common miss, without a call to ``decide``
        state = RESOLVE
    else:
        state = decide(entry, now, stale, epoch)
    if state == ANSWER_FRESH:
        return _FRESH
    if state == RESOLVE:
        if cap == OVERLOAD or (cap is not None and not fetching):
            return _NOT_READY[cap]
        return _RESOLVE
    if state == ANSWER_STALE:
        return _RECHECK
    # Stale data can be served (RESOLVE_OR_STALE).
    if cap == OVERLOAD:
        return _CAPPED[OVERLOAD]
    if upstreams_down:
        # Answer at once instead of making each client wait client_timeout, and hold
        # the name under the recheck timer.  One background fetch still goes out (the
        # pool tries the upstream due back soonest), so an upstream that fails our
        # probes but answers real names is noticed; the hold bounds it to one per
        # name per recheck, and none if the client is over its share.
        return _DOWN[not fetching and cap is None]
    if cap is not None and not fetching:
        return _CAPPED[cap]
    if stale.client_timeout == 0:
        return _ANSWER_FIRST
    if upstreams_slow:
        # Waiting would cost the client most of a slow round trip for a name that
        # expired moments ago: answer stale now (RFC 8767 §5 allows a timer of 0);
        # the fetch behind it repairs the cache, and a group that speeds up again
        # brings its smoothed RTT down and the race back.
        return _SLOW
    if upstreams_lossy:
        # A lost datagram costs the waiting client an RTO (a quarter second or more
        # once backed off), and at this loss rate that is the refresh's common fate:
        # answer stale now and let the fetch behind it, retransmitting, repair the cache.
        return _LOSSY
    # RFC 8767 §5: wait at most client_timeout (from the start of the fetch), then
    # answer stale while the fetch goes on and repairs the cache if it succeeds.
    return Plan(UPSTREAM, fetch=True, wait=stale.client_timeout)


def after_failure(entry: Entry | None, now: float, servfail_ttl: int) -> str | None:
    """What a failed fetch leaves behind for the entry cached under its key.

    A stale-servable answer is held: RFC 8767 §4's failure recheck timer answers
    the name stale at once for a while.  Otherwise (nothing cached, or past its
    stale window) the failure is remembered for ``servfail_ttl`` (RFC 9520 §3.2) so
    a retry storm does not hammer a broken upstream; a remembered failure is never
    held or served stale.
    """
    if entry is not None and now < entry.stale_until and entry.kind != wire.FAILURE:
        return HOLD
    if servfail_ttl > 0 and (entry is None or now >= entry.stale_until):
        return CACHE_SERVFAIL
    return NOTHING


def hit_path_max_age(stale: StaleConfig) -> float:
    """``stale.max_age`` as the hit path compares it: -1 with serve-stale off, so
    ``now - fresh_until < max_age`` (the age test in ``decide``) always fails."""
    return stale.max_age if stale.enabled else -1.0


def stale_window(stale: StaleConfig) -> float:
    """How long past expiry a new entry is kept for serving stale."""
    return stale.max_age if stale.enabled else 0.0
