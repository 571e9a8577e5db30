"""Micro-benchmark of the cache-hit path in-process: ns per datagram, no sockets.

    .venv/bin/python bench/hitpath.py

Drives ``_UdpProtocol.datagram_received`` (the real UDP callback, with the
pipeline's hit path behind it) with a stub transport, for a query without EDNS,
with EDNS, and with EDNS+DO, then stale answers under the failure recheck timer.  It measures the Python work per hit, which is what
code changes move; socket costs are measured by bench/run.py against real peers.
Run it before and after touching anything on the hit path.

It ends with the cost of metrics per hit: the one statement the hit path spends
on counting (``entry.tally.fresh += 1``, which counts the hit by query type, rcode
and source), timed alone against an empty loop, next to the attribute increment
it replaced (``stats.cache_hits += 1``).
"""

from __future__ import annotations

import statistics
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dns.message  # noqa: E402

from resolver import wire  # noqa: E402
from resolver.cache.store import Cache  # noqa: E402
from resolver.clock import SystemClock  # noqa: E402
from resolver.config import Config  # noqa: E402
from resolver.serve.acl import AccessControl  # noqa: E402
from resolver.serve.ratelimit import RateLimiter  # noqa: E402
from resolver.serve.listeners import Listeners, _UdpProtocol  # noqa: E402
from resolver.serve.pipeline import Pipeline  # noqa: E402
from resolver.stats import Stats  # noqa: E402


class _NullTransport:
    def sendto(self, data, addr):
        pass


class _NoUpstreams:
    """The pool as the hit path sees it: only its epoch (serve-stale's recheck timer)."""

    epoch = 0


def _reply_for(data: bytes) -> bytes:
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, 300, "IN", "A", "192.0.2.1"))
    r.flags |= dns.flags.RA
    return r.to_wire()


def main(n: int = 300_000, rounds: int = 5) -> None:
    config = Config()
    clock = SystemClock()
    cache = Cache(1000)
    stats = Stats()
    pipeline = Pipeline(config, cache, _NoUpstreams(), clock, stats)
    proto = _UdpProtocol(Listeners(pipeline, config.server, stats, AccessControl(config.security), pipeline.limits,
                                   RateLimiter(config.security)))
    proto.transport = _NullTransport()
    cases = {
        "no EDNS": dns.message.make_query("www.example.com", "A", use_edns=False),
        "EDNS": dns.message.make_query("www.example.com", "A", use_edns=0),
        "EDNS+DO": dns.message.make_query("www.example.com", "A", use_edns=0, want_dnssec=True),
    }
    addr = ("127.0.0.1", 40000)

    def per_datagram(data: bytes) -> float:
        """ns per call of the real UDP callback with ``data`` (median of ``rounds``)."""
        per = []
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(n):
                proto.datagram_received(data, addr)
            per.append((time.perf_counter() - t) / n * 1e9)
        return statistics.median(per)

    for label, msg in cases.items():
        data = msg.to_wire()
        q = wire.parse_query(data)
        cache.put(q.key, wire.parse_reply(_reply_for(data), q.question, min_ttl=0, max_ttl=86400,
                                          max_negative_ttl=3600), clock.monotonic(), 86400)
        assert pipeline.answer_fast(data, False) is not None, label
        print(f"{label:8s} {per_datagram(data):7.0f} ns per hit (median of {rounds} x {n})")
    # Serve-stale under the RFC 8767 failure recheck timer: the same entry, expired and held.
    for label in ("no EDNS", "EDNS"):
        data = cases[label].to_wire()
        held = cache.entries[wire.parse_query(data).key]
        now = clock.monotonic()
        held.fresh_until, held.stale_until, held.recheck_until, held.recheck_epoch = now - 1, now + 3600, now + 3600, 0
        assert pipeline.answer_fast(data, False) is not None, label
        print(f"stale, {label:8s} {per_datagram(data):4.0f} ns per answer (failure recheck timer)")
    entry = cache.entries[q.key]
    env = {"e": entry, "p": pipeline}

    def ns(stmt: str) -> float:
        return statistics.median(timeit.repeat(stmt, globals=env, number=n, repeat=rounds)) / n * 1e9

    empty = ns("e")
    tally = ns("e.tally.fresh += 1") - empty
    attr = ns("p.stats.cache_hits += 1") - empty
    print(f"metrics  {tally:7.1f} ns per hit for entry.tally.fresh += 1 (was {attr:.1f} ns for self.stats.cache_hits += 1)")


if __name__ == "__main__":
    main()
