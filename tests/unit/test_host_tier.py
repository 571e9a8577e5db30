"""Unit tests for the host cache tier (resolver/cache/host.py) behind the in-process cache.

A real LMDB file in tmp_path, a FakeClock, and the writer driven by hand
(``_flush``/``sweep``) instead of its thread, so nothing sleeps.  Two `Cache`
objects over one `HostTier` stand for two workers' L1 caches (LMDB forbids opening
one file twice in a process; real workers are separate processes, see
tests/integration/test_host_tier.py); a process and its successor are a tier
stopped and the file opened again (``reopen``).
"""

from __future__ import annotations

import logging
import struct

import lmdb
import pytest

from resolver import wire
from resolver.cache import snapshot
from resolver.cache.host import HostTier
from resolver.cache.store import FRESH, MISS, STALE, Cache
from resolver.clock import FakeClock
from resolver.config import PersistConfig
from tests.support.packets import key, negative, prepared

MAX_STALE = 1000.0


def tier(path, clock, **kw) -> HostTier:
    t = HostTier(PersistConfig(path=str(path), map_size=kw.pop("map_size", 16 << 20),
                               max_bytes=kw.pop("max_bytes", 8 << 20), **kw), clock)
    assert t.open()
    return t


def reopen(t: HostTier, clock, **kw) -> HostTier:
    """The next process: this one's tier closed (its queue written), the file opened anew."""
    t.stop()
    return tier(t.config.path, clock, **kw)


def cache_over(t: HostTier, size: int = 100) -> Cache:
    cache = Cache(size)
    cache.lower = t
    return cache


def test_an_entry_learnt_by_one_worker_is_served_by_another_with_its_deadlines(tmp_path):
    clock = FakeClock()
    a = b = tier(tmp_path / "c.lmdb", clock)
    ca, cb = cache_over(a), cache_over(b)
    stored = ca.put(key("www.example.com"), prepared("www.example.com", ttl=60), clock.monotonic(), MAX_STALE)
    assert cb.lookup(key("www.example.com"), clock.monotonic()) == (MISS, None)  # not written yet
    a._flush()
    state, entry = cb.lookup(key("www.example.com"), clock.monotonic())
    assert state == FRESH and entry.body == stored.body and entry.hdr == stored.hdr
    assert entry.fresh_until == pytest.approx(stored.fresh_until, abs=1e-3)
    assert entry.stale_until == pytest.approx(stored.stale_until, abs=1e-3)
    assert key("www.example.com") in cb.entries  # adopted: the next hit is L1's dict lookup
    assert (b.stats.hits, b.stats.misses, cb.misses) == (1, 1, 2)
    assert key("www.example.com") not in ca.lower._forgotten


def test_a_stale_entry_from_the_host_tier_is_reported_stale_like_a_local_one(tmp_path):
    clock = FakeClock()
    a = b = tier(tmp_path / "c.lmdb", clock)
    ca = cache_over(a)
    ca.put(key("old.example.com"), prepared("old.example.com", ttl=60), clock.monotonic(), MAX_STALE)
    ca.put(key("nx.example.com"), negative(ttl=60), clock.monotonic(), MAX_STALE)
    a._flush()
    clock.advance(500)  # past expiry, inside the stale window
    cb = cache_over(b)
    state, entry = cb.lookup(key("old.example.com"), clock.monotonic())
    assert state == STALE and entry.recheck_until == 0.0
    assert cb.lookup(key("nx.example.com"), clock.monotonic())[0] == STALE
    clock.advance(600)  # past the stale window: gone, and swept from the file
    assert cache_over(b).lookup(key("old.example.com"), clock.monotonic()) == (MISS, None)
    assert a.sweep(clock.wall()) == 2 and a.entries() == 0


def test_an_own_copy_read_back_does_not_replace_the_entry_or_its_recheck_timer(tmp_path):
    clock = FakeClock()
    t = tier(tmp_path / "c.lmdb", clock)
    cache = cache_over(t)
    k = key("www.example.com")
    cache.put(k, prepared("www.example.com", ttl=60), clock.monotonic(), MAX_STALE)
    t._flush()
    clock.advance(100)
    state, entry = cache.lookup(k, clock.monotonic())
    entry.recheck_until = clock.monotonic() + 30
    assert cache.lookup(k, clock.monotonic()) == (STALE, entry)  # the same object, timer kept


def test_a_fresher_copy_from_another_worker_replaces_an_expired_one(tmp_path):
    clock = FakeClock()
    a = b = tier(tmp_path / "c.lmdb", clock)
    ca, cb = cache_over(a), cache_over(b)
    k = key("www.example.com")
    ca.put(k, prepared("www.example.com", ttl=60), clock.monotonic(), MAX_STALE)
    clock.advance(100)
    newer = cb.put(k, prepared("www.example.com", ttl=60), clock.monotonic(), MAX_STALE)
    b._flush()
    state, entry = ca.lookup(k, clock.monotonic())
    assert state == FRESH and entry.fresh_until == pytest.approx(newer.fresh_until, abs=1e-3)


def test_what_was_written_survives_a_new_process_and_failures_are_not_written(tmp_path):
    clock = FakeClock()
    t = tier(tmp_path / "c.lmdb", clock)
    cache = cache_over(t)
    cache.put(key("a.example.com"), prepared("a.example.com", ttl=60), clock.monotonic(), MAX_STALE)
    cache.put(key("fail.example.com"), wire.failure_prepared(wire.SERVFAIL, 1), clock.monotonic(), 0.0)
    t.stop()  # flushes what is queued
    later = FakeClock(start=3.0, wall_start=clock.wall() + 30)
    t2 = tier(tmp_path / "c.lmdb", later)  # (t.stop() above closed it)
    assert t2.entries() == 1
    state, entry = cache_over(t2).lookup(key("a.example.com"), later.monotonic())
    assert state == FRESH and (entry.fresh_until - later.monotonic()) == pytest.approx(30, abs=1e-3)


def test_writes_are_batched_one_transaction_per_batch_last_value_wins(tmp_path):
    clock = FakeClock()
    t = tier(tmp_path / "c.lmdb", clock)
    cache = cache_over(t)
    for i in range(500):
        cache.put(key(f"n{i}.example.com"), prepared(f"n{i}.example.com", ttl=60), clock.monotonic(), MAX_STALE)
    cache.put(key("n0.example.com"), prepared("n0.example.com", ttl=99), clock.monotonic(), MAX_STALE)
    t._flush()
    assert (t.stats.batches, t.stats.writes, t.entries()) == (1, 500, 500)
    entry = cache_over(reopen(t, clock)).lookup(key("n0.example.com"), clock.monotonic())[1]
    assert (entry.fresh_until - clock.monotonic()) == pytest.approx(99, abs=1e-3)


def test_a_full_write_queue_drops_and_counts_but_serving_goes_on(tmp_path):
    clock = FakeClock()
    t = tier(tmp_path / "c.lmdb", clock, write_queue=10)
    cache = cache_over(t)
    for i in range(15):
        cache.put(key(f"n{i}.example.com"), prepared(f"n{i}.example.com", ttl=60), clock.monotonic(), MAX_STALE)
    assert t.stats.dropped == 5 and len(cache) == 15
    t._flush()
    assert t.entries() == 10


def test_max_entries_evicts_the_entries_nearest_the_end_of_their_stale_window(tmp_path):
    clock = FakeClock()
    t = tier(tmp_path / "c.lmdb", clock, max_entries=100)
    cache = cache_over(t, size=1000)
    for i in range(150):  # n0 dies first (shortest TTL), n149 last
        cache.put(key(f"n{i}.example.com"), prepared(f"n{i}.example.com", ttl=100 + i), clock.monotonic(), MAX_STALE)
    t._flush()
    assert t.entries() == 90 and t.stats.evictions == 60  # down to 90% of the bound, not emptied
    other = cache_over(t)
    assert other.lookup(key("n59.example.com"), clock.monotonic()) == (MISS, None)
    assert other.lookup(key("n60.example.com"), clock.monotonic())[0] == FRESH


def test_max_bytes_bounds_the_tier_by_evicting_a_little_at_a_time(tmp_path):
    clock = FakeClock()
    t = tier(tmp_path / "c.lmdb", clock, map_size=1 << 20, max_bytes=800 << 10)
    cache = cache_over(t, size=100_000)
    for round_ in range(20):
        for i in range(500):
            name = f"r{round_}-{i}.example.com"
            cache.put(key(name), prepared(name, ttl=100 + round_ * 10_000 + i), clock.monotonic(), MAX_STALE)
        t._flush()
        assert t.bytes_used() <= 800 << 10
    assert t.stats.evictions > 0 and t.entries() > 2000 and t.stats.write_errors == 0  # evicted, never wiped
    assert cache_over(t).lookup(key("r19-499.example.com"), clock.monotonic())[0] == FRESH


def test_a_full_map_evicts_instead_of_failing_or_wiping(tmp_path):
    clock = FakeClock()
    t = tier(tmp_path / "c.lmdb", clock, map_size=1 << 20, max_bytes=800 << 10)
    cache = cache_over(t, size=100_000)
    for round_ in range(6):  # up to the byte bound
        for i in range(500):
            name = f"r{round_}-{i}.example.com"
            cache.put(key(name), prepared(name, ttl=100 + round_ * 10_000 + i), clock.monotonic(), MAX_STALE)
        t._flush()
    before = t.entries()
    for i in range(4000):  # then one batch larger than the room left in the map: MDB_MAP_FULL
        name = f"big-{i}.example.com"
        cache.put(key(name), prepared(name, ttl=100_000 + i), clock.monotonic(), MAX_STALE)
    t._flush()
    assert t.stats.full >= 1  # the map did fill up
    assert t.entries() >= before // 2  # evicted, never wiped
    assert t.stats.writes >= 3000 + 2000  # most of the big batch went in (some halves may be dropped)
    assert cache_over(t).lookup(key("big-3999.example.com"), clock.monotonic())[0] == FRESH or t.stats.dropped


def test_a_corrupt_or_foreign_value_is_refused_counted_deleted_never_served(tmp_path, caplog):
    clock = FakeClock()
    t = tier(tmp_path / "c.lmdb", clock)
    cache = cache_over(t)
    for name in ("flip.example.com", "foreign.example.com", "moved.example.com"):
        cache.put(key(name), prepared(name, ttl=60), clock.monotonic(), MAX_STALE)
    t._flush()
    with t._env.begin(write=True, db=t._main) as txn:
        good = bytearray(txn.get(key("flip.example.com")))
        txn.put(key("moved.example.com"), bytes(good))  # a valid value under another key
        good[40] ^= 0xFF  # a bit flip inside the record: the CRC catches it
        txn.put(key("flip.example.com"), bytes(good))
        txn.put(key("foreign.example.com"), b"\x00" * 80)  # something else's value
    reader = cache_over(t)
    with caplog.at_level(logging.WARNING, logger="resolver.hostcache"):
        for name in ("flip.example.com", "foreign.example.com", "moved.example.com"):
            assert reader.lookup(key(name), clock.monotonic()) == (MISS, None)
    assert reader.lower.stats.rejected == 3 and reader.lower.stats.hits == 0
    assert len([r for r in caplog.records if r.name == "resolver.hostcache"]) == 1  # one warning
    reader.lower._flush()  # refused values are deleted
    assert reader.lower.entries() == 0


def test_decode_value_refuses_every_truncation_and_version(tmp_path):
    clock = FakeClock()
    cache = Cache(10)
    e = cache.put(key("a.example.com"), prepared("a.example.com", ttl=60), clock.monotonic(), MAX_STALE)
    value = snapshot.encode_value(key("a.example.com"), e, clock.wall() - clock.monotonic())
    assert snapshot.decode_value(value)[0] == key("a.example.com")
    for cut in range(len(value)):
        with pytest.raises(snapshot.SnapshotError):
            snapshot.decode_value(value[:cut])
    other_version = value[:4] + struct.pack(">H", 99) + value[6:]
    with pytest.raises(snapshot.SnapshotError, match="version"):
        snapshot.decode_value(other_version)


def test_a_pinned_entry_is_written_with_a_finite_deadline(tmp_path):
    clock = FakeClock()
    t = tier(tmp_path / "c.lmdb", clock)
    cache = cache_over(t)
    e = cache.put(key("pin.example.com"), prepared("pin.example.com", ttl=60), clock.monotonic(), MAX_STALE)
    e.stale_until = float("inf")  # last-known-good pin (pipeline)
    t._flush()
    got = cache_over(reopen(t, clock)).lookup(key("pin.example.com"), clock.monotonic())[1]
    assert got is not None and got.stale_until > clock.monotonic() + 86_400


def test_flush_reaches_the_host_tier(tmp_path):
    clock = FakeClock()
    t = tier(tmp_path / "c.lmdb", clock)
    cache = cache_over(t)
    for name in ("a.example.com", "b.example.com"):
        cache.put(key(name), prepared(name, ttl=60), clock.monotonic(), MAX_STALE)
    t._flush()
    cache.remove(key("a.example.com"))
    assert cache.lookup(key("a.example.com"), clock.monotonic()) == (MISS, None)  # not re-adopted meanwhile
    t._flush()
    assert t.entries() == 1
    cache.clear()
    assert cache.lookup(key("b.example.com"), clock.monotonic()) == (MISS, None)
    t._flush()
    assert t.entries() == 0


@pytest.mark.parametrize("make", ["foreign", "garbage", "unwritable", "directory"])
def test_an_unusable_path_is_one_warning_and_the_tier_stays_off(tmp_path, caplog, make):
    path = tmp_path / "c.lmdb"
    if make == "foreign":
        path.write_text("# not a cache, someone's notes\n" * 100)
    elif make == "garbage":
        path.write_bytes(bytes(range(256)) * 64)
    elif make == "unwritable":
        # A path that cannot be created even by root (tests run as root here, which
        # ignores directory modes): its "directory" is a regular file.
        (tmp_path / "state").write_text("x")
        path = tmp_path / "state" / "c.lmdb"
    else:
        path.mkdir()
    t = HostTier(PersistConfig(path=str(path)), FakeClock())
    with caplog.at_level(logging.WARNING, logger="resolver.hostcache"):
        assert not t.open() and not t.enabled
    assert [r.levelno for r in caplog.records if r.name == "resolver.hostcache"] == [logging.WARNING]
    assert t.stats.open_failures == 1
    cache = cache_over(t)  # serving from memory: lookups and puts work, nothing is written
    cache.put(key("a.example.com"), prepared("a.example.com", ttl=60), 1000.0, MAX_STALE)
    assert cache.lookup(key("a.example.com"), 1000.0)[0] == FRESH
    if make in ("foreign", "garbage"):
        assert path.read_bytes()[:10] in (b"# not a ca", bytes(range(10)))  # left as it was


def test_lmdb_is_the_engine(tmp_path):
    """The file is a plain LMDB environment (one file + its lock file), readable by LMDB tools."""
    clock = FakeClock()
    t = tier(tmp_path / "c.lmdb", clock)
    t.stop()
    env = lmdb.open(str(tmp_path / "c.lmdb"), subdir=False, max_dbs=2, readonly=True)
    env.close()
    assert (tmp_path / "c.lmdb-lock").exists()


@pytest.mark.parametrize("flush", ["name=gone.example.com", "zone=example.com"])
def test_a_name_or_zone_flush_reaches_what_other_workers_wrote(tmp_path, flush):
    """``resolver ctl flush NAME`` (every type) or ``--zone`` in one worker must also drop the
    host tier's copies — including types and names this worker never held — or they come
    back on the next miss until they expire."""
    from resolver.ops import cacheadmin

    clock = FakeClock()
    t = tier(tmp_path / "c.lmdb", clock)
    other, this = cache_over(t), cache_over(t)
    for name in ("gone.example.com", "sub.gone.example.com"):
        other.put(key(name), prepared(name, ttl=60), clock.monotonic(), MAX_STALE)
    other.put(key("kept.test"), prepared("kept.test", ttl=60), clock.monotonic(), MAX_STALE)
    t._flush()
    status, _ = cacheadmin.flush(this, flush)
    assert status == 200
    assert this.lookup(key("gone.example.com"), clock.monotonic()) == (MISS, None)  # at once, before the write
    t._flush()
    fresh = cache_over(t)
    gone_sub = flush.startswith("zone")
    assert fresh.lookup(key("gone.example.com"), clock.monotonic()) == (MISS, None)
    assert (fresh.lookup(key("sub.gone.example.com"), clock.monotonic())[0] == MISS) == gone_sub
    assert fresh.lookup(key("kept.test"), clock.monotonic())[0] == FRESH
