"""One fleet cache entry as an authenticated value: encode, verify, decode.  Sans-IO.

The fleet tier (``fleet.py``) keeps entries in a Redis shared by every node, which
anyone with write access to it can change.  So each value carries a MAC and is
never trusted before the MAC checks out:

    value = record | mac
    record = ``snapshot.encode_value(key, entry)``: magic, version, the cache key,
             the answer and its wall-clock deadlines (stored, expiry, stale limit), CRC
    mac    = HMAC-SHA256(secret, DOMAIN | len(key) | key | record)   (RFC 2104)

The MAC covers the Redis key's cache-key part as well as the record (which holds the
key, the answer and the timestamps), so a value copied or moved to another key fails
it — and the record's own key must also equal the key it was read under.  What fails
is refused and counted by the caller, never served.

Deadlines are absolute wall-clock times: a reader converts them to its own
monotonic clock at read time (``snapshot.entry_from_record``), so a node whose wall
clock is off by s seconds sees every deadline off by at most s.

The Redis expiry is the time left to the stale limit (``expire_ms``): the entry
must outlive its TTL by the stale window, or an outage would find nothing.
"""

from __future__ import annotations

import hmac
import math
import struct

from .. import wire
from . import snapshot
from .store import Entry

# Domain separation: a MAC made for anything else with the same secret never verifies here.
DOMAIN = b"resolver-fleet-entry-v1\0"
MAC_SIZE = 32  # HMAC-SHA256
_KEY_LEN = struct.Struct(">H")
MAX_VALUE = 70_000  # a record holds at most a 64 KiB answer; a larger value is not ours


class FleetRecordError(Exception):
    """A value that must not be served; ``reason`` is a metric label ("mac" or "malformed")."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def mac(secret: bytes, key: bytes, record: bytes) -> bytes:
    # One-shot ``hmac.digest`` (OpenSSL's HMAC in C): a few times cheaper than an hmac
    # object fed piece by piece, and this runs for every write and every read.
    return hmac.digest(secret, b"".join((DOMAIN, _KEY_LEN.pack(len(key)), key, record)), "sha256")


def encode(secret: bytes, key: bytes, entry: Entry, wall_offset: float) -> bytes | None:
    """The value for ``entry`` cached under ``key``; ``wall_offset`` = wall() - monotonic().

    None for what is not shared: a brief SERVFAIL memory (RFC 9520 §3.2 is per
    resolver) or an over-long key.
    """
    if entry.kind == wire.FAILURE:
        return None
    record = snapshot.encode_value(key, entry, wall_offset)
    if record is None:
        return None
    return record + mac(secret, key, record)


def decode(secret: bytes, key: bytes, value: bytes) -> tuple:
    """The record tuple (``snapshot`` layout, wall-clock times) of a value read under ``key``.

    The MAC is checked first (in constant time), before any byte of the record is
    parsed: a forged value never reaches the parser.  Raises FleetRecordError only.
    """
    if not MAC_SIZE < len(value) <= MAX_VALUE:
        raise FleetRecordError("malformed", f"value of {len(value)} bytes")
    record, tag = value[:-MAC_SIZE], value[-MAC_SIZE:]
    if not hmac.compare_digest(tag, mac(secret, key, record)):
        raise FleetRecordError("mac", "MAC check failed (another key's value, tampered, or another secret)")
    try:
        parsed = snapshot.decode_value(record)
    except snapshot.SnapshotError as e:  # authentic but unreadable: another build's version
        raise FleetRecordError("malformed", str(e)) from None
    if parsed[0] != key:
        raise FleetRecordError("mac", "value names another key")
    return parsed


def expire_ms(entry: Entry, now: float) -> int:
    """Milliseconds Redis keeps the value: until the stale limit (0: not worth writing).

    A pinned entry (last-known-good, ``stale_until`` infinite) is kept as long as
    ``snapshot`` writes it: ``PINNED_FOR`` past its expiry.
    """
    stale_until = entry.stale_until
    if not math.isfinite(stale_until):
        stale_until = entry.fresh_until + snapshot.PINNED_FOR
    left = stale_until - now
    return math.ceil(left * 1000.0) if left > 0.001 else 0


def entry_from_value(secret: bytes, key: bytes, value: bytes, now: float, wall_now: float) -> Entry | None:
    """The entry with deadlines on this node's monotonic clock (``now``), or None if past its
    stale limit by this node's wall clock (``wall_now``).  Raises FleetRecordError."""
    return snapshot.entry_from_record(decode(secret, key, value), now, wall_now)
