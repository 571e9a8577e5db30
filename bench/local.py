"""Cost of routing and local answers, in-process (no sockets), ns per query.

    .venv/bin/python bench/local.py

1. The UDP hit path (``_UdpProtocol.datagram_received``) with a plain pipeline, and
   with forward zones (100 zones, one Router) and local data (100 records, 10 block
   zones) configured: a hit must not consult either, so the two must match.
2. A local answer (``Pipeline.resolve`` on a local_records name, localhost, a
   blocked name), which takes the general path by design (see resolver/local/answers.py),
   next to the hit path it is compared with.
3. ``Router.pool_for`` on a miss: the routing cost an upstream fetch pays.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dns.message  # noqa: E402

from resolver import wire  # noqa: E402
from resolver.app import App  # noqa: E402
from resolver.cache.store import Cache  # noqa: E402
from resolver.clock import SystemClock  # noqa: E402
from resolver.config import parse_config  # noqa: E402
from resolver.local.answers import LocalAnswers  # noqa: E402
from resolver.serve.acl import AccessControl  # noqa: E402
from resolver.serve.ratelimit import RateLimiter  # noqa: E402
from resolver.serve.listeners import Listeners, _UdpProtocol  # noqa: E402
from resolver.serve.pipeline import Pipeline  # noqa: E402
from resolver.stats import Stats  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hitpath import _NullTransport, _reply_for  # noqa: E402


def _median(fn, n: int, rounds: int) -> float:
    per = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn(n)
        per.append((time.perf_counter() - t) / n * 1e9)
    return statistics.median(per)


def _pipeline(routed: bool):
    data = {"upstreams": ["192.0.2.53"]}
    if routed:
        data["forward"] = [{"zone": f"zone{i}.example", "upstreams": [f"192.0.2.{100 + i % 50}"]}
                           for i in range(100) if i < 50]
        data["forward"] += [{"zone": f"zone{i}.example", "upstreams": [f"192.0.2.{100 + i - 50}"]}
                            for i in range(50, 100)]
        data["local_records"] = [f"host{i}.lan. 300 IN A 192.0.2.{i % 250}" for i in range(100)]
        data["block_zones"] = [f"blocked{i}.example" for i in range(10)]
    config = parse_config(data)
    clock, cache, stats = SystemClock(), Cache(1000), Stats()
    pool = App(config).router if routed else None
    local = LocalAnswers(config) if routed else None
    return Pipeline(config, cache, pool, clock, stats, local), config, cache, stats


def _hit_runner(routed: bool):
    pipeline, config, cache, stats = _pipeline(routed)
    proto = _UdpProtocol(Listeners(pipeline, config.server, stats, AccessControl(config.security), pipeline.limits,
                                   RateLimiter(config.security)))
    proto.transport = _NullTransport()
    data = dns.message.make_query("www.zone7.example", "A", use_edns=0).to_wire()  # same name both ways
    q = wire.parse_query(data)
    cache.put(q.key, wire.parse_reply(_reply_for(data), q.question, min_ttl=0, max_ttl=86400,
                                      max_negative_ttl=3600), SystemClock().monotonic(), 86400)
    assert pipeline.answer_fast(data, False) is not None
    addr = ("127.0.0.1", 40000)
    received = proto.datagram_received

    def run(k):
        for _ in range(k):
            received(data, addr)
    return run


def hit_paths(n: int, rounds: int) -> tuple[float, float]:
    """(plain, routed) ns per hit, rounds interleaved ABBA: machine noise and the measured
    penalty of running second (seen with two identical pipelines) hit both alike."""
    runs = (_hit_runner(False), _hit_runner(True))
    per = ([], [])
    for r in range(rounds):
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            run = runs[i]
            t = time.perf_counter()
            run(n)
            per[i].append((time.perf_counter() - t) / n * 1e9)
    return statistics.median(per[0]), statistics.median(per[1])


def local_answer(name: str, rtype: str, n: int, rounds: int) -> float:
    pipeline, *_ = _pipeline(True)
    data = dns.message.make_query(name, rtype, use_edns=0).to_wire()
    resolve = pipeline.resolve

    async def go(k):
        for _ in range(k):
            await resolve(data, False)

    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(resolve(data, False)).reply is not None
        return _median(lambda k: loop.run_until_complete(go(k)), n, rounds)
    finally:
        loop.close()


def routing(n: int, rounds: int) -> float:
    router = App(_pipeline(True)[1]).router
    name = wire.name_to_wire("a.b.c.www.zone99.example")

    def run(k):
        for _ in range(k):
            router.pool_for(name)
    return _median(run, n, rounds)


def main(n: int = 200_000, rounds: int = 5) -> None:
    plain, routed = hit_paths(n, rounds * 2)
    print(f"hit path, no routing/local data      {plain:7.0f} ns per hit")
    print(f"hit path, 100 zones + local data      {routed:7.0f} ns per hit  (ratio {routed / plain:.2f})")
    m = n // 10
    print(f"local answer (local_records A)        {local_answer('host5.lan', 'A', m, rounds):7.0f} ns per query")
    print(f"local answer (foo.localhost AAAA)     {local_answer('foo.localhost', 'AAAA', m, rounds):7.0f} ns per query")
    print(f"local answer (blocked, NXDOMAIN)      {local_answer('x.blocked3.example', 'A', m, rounds):7.0f} ns per query")
    print(f"Router.pool_for, 6 labels, 100 zones  {routing(n, rounds):7.0f} ns per miss")


if __name__ == "__main__":
    main()
