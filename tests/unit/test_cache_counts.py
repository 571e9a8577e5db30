"""Cache entry counts by state (kept per expiry second, not by scanning) and hit tallies."""

from __future__ import annotations

import random

from dnslib import QTYPE

from resolver.cache.store import Cache
from resolver.stats import HitTally
from tests.support.packets import key, negative, prepared, question

NOW = 1000.0


def brute(cache: Cache, now: float) -> tuple[int, int]:
    fresh = sum(1 for e in cache.entries.values() if now < e.fresh_until)
    return fresh, len(cache) - fresh


def test_counts_follow_every_mutation():
    cache = Cache(5)
    cache.put(key("a.test"), prepared("a.test", ttl=10), NOW, 100)
    cache.put(key("b.test"), prepared("b.test", ttl=20), NOW, 100)
    cache.put(key("c.test"), negative("c.test", ttl=30), NOW, 100)
    assert cache.counts(NOW) == (3, 0)
    assert cache.counts(NOW + 10) == (2, 1)
    assert cache.counts(NOW + 25) == (1, 2)
    cache.put(key("a.test"), prepared("a.test", ttl=60), NOW + 25, 100)  # replaced: counted once
    assert cache.counts(NOW + 25) == (2, 1) and len(cache) == 3
    assert cache.remove(key("b.test")) and not cache.remove(key("b.test"))
    assert cache.counts(NOW + 25) == (2, 0)
    for name in ("d.test", "e.test", "f.test", "g.test"):  # over max_entries: LRU evictions
        cache.put(key(name), prepared(name, ttl=5), NOW + 25, 100)
    assert len(cache) == 5 and cache.counts(NOW + 25) == brute(cache, NOW + 25) == (5, 0)
    cache.resize(2)
    assert cache.counts(NOW + 31) == brute(cache, NOW + 31) == (0, 2)
    assert cache.lookup(key("f.test"), NOW + 1000)[0] == "miss"  # past the stale window: deleted
    assert cache.counts(NOW + 1000) == brute(cache, NOW + 1000)
    cache.clear()
    assert cache.counts(NOW) == (0, 0)


def test_counts_match_a_scan_under_random_churn():
    rng = random.Random(6)
    cache = Cache(200)
    now = NOW
    for step in range(3000):
        name = f"n{rng.randrange(400)}.test"
        op = rng.random()
        if op < 0.7:
            cache.put(key(name), prepared(name, ttl=rng.randrange(1, 60)), now, 30)
        elif op < 0.8:
            cache.remove(key(name))
        elif op < 0.9:
            cache.lookup(key(name), now)
        else:
            cache.sweep(now, budget=50)
        now += rng.random()
        if step % 100 == 0:  # exact at whole seconds; between them, to the second
            assert cache.counts(float(int(now))) == brute(cache, float(int(now)))
            fresh, _ = cache.counts(now)
            assert brute(cache, now)[0] <= fresh <= brute(cache, float(int(now)))[0]
    # Bounded by distinct expiry seconds, never by the number of entries ever stored.
    assert len(cache._expiry) <= len(cache)


def test_counts_cost_does_not_grow_with_entries():
    """A million entries with TTLs from a small set: the count walks a few buckets."""
    cache = Cache(1_000_000)
    p = [prepared("x.test", ttl=t) for t in (60, 300, 3600)]
    for i in range(30_000):
        cache.put(question(f"h{i}.test"), p[i % 3], NOW, 100)
    assert len(cache._expiry) == 3
    assert cache.counts(NOW + 100) == (20_000, 10_000)


def test_hit_tally_cells_are_shared_by_type_and_rcode_and_survive_eviction():
    tally = HitTally()
    cache = Cache(2, tally)
    a1 = cache.put(key("a.test"), prepared("a.test"), NOW, 100)
    a2 = cache.put(key("b.test"), prepared("b.test"), NOW, 100)
    nx = cache.put(key("c.test"), negative("c.test"), NOW, 100)  # evicts a.test
    assert a1.tally is a2.tally and nx.tally is not a1.tally
    a1.tally.fresh += 2
    nx.tally.stale += 1
    assert (tally.cells[("A", "NOERROR")].fresh, tally.cells[("A", "NXDOMAIN")].stale) == (2, 1)
    assert tally.fresh_hits() == 2 and tally.stale_hits() == 1  # a.test's hits outlive it
    assert tally.cell(question("x.test", QTYPE.HTTPS), 0) is tally.cells[("HTTPS", "NOERROR")]
    assert tally.cell(question("x.test", 4242), 99) is tally.cells[("other", "other")]
    assert tally.cell(b"", 0) is tally.cells[("other", "NOERROR")]  # garbage key: never raises
    assert len(tally.cells) == 5
