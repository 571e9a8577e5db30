"""Unit tests for resolver.cache: deadlines, LRU, sweeping, interning, per-second aging."""

from __future__ import annotations

import math

import pytest
from dnslib import DNSRecord

from resolver import wire
from resolver.cache.store import FRESH, MISS, STALE, Cache, Entry
from resolver.clock import FakeClock
from tests.support.packets import key, negative, prepared, question


def ttls_of(entry: Entry, body: bytes) -> list[int]:
    msg = b"\x00\x01" + entry.hdr + question("www.example.com") + body
    return [rr.ttl for rr in DNSRecord.parse(msg).rr]


@pytest.fixture
def clock():
    return FakeClock(1000.0)


# ------------------------------------------------------------ fresh/stale/miss
def test_fresh_then_stale_then_miss(clock):
    cache = Cache(10)
    k = key("www.example.com")
    entry = cache.put(k, prepared(ttl=60), clock.monotonic(), max_stale=100)
    assert (entry.stored_at, entry.fresh_until, entry.stale_until, entry.recheck_until) == (1000, 1060, 1160, 0)
    assert cache.lookup(k, clock.monotonic()) == (FRESH, entry)
    clock.advance(59.999)
    assert cache.lookup(k, clock.monotonic()) == (FRESH, entry)
    clock.advance(0.001)  # exactly fresh_until: expired
    assert cache.lookup(k, clock.monotonic()) == (STALE, entry)
    clock.advance(99.9)
    assert cache.lookup(k, clock.monotonic()) == (STALE, entry)
    assert len(cache) == 1
    clock.advance(0.1)  # exactly stale_until: gone
    assert cache.lookup(k, clock.monotonic()) == (MISS, None)
    assert len(cache) == 0 and cache.get(k) is None
    assert cache.evictions == 0  # expiry is not an eviction


def test_no_stale_window_goes_straight_to_miss(clock):
    cache = Cache(10)
    k = key("www.example.com")
    cache.put(k, prepared(ttl=60), clock.monotonic(), max_stale=0)
    clock.advance(60)
    assert cache.lookup(k, clock.monotonic()) == (MISS, None)
    assert k not in cache.entries


def test_lookup_of_unknown_key_is_miss(clock):
    assert Cache(10).lookup(b"nope", clock.monotonic()) == (MISS, None)


def test_put_replaces_entry_and_deadlines(clock):
    cache = Cache(10)
    k = key("www.example.com")
    old = cache.put(k, prepared(ttl=60), clock.monotonic(), 100)
    old.recheck_until = 2000.0
    clock.advance(70)
    new = cache.put(k, prepared(ttl=30), clock.monotonic(), 100)
    assert new is not old and cache.get(k) is new and len(cache) == 1
    assert new.fresh_until == 1100 and new.stale_until == 1200 and new.recheck_until == 0


def test_negative_entry_deadlines(clock):
    cache = Cache(10)
    entry = cache.put(key("nx.example.com"), negative(ttl=120), clock.monotonic(), 50)
    assert entry.kind == wire.NEGATIVE_NXDOMAIN and entry.rcode == 3
    assert entry.fresh_until == 1120 and entry.stale_until == 1170
    assert (entry.fresh_until - clock.monotonic()) == 120


# ------------------------------------------------------------------------ LRU
def test_lru_evicts_least_recently_used(clock):
    cache = Cache(3)
    for name in ("a.test", "b.test", "c.test"):
        cache.put(key(name), prepared(name), clock.monotonic(), 0)
    cache.touch(key("a.test"))  # a is now the youngest; b the oldest
    cache.put(key("d.test"), prepared("d.test"), clock.monotonic(), 0)
    assert list(cache.entries) == [key("c.test"), key("a.test"), key("d.test")]
    assert cache.evictions == 1
    cache.put(key("e.test"), prepared("e.test"), clock.monotonic(), 0)
    assert key("c.test") not in cache.entries and cache.evictions == 2
    assert len(cache) == 3


def test_re_put_moves_to_young_end_without_eviction(clock):
    cache = Cache(3)
    for name in ("a.test", "b.test", "c.test"):
        cache.put(key(name), prepared(name), clock.monotonic(), 0)
    cache.put(key("a.test"), prepared("a.test"), clock.monotonic(), 0)
    assert list(cache.entries) == [key("b.test"), key("c.test"), key("a.test")]
    assert cache.evictions == 0
    cache.put(key("d.test"), prepared("d.test"), clock.monotonic(), 0)
    assert key("b.test") not in cache.entries and key("a.test") in cache.entries


def test_touch_unknown_key_is_harmless():
    cache = Cache(3)
    cache.touch(b"missing")
    assert len(cache) == 0


def test_remove_and_clear(clock):
    cache = Cache(3)
    cache.put(key("a.test"), prepared("a.test"), clock.monotonic(), 0)
    cache.put(key("b.test"), prepared("b.test"), clock.monotonic(), 0)
    assert cache.remove(key("a.test")) is True
    assert cache.remove(key("a.test")) is False
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0 and cache.evictions == 0


def test_resize_shrinks_oldest_first_and_counts_evictions(clock):
    cache = Cache(5)
    names = [f"{c}.test" for c in "abcde"]
    for name in names:
        cache.put(key(name), prepared(name), clock.monotonic(), 0)
    cache.resize(2)
    assert list(cache.entries) == [key("d.test"), key("e.test")]
    assert cache.evictions == 3 and cache.max_entries == 2
    cache.resize(10)  # growing evicts nothing
    assert len(cache) == 2 and cache.evictions == 3
    for name in names:
        cache.put(key(name), prepared(name), clock.monotonic(), 0)
    assert len(cache) == 5


# ---------------------------------------------------------------- sweep/counts
def test_sweep_removes_only_dead_entries(clock):
    cache = Cache(100)
    now = clock.monotonic()
    cache.put(key("short.test"), prepared("short.test", ttl=10), now, 0)      # dead at 1010
    cache.put(key("stale.test"), prepared("stale.test", ttl=10), now, 100)    # stale until 1110
    cache.put(key("long.test"), prepared("long.test", ttl=500), now, 0)       # fresh until 1500
    cache.put(key("short2.test"), prepared("short2.test", ttl=20), now, 5)    # dead at 1025
    assert cache.sweep(now) == 0
    clock.advance(30)
    assert cache.sweep(clock.monotonic()) == 2
    assert set(cache.entries) == {key("stale.test"), key("long.test")}
    assert cache.evictions == 0
    clock.advance(100)
    assert cache.sweep(clock.monotonic()) == 1
    assert set(cache.entries) == {key("long.test")}


def test_sweep_budget_bounds_the_work(clock):
    cache = Cache(100)
    for i in range(10):
        cache.put(key(f"n{i}.test"), prepared(f"n{i}.test", ttl=1), clock.monotonic(), 0)
    clock.advance(5)
    assert cache.sweep(clock.monotonic(), budget=4) == 4
    assert len(cache) == 6
    assert key("n0.test") not in cache.entries and key("n4.test") in cache.entries  # oldest first
    assert cache.sweep(clock.monotonic()) == 6 and len(cache) == 0


def test_counts(clock):
    cache = Cache(100)
    assert cache.counts(clock.monotonic()) == (0, 0)
    now = clock.monotonic()
    cache.put(key("a.test"), prepared("a.test", ttl=10), now, 100)
    cache.put(key("b.test"), prepared("b.test", ttl=50), now, 100)
    cache.put(key("c.test"), prepared("c.test", ttl=100), now, 100)
    assert cache.counts(now) == (3, 0)
    assert cache.counts(now + 10) == (2, 1)
    assert cache.counts(now + 60) == (1, 2)
    assert cache.counts(now + 1000) == (0, 3)  # counts() reports, it does not drop


# ------------------------------------------------------------------ interning
def test_identical_headers_and_offsets_are_shared(clock):
    cache = Cache(100)
    e1 = cache.put(key("a.test"), prepared("a.test", ip="192.0.2.1"), clock.monotonic(), 0)
    e2 = cache.put(key("b.test"), prepared("b.test", ip="192.0.2.2"), clock.monotonic(), 0)
    p3 = prepared("c.test", ip="192.0.2.3")
    assert p3.hdr == e1.hdr and p3.hdr is not e1.hdr
    e3 = cache.put(key("c.test"), p3, clock.monotonic(), 0)
    assert e1.hdr is e2.hdr is e3.hdr
    assert e1.hdr_opt is e2.hdr_opt is e3.hdr_opt
    assert e1.ttl_offsets == e2.ttl_offsets  # same names length → same offsets
    assert e1.ttl_offsets is e2.ttl_offsets
    assert e1.body != e2.body  # bodies are per entry


def test_different_headers_are_not_merged(clock):
    cache = Cache(100)
    pos = cache.put(key("a.test"), prepared("a.test"), clock.monotonic(), 0)
    two = cache.put(key("b.test"), prepared("b.test", extra_ttl=30), clock.monotonic(), 0)
    nx = cache.put(key("nx.test"), negative("nx.test"), clock.monotonic(), 0)
    assert pos.hdr != two.hdr != nx.hdr
    assert len({pos.hdr, two.hdr, nx.hdr}) == 3


def test_intern_table_is_bounded(clock):
    cache = Cache(10_000)
    for i in range(3000):
        cache.put(key(f"n{i}.test"), prepared(f"n{i}.test", extra_ttl=30 if i % 2 else None), clock.monotonic(), 0)
    assert len(cache._interned) <= 4096 + 3  # cleared once past 4096
    e = cache.get(key("n2999.test"))
    assert e is not None and ttls_of(e, e.body)


# ------------------------------------------------------------- per-second aging
def test_aged_body_is_computed_once_per_second(clock):
    cache = Cache(10)
    entry = cache.put(key("www.example.com"), prepared(ttl=60, extra_ttl=30), clock.monotonic(), 0)
    assert entry.aged_until == clock.monotonic() and entry.aged is entry.body
    now = clock.monotonic()
    first = entry.aged_body(now)
    assert entry.aged_body(now) is first  # the same instant: same object, not recomputed
    assert entry.aged is first and first is entry.body
    assert ttls_of(entry, first) == [60, 30]
    clock.advance(0.4)
    second = entry.aged_body(clock.monotonic())  # 0.4 s cached: 59.6 s left → 59
    assert second is not first and entry.aged_until == now + 1
    assert ttls_of(entry, second) == [59, 29]
    clock.advance(0.6)  # exactly 1 s: still 59 whole seconds left, same copy
    assert entry.aged_body(clock.monotonic()) is second
    clock.advance(45)
    assert ttls_of(entry, entry.aged_body(clock.monotonic())) == [14, 0]
    assert ttls_of(entry, entry.body) == [60, 30]  # the stored body is never changed


def test_aged_body_with_fractional_store_time():
    clock = FakeClock(1000.6)
    cache = Cache(10)
    entry = cache.put(key("www.example.com"), prepared(ttl=60), clock.monotonic(), 0)
    # The age is the real age rounded up to whole seconds, so the TTL served is the
    # whole seconds that really remain: never more (RFC 1035 §3.2.1), never 1 s less.
    for advance, real_age in ((0.3, 0.3), (0.5, 0.8), (1.0, 1.8), (0.3, 2.1), (57.5, 59.6)):
        clock.advance(advance)
        ttl = ttls_of(entry, entry.aged_body(clock.monotonic()))[0]
        assert ttl == math.floor(60 - real_age + 1e-9), (real_age, ttl)


def test_stale_answer_body_is_cached(clock):
    cache = Cache(10)
    entry = cache.put(key("www.example.com"), prepared(ttl=60, extra_ttl=5), clock.monotonic(), 100)
    body = entry.stale_answer_body(30)
    assert entry.stale_answer_body(30) is body
    assert ttls_of(entry, body) == [30, 30]
