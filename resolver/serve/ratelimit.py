"""Response rate limiting per client address over UDP, with slip (off by default).

UDP source addresses can be forged, so a resolver's answers can be aimed at a
victim (reflection).  The access list stops strangers; this stops an allowed
address — or a forged one inside the allowed ranges — from drawing more than
``rate_limit`` responses a second.  As in BIND's and Knot's RRL, every
``slip``-th limited response is still sent, but empty and with TC=1: a real
client then retries over TCP (which cannot be spoofed and is not limited),
while a reflection victim receives only a small fraction of tiny packets.

A token bucket per address: ``rate_limit`` tokens a second, at most one second's
worth saved (the burst).  The table is bounded: when full it is emptied, which
at worst grants a fresh burst to everyone once.

Sans-IO: ``check(host, now)`` returns a verdict; the listener acts and counts.
"""

from __future__ import annotations

from .. import wire
from ..config import SecurityConfig
from ..errors import DropQuery, FormatError

OK, DROP, SLIP = 0, 1, 2
TABLE_MAX = 65_536


class RateLimiter:
    def __init__(self, config: SecurityConfig):
        self.buckets: dict[str, list[float]] = {}  # address -> [tokens, last refill time]
        self.limited = 0
        self.configure(config)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def configure(self, config: SecurityConfig) -> None:
        self.rate = float(config.rate_limit)
        self.burst = max(1.0, self.rate)
        self.slip = config.rate_limit_slip
        self.buckets.clear()

    def check(self, host: str, now: float) -> int:
        """OK to answer, or DROP / SLIP for a client over its rate."""
        bucket = self.buckets.get(host)
        if bucket is None:
            if len(self.buckets) >= TABLE_MAX:
                self.buckets.clear()
            bucket = self.buckets[host] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return OK
        bucket[0] = tokens
        self.limited += 1
        if self.slip and self.limited % self.slip == 0:
            return SLIP
        return DROP


def slip_reply(data: bytes) -> bytes | None:
    """An empty TC=1 reply to ``data`` (header + question): "ask me over TCP" (RFC 7766 §5).

    Never larger than the query; None for anything that is not a readable query.
    """
    try:
        q = wire.parse_query(data)
    except (DropQuery, FormatError):
        return None
    # QR, TC, the client's opcode and RD; RA, the client's CD; rcode NOERROR.
    flags = wire.reply_flags(wire.NOERROR, cd=q.cd, tc=True, opcode_rd=data[2] & (wire.OPCODE_MASK | wire.RD))
    return data[0:2] + flags + wire.header_counts(1, 0, 0, 0) + q.question
