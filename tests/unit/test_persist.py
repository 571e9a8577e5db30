"""Unit tests for resolver.persist: save/load through a real file, failures counted, never raised."""

from __future__ import annotations

import asyncio

from resolver.cache.persist import SLICE, Persister
from resolver.cache.store import Cache
from resolver.clock import FakeClock
from resolver.config import PersistConfig
from tests.support.packets import key, prepared


def fill(cache: Cache, clock: FakeClock, n: int) -> None:
    p = prepared(ttl=300)
    for i in range(n):
        cache.put(key(f"h{i}.example.com"), p, clock.monotonic(), 100)


def test_save_then_load_in_a_new_process(tmp_path):
    clock = FakeClock()
    cache = Cache(10_000)
    fill(cache, clock, 2 * SLICE + 7)  # several slices
    saver = Persister(cache, clock, PersistConfig(path=str(tmp_path / "c.snap")))
    assert asyncio.run(saver.save())
    assert saver.stats.saves == 1 and saver.stats.last_save_entries == 2 * SLICE + 7
    later = FakeClock(start=3.0, wall_start=clock.wall() + 10)
    target = Cache(10_000)
    loader = Persister(target, later, PersistConfig(path=str(tmp_path / "c.snap")))
    result = loader.load()
    assert result.restored == 2 * SLICE + 7 and loader.stats.loaded_entries == result.restored
    assert set(target.entries) == set(cache.entries)
    for slot in target.entries[key("h0.example.com")].__slots__:  # every field set, for the hit path
        getattr(target.entries[key("h0.example.com")], slot)


def test_unwritable_path_counts_a_failure_per_attempt(tmp_path):
    clock = FakeClock()
    cache = Cache(10)
    fill(cache, clock, 3)
    saver = Persister(cache, clock, PersistConfig(path=str(tmp_path / "no" / "c.snap")))
    assert not asyncio.run(saver.save())
    assert not asyncio.run(saver.save())
    assert saver.stats.save_failures == 2 and saver.stats.saves == 0


def test_only_the_writer_writes_and_off_means_off(tmp_path):
    clock = FakeClock()
    path = tmp_path / "c.snap"
    reader = Persister(Cache(10), clock, PersistConfig(path=str(path)), writer=False)
    assert not asyncio.run(reader.save()) and not path.exists()
    off = Persister(Cache(10), clock, PersistConfig(path=""))
    assert off.load() is None and not asyncio.run(off.save())
    assert off.stats.load_failures == 0


def test_missing_file_is_one_failure_not_an_exception(tmp_path):
    loader = Persister(Cache(10), FakeClock(), PersistConfig(path=str(tmp_path / "none")))
    assert loader.load() is None and loader.stats.load_failures == 1


def test_final_save_waits_for_a_cancelled_periodic_write(tmp_path, monkeypatch):
    """Stop cancels the periodic task mid-write; the final save must not overlap that write."""
    import threading
    import time

    from resolver.cache import snapshot

    clock = FakeClock()
    cache = Cache(10)
    fill(cache, clock, 3)
    saver = Persister(cache, clock, PersistConfig(path=str(tmp_path / "c.snap"), interval=0.01))
    spans, lock = [], threading.Lock()
    real = snapshot.write_atomic

    def slow_write(path, parts):
        start = time.monotonic()
        time.sleep(0.3)
        size = real(path, parts)
        with lock:
            spans.append((start, time.monotonic()))
        return size

    monkeypatch.setattr(snapshot, "write_atomic", slow_write)

    async def scenario():
        saver.start()
        await asyncio.sleep(0.1)  # the periodic save is now inside the slow write
        await saver.stop()

    asyncio.run(scenario())
    assert len(spans) == 2
    (s1, e1), (s2, e2) = sorted(spans)
    assert e1 <= s2  # one after the other, never both at once


def test_load_removes_temp_files_a_killed_writer_left(tmp_path):
    import os

    path = tmp_path / "cache.snap"
    left = tmp_path / "cache.snap.tmp.999999"
    left.write_bytes(b"half")
    clock = FakeClock()
    os.utime(left, (clock.wall() - 3600, clock.wall() - 3600))
    Persister(Cache(10), clock, PersistConfig(path=str(path)), writer=True).load()
    assert not left.exists()
