"""What the access-control check costs on the UDP hit path, measured A/B in one process.

    .venv/bin/python bench/acl_overhead.py

bench/hitpath.py gives absolute ns per hit, but on a busy machine its run-to-run
noise is larger than this check.  Here the real ``_UdpProtocol.datagram_received``
(with the check) and a copy without the check are timed in alternating rounds on
the same cached query, in thread CPU time (time spent waiting for a core on a busy
machine does not count), and the minimum per variant is reported: the minimum is
the round least disturbed by other processes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dns.message  # noqa: E402
from hitpath import _NullTransport, _reply_for  # noqa: E402

from resolver import wire  # noqa: E402
from resolver.cache.store import Cache  # noqa: E402
from resolver.clock import SystemClock  # noqa: E402
from resolver.config import Config  # noqa: E402
from resolver.serve.acl import AccessControl  # noqa: E402
from resolver.serve.ratelimit import RateLimiter  # noqa: E402
from resolver.serve.listeners import Listeners, _UdpProtocol  # noqa: E402
from resolver.serve.pipeline import Pipeline  # noqa: E402
from resolver.stats import Stats  # noqa: E402


class _NoAcl(_UdpProtocol):
    """datagram_received as it was before the access check (the hit path only)."""

    def datagram_received(self, data, addr):
        self.stats.queries_udp += 1
        reply = self.fast(data, False)
        if reply is not None:
            self.transport.sendto(reply, addr)
            return
        self.listeners.spawn(self.listeners.udp_slow(self.transport, data, addr), addr[0])


def main(n: int = 100_000, rounds: int = 21) -> None:
    config = Config()
    clock = SystemClock()
    cache = Cache(1000)
    stats = Stats()
    pipeline = Pipeline(config, cache, None, clock, stats)
    listeners = Listeners(pipeline, config.server, stats, AccessControl(config.security), pipeline.limits,
                          RateLimiter(config.security))
    data = dns.message.make_query("www.example.com", "A", use_edns=0).to_wire()
    q = wire.parse_query(data)
    cache.put(q.key, wire.parse_reply(_reply_for(data), q.question, min_ttl=0, max_ttl=86400,
                                      max_negative_ttl=3600), clock.monotonic(), 86400)
    variants = {"with ACL": _UdpProtocol(listeners), "without": _NoAcl(listeners)}
    for proto in variants.values():
        proto.transport = _NullTransport()
    addr = ("127.0.0.1", 40000)
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, proto in variants.items():
            t = time.thread_time()
            for _ in range(n):
                proto.datagram_received(data, addr)
            best[name] = min(best[name], (time.thread_time() - t) / n * 1e9)
    for name, ns in best.items():
        print(f"{name:9s} {ns:7.0f} ns per hit (min of {rounds} x {n})")
    print(f"ACL check {best['with ACL'] - best['without']:+7.0f} ns per hit")


if __name__ == "__main__":
    main()
