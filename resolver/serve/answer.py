"""A reply and its provenance, as one value (Blocky's ``model.Response`` is the pattern).

Every stage that answers a query returns an ``Answer``: the reply bytes, where
they came from (``Source``, a fixed set: these are metric label values), the
rcode, for a stale answer the reason (also a metric label), and the Extended
DNS Error (RFC 8914) code the bytes carry — chosen from the provenance where the
answer is rendered (stale: 3 or 19; upstream failure: 22 or 23; a cap: 14).
``Pipeline.resolve`` counts, times and logs from it; the listeners send ``.reply``.
Nothing about a reply travels in context variables or attributes on tasks.
"""

from __future__ import annotations


class Source:
    """Where a reply came from (fixed set: these are metric label values)."""

    CACHE = "cache"
    STALE = "stale"
    UPSTREAM = "upstream"
    FLEET = "fleet"  # a fresh entry another node stored in the fleet tier (cache/fleet.py)
    LOCAL = "local"  # generated here: FORMERR, SERVFAIL after upstream failure, local data, …


class Answer:
    __slots__ = ("reply", "source", "rcode", "stale_reason", "ede")

    def __init__(self, reply: bytes | None, source: str | None, rcode: int, stale_reason: str | None = None,
                 ede: int | None = None):
        self.reply = reply                # None: send nothing (unreadable datagram, not a query)
        self.source = source              # a Source value; None only for a dropped query
        self.rcode = rcode
        self.stale_reason = stale_reason  # set when stale data is in the reply (metric label)
        self.ede = ede                    # the EDE INFO-CODE in the reply, if any

    def __repr__(self) -> str:  # for test failures
        return (f"Answer(source={self.source!r}, rcode={self.rcode}, stale_reason={self.stale_reason!r}, "
                f"ede={self.ede})")


DROP = Answer(None, None, -1)  # a datagram answered with silence: counted as dropped, nothing else
