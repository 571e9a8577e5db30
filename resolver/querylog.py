"""The optional, sampled query log (``logging.queries``), for debugging.

Never on by default: one line per query is noise at production rates, and the
metrics already count every query.  When on, each answered query is logged with
probability ``logging.query_sample``; the line names the question, where the
answer came from (its provenance), the rcode and how long it took.
"""

from __future__ import annotations

import logging
import random
import struct

from . import wire
from .stats import qtype_label, rcode_label

log = logging.getLogger("resolver.queries")


class QueryLog:
    def __init__(self, sample: float, rand=random.random):
        self.sample = sample
        self.rand = rand  # injectable, so tests need not depend on chance

    def log(self, data: bytes, source: str, rcode: int, elapsed: float) -> None:
        if self.sample < 1.0 and self.rand() >= self.sample:
            return
        name, qtype = _question(data)
        log.info("query %s %s source=%s rcode=%s duration_ms=%.3f",
                 name, qtype, source, rcode_label(rcode), elapsed * 1000,
                 extra={"event": "query", "qname": name, "qtype": qtype, "source": source,
                        "rcode": rcode_label(rcode), "duration_ms": round(elapsed * 1000, 3)})


def _question(data: bytes) -> tuple[str, str]:
    """(name, type) of the first question, or placeholders: logged data may be garbage."""
    try:
        off, labels = 12, 0
        while data[off] and labels < 128:
            off += 1 + data[off]
            labels += 1
        if data[off] or off + 5 > len(data):
            return "?", "?"
        (qtype,) = struct.unpack_from(">H", data, off + 1)
        return wire.name_to_text(data[12:off + 1]), qtype_label(qtype)
    except (IndexError, struct.error):
        return "?", "?"
