"""The optional, sampled query log (``logging.queries``), for debugging.

Never on by default: one line per query is noise at production rates, and the
metrics already count every query.  When on, each answered query is logged with
probability ``logging.query_sample``; the line names the question, where the
answer came from (its provenance), the rcode and how long it took.

The question name is whatever bytes the client sent: it is escaped as DNS
presentation format does (RFC 1035 §5.1; RFC 4343 §2.1) before it reaches a log
line, so a label holding a newline cannot forge a line and an ESC byte cannot
drive the reader's terminal.
"""

from __future__ import annotations

import logging
import random
import struct

from ..stats import qtype_label, rcode_label

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
        return escaped_name(data[12:off + 1]), qtype_label(qtype)
    except (IndexError, struct.error):
        return "?", "?"


# Printable ASCII stays as is, except the characters presentation format escapes
# with a backslash: "." inside a label, "\\" itself, and the zone-file specials
# (" ( ) ; @ $).  Everything else (controls, space, DEL, bytes >= 0x80) is \DDD.
_SPECIAL = frozenset(b'.\\"();@$')
_ESCAPE = tuple(
    f"\\{chr(b)}" if b in _SPECIAL else chr(b) if 0x21 <= b <= 0x7e else f"\\{b:03d}" for b in range(256)
)


def escaped_name(wire_name: bytes) -> str:
    """Presentation form of an uncompressed wire name with every label byte escaped as needed."""
    labels = []
    off = 0
    while off < len(wire_name) and wire_name[off]:
        n = wire_name[off]
        labels.append("".join(_ESCAPE[b] for b in wire_name[off + 1:off + 1 + n]))
        off += 1 + n
    return ".".join(labels) + "."
