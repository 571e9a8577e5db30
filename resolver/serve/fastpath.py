"""The hit path: one datagram in, one reply out, no parse, no task, no coroutine.

A plain query (one question, class IN, RD=1, at most an OPT record) whose answer
is cached and fresh — or stale while the failure recheck timer runs — is
answered here, synchronously, from the datagram callback.  This is most traffic.
Anything else returns None and takes the slow path (``Pipeline.resolve``).

The two rows of ``policy.stale.plan`` this path serves (fresh; stale "recheck")
are inlined here in a precomputed form — ``tests/unit/test_stale.py`` runs this
path against every row of the plan's table to prove they agree.
"""

from __future__ import annotations

from typing import Callable

from .. import wire
from ..cache.store import Cache
from ..clock import Clock
from ..config import Config
from ..policy import stale as stale_policy

TCP_LIMIT = 65535

# Bytes 2..12 of a query the hit path takes → mode (bit 1: has one additional
# record, the OPT; bit 0: CD set).  Flags: QR=0, opcode QUERY, AA=0, TC=0, RD=1,
# Z=0, AD either way (dig sets it), CD either way; QDCOUNT=1, AN=NS=0, AR=0 or 1.
_FAST_HEADERS = {
    bytes((0x01, ad | cd, 0, 1, 0, 0, 0, 0, 0, ar)): ar * 2 + (1 if cd else 0)
    for ad in (0, 0x20) for cd in (0, 0x10) for ar in (0, 1)
}

_NXDOMAIN = wire.NXDOMAIN

# Key prefixes for DO/CD, indexed by (DO << 1 | CD) (see wire.question_key).
_KEY_PREFIX = tuple(wire.key_prefix(flags) for flags in range(4))


class FastPath:
    """``answer_fast`` and what it reads, looked up once: it runs ~100k times a second.

    ``pool`` supplies the recovery epoch (re-pointed on reload); ``prefetch(key)``
    schedules a refresh of a popular entry near expiry (the refresher's).
    """

    def __init__(self, config: Config, cache: Cache, pool, clock: Clock, prefetch: Callable[[bytes], None]):
        self.pool = pool
        self.entries = cache.entries  # the native hit loop reads it too (batch.py)
        self._entries_get = cache.entries.get
        self._touch = cache.entries.move_to_end
        self._now = clock.monotonic
        self._prefetch = prefetch
        self._opt_shapes: dict[bytes, tuple[int, int]] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        self.stale = config.stale
        self._stale_max_age = stale_policy.hit_path_max_age(config.stale)  # one read on the hit path
        size = config.upstream.edns_buffer_size
        # Pre-built OPT records: [DO][kind] where kind 0 = fresh, 1 = stale positive
        # (EDE 3), 2 = stale NXDOMAIN (EDE 19).
        self._opt = [
            [
                wire.opt_record(size, do),
                wire.opt_record(size, do, wire.ede_option(wire.EDE_STALE_ANSWER)),
                wire.opt_record(size, do, wire.ede_option(wire.EDE_STALE_NXDOMAIN)),
            ]
            for do in (False, True)
        ]
        self.opt_fresh = (self._opt[0][0], self._opt[1][0])  # (DO=0, DO=1), for the native hit loop

    def answer_fast(self, data: bytes, tcp: bool) -> bytes | None:
        """Answer a plain query from the cache, or return None for the slow path.

        Does in place what ``resolve`` + ``wire.render`` would do, for the common
        case only; anything unusual returns None.  The key lookup validates the
        question for free: a key is in the cache only if an identical question
        once passed ``wire.parse_query``, so ``data[12:end]`` matching a key proves
        the datagram is header + that question (+ the OPT record we checked).
        Tests compare both paths byte for byte.  Every operation here was
        measured (bench/README.md): e.g. one dict lookup of the header bytes
        replaces six field checks, and the OPT record is located from the end of
        the datagram, so no scan for the end of the name is needed.
        """
        mode = _FAST_HEADERS.get(data[2:12])
        if mode is None:
            return None
        if mode < 2:  # no EDNS: the question runs to the end of the datagram
            question = data[12:]
            key = question.lower()
            if mode:
                key = _KEY_PREFIX[1] + key
            limit = 512
        else:
            info = self._opt_shapes.get(data[-11:])
            if info is not None:  # an OPT record without options, seen before
                question = data[12:-11]
            else:
                e = data.find(b"\x00", 12) + 5
                info = self._opt_at(data, e)
                if info is None:
                    return None
                question = data[12:e]
            limit, do = info
            key = question.lower()
            flags = (do << 1) | (mode & 1)
            if flags:
                key = _KEY_PREFIX[flags] + key
        if tcp:
            limit = TCP_LIMIT
        entry = self._entries_get(key)
        if entry is None:
            return None
        now = self._now()
        # plan row "fresh" (policy.stale.plan): answer from cache.
        if now < entry.fresh_until:
            body = entry.aged if now <= entry.aged_until else self.renew(key, entry, now)
            if mode < 2:
                reply = b"".join((data[:2], entry.hdr, question, body))
            else:
                reply = b"".join((data[:2], entry.hdr_opt, question, body, self._opt[do][0]))
            if len(reply) > limit:
                return None  # the slow path sends TC=1
            entry.tally.fresh += 1  # hit by qtype and rcode, one increment (stats.HitTally)
            return reply
        # plan row "recheck" (RFC 8767 §4 failure recheck timer): a refresh failed
        # recently, answer stale at once without asking upstream.  ``decide``'s
        # conditions, precomputed: _stale_max_age is -1 with serve-stale off, so the
        # age test then always fails.  An entry held by last-known-good carries an
        # EDE text this path does not render: the slow path answers it.
        if (now < entry.recheck_until and now < entry.stale_until and now - entry.fresh_until < self._stale_max_age
                and entry.recheck_epoch == self.pool.epoch and entry.lkg_text is None):
            body = entry.stale_body
            if body is None:
                body = entry.stale_answer_body(self.stale.answer_ttl)
            if mode < 2:
                reply = b"".join((data[:2], entry.hdr, question, body))
            else:
                reply = b"".join((data[:2], entry.hdr_opt, question, body,
                                  self._opt[do][2 if entry.rcode == _NXDOMAIN else 1]))
            if len(reply) > limit:
                return None
            entry.tally.stale += 1  # stale answer, reason "recheck" (stats.HitTally)
            return reply
        return None

    def renew(self, key: bytes, entry, now: float) -> bytes:
        """Renew a fresh entry's aged copy (at most once a second per entry): the TTLs
        aged to ``now``, the LRU touch and the prefetch check ride on it.  The native hit
        loop (serve/_hitloop.c) calls this too, so the renewal has one implementation."""
        body = entry.aged_body(now)
        self._touch(key)  # LRU, at one-second granularity
        if now >= entry.prefetch_after:  # checked once per second per entry: ~free
            self._prefetch(key)
        return body

    def _opt_at(self, data: bytes, e: int) -> tuple[int, int] | None:
        """(client UDP limit, DO) if ``data[e:]`` is exactly one EDNS0 OPT record, else None.

        OPT records without options are remembered (bounded), so the next query
        with the same one is recognised by a single dict lookup.
        """
        n = len(data)
        if e < 17 or n < e + 11 or data[e : e + 3] != b"\x00\x00\x29" or data[e + 6]:
            return None
        if n != e + 11 + (data[e + 9] << 8 | data[e + 10]):
            return None
        limit = max(512, data[e + 3] << 8 | data[e + 4])
        info = (limit, data[e + 7] >> 7)
        if n == e + 11 and len(self._opt_shapes) < 256:
            self._opt_shapes[data[e:]] = info
        return info


def no_fast_path(data: bytes, tcp: bool) -> None:
    """Stands in for ``answer_fast`` while the query log is on (every query must be logged)."""
    return None
