"""A reply and its provenance, as one value (Blocky's ``model.Response`` is the pattern).

Every stage that answers a query returns an ``Answer``: the reply bytes, where
they came from (``Source``, a fixed set: these are metric label values), the
rcode, and for a stale answer the reason (also a metric label) — the reason
decides the Extended DNS Error (RFC 8914) already rendered into the bytes.
``Pipeline.resolve`` counts, times and logs from it; the listeners send ``.reply``.
Nothing about a reply travels in context variables or attributes on tasks.
"""

from __future__ import annotations


class Source:
    """Where a reply came from (fixed set: these are metric label values)."""

    CACHE = "cache"
    STALE = "stale"
    UPSTREAM = "upstream"
    LOCAL = "local"  # generated here: FORMERR, SERVFAIL after upstream failure, local data, …


class Answer:
    __slots__ = ("reply", "source", "rcode", "stale_reason")

    def __init__(self, reply: bytes | None, source: str | None, rcode: int, stale_reason: str | None = None):
        self.reply = reply                # None: send nothing (unreadable datagram, not a query)
        self.source = source              # a Source value; None only for a dropped query
        self.rcode = rcode
        self.stale_reason = stale_reason  # set when stale data is in the reply (metric label)

    def __repr__(self) -> str:  # for test failures
        return f"Answer(source={self.source!r}, rcode={self.rcode}, stale_reason={self.stale_reason!r})"


DROP = Answer(None, None, -1)  # a datagram answered with silence: counted as dropped, nothing else
