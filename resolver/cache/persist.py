"""When the cache snapshot is loaded and saved, without stalling the event loop.

The format lives in ``snapshot.py``; this module decides *when*: load once at
start, before the listeners open (so the first query after a restart — even one
in the middle of an upstream outage — can be answered from the snapshot), save
every ``interval`` and once more at clean shutdown.

Saving a million entries takes about a second of CPU.  It runs on the event loop
in slices of ``SLICE`` entries with a yield between them, and only the framing
(a CRC over the payload) and the file write with its fsyncs go to a thread, as
both release the GIL.  Serialising in a thread instead was measured far worse:
the serialiser holds the GIL against the listeners, and its long C calls (one
join of the whole payload) hold it throughout.  ``bench/snapshot.py`` measures
both (longest loop stall, total time); numbers in README "Snapshot engine".

Failures never stop serving: a bad snapshot at load is one warning and an empty
cache; a failed save is one warning and a counted failure per attempt.
"""

from __future__ import annotations

import asyncio
import gc
import logging

from ..clock import Clock
from ..config import PersistConfig
from . import snapshot
from .store import Cache

log = logging.getLogger("resolver.persist")

SLICE = 2_000  # entries serialised per loop turn: 1-3 ms of work


class PersistStats:
    """Plain counters, read by the metrics collector at scrape time."""

    __slots__ = ("saves", "save_failures", "last_save_wall", "last_save_entries", "last_save_bytes",
                 "last_save_seconds", "loaded_entries", "load_failures")

    def __init__(self):
        self.saves = 0
        self.save_failures = 0
        self.last_save_wall = 0.0
        self.last_save_entries = 0
        self.last_save_bytes = 0
        self.last_save_seconds = 0.0
        self.loaded_entries = 0
        self.load_failures = 0


class Persister:
    """Loads and saves one cache to ``config.path``.  ``writer=False``: load only (workers > 0)."""

    def __init__(self, cache: Cache, clock: Clock, config: PersistConfig, writer: bool = True):
        self.cache = cache
        self.clock = clock
        self.config = config
        self.writer = writer
        self.stats = PersistStats()
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    @property
    def stale_temp_age(self) -> float:
        """A temp file untouched this long belongs to no live writer (two save intervals, at least 5 min)."""
        return max(300.0, 2 * self.config.interval)

    @property
    def enabled(self) -> bool:
        return bool(self.config.path)

    def load(self) -> snapshot.LoadResult | None:
        """Restore the snapshot into the cache; on any problem one warning and None."""
        if not self.enabled:
            return None
        if self.writer:
            removed = snapshot.remove_stale_temps(self.config.path, self.clock.wall(), self.stale_temp_age)
            if removed:
                log.info("removed %d unfinished snapshot temp file(s) beside %s", removed, self.config.path)
        started = self.clock.monotonic()
        # Loading builds millions of objects; the cyclic GC would rescan all of
        # them again and again (seconds for 1M entries) to find no garbage.
        gc.disable()
        try:
            result = snapshot.load(self.config.path, self.cache, self.clock.monotonic(), self.clock.wall())
        except snapshot.SnapshotError as exc:
            self.stats.load_failures += 1
            log.warning("cache snapshot %s not loaded, starting with an empty cache: %s", self.config.path, exc)
            return None
        finally:
            gc.enable()
        # The restored entries are long-lived: keep later full collections from
        # rescanning them (they are still freed by reference counting on eviction).
        gc.freeze()
        self.stats.loaded_entries = result.restored
        log.info("cache snapshot %s: restored %d entries (%d past their stale window, %d skipped) in %.2fs",
                 self.config.path, result.restored, result.expired, result.skipped, self.clock.monotonic() - started)
        return result

    async def save(self) -> bool:
        """Write the snapshot now (one at a time); False, logged and counted, on failure."""
        if not (self.enabled and self.writer):
            return False
        async with self._lock:
            started = self.clock.monotonic()
            path = self.config.path
            try:
                parts, count = await self._serialise()
                # Framing (a CRC over the whole payload) and the write with its
                # fsyncs run in a thread: both release the GIL.
                written_at = self.clock.wall()
                write = asyncio.ensure_future(asyncio.to_thread(
                    lambda: snapshot.write_atomic(path, snapshot.frame(parts, count, written_at))))
                try:
                    size = await asyncio.shield(write)
                except asyncio.CancelledError:
                    # A thread cannot be stopped: hold the lock until it is done, so the
                    # final save at shutdown cannot race it and be overtaken by it.
                    await asyncio.wait([write])
                    raise
            except OSError as exc:
                self.stats.save_failures += 1
                log.warning("cannot write cache snapshot %s: %s", path, exc.strerror or exc)
                return False
            self.stats.saves += 1
            self.stats.last_save_wall = self.clock.wall()
            self.stats.last_save_entries = count
            self.stats.last_save_bytes = size
            self.stats.last_save_seconds = self.clock.monotonic() - started
            log.debug("cache snapshot %s: %d entries, %d bytes", path, count, size)
            return True

    async def _serialise(self) -> tuple[list[bytes], int]:
        """Encode the cache in slices, yielding to the loop between them.

        Only references are copied up front (the cache changes between slices),
        as two flat lists read in the underlying dict's order: ``list(items())``
        would allocate a million tuples and trigger full garbage collections
        (1-2 s with a million live entries), and walking the OrderedDict's own
        linked list is 6x slower than the dict's array.  The price: the file is
        in first-insertion order rather than exact LRU order, which only matters
        when a restart shrinks max_entries.  An entry replaced while we encode is
        written as it was: a snapshot is a point in time, slightly blurred.
        """
        entries = self.cache.entries
        keys, values = list(dict.keys(entries)), list(dict.values(entries))
        wall_offset = self.clock.wall() - self.clock.monotonic()
        parts, count = [], 0
        for start in range(0, len(keys), SLICE):
            ks, vs = keys[start:start + SLICE], values[start:start + SLICE]
            parts.append(snapshot.encode_records(ks, vs, wall_offset))
            count += snapshot.count_records(ks, vs)
            await asyncio.sleep(0)
        return parts, count

    def start(self) -> None:
        """Begin periodic saves (no-op when off or not the writer)."""
        if self.enabled and self.writer and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._periodic())

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval)
            try:
                await self.save()
            except Exception:  # background task boundary
                self.stats.save_failures += 1
                log.exception("cache snapshot failed")

    async def stop(self) -> None:
        """Stop periodic saves and write the final snapshot (clean shutdown)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.save()

    def reconfigure(self, config: PersistConfig) -> None:
        """A reload may change the path or the interval (or turn saving on); the next save uses them."""
        if self._task is not None and config.interval != self.config.interval:
            self._task.cancel()
            self._task = None
        self.config = config
        if self._task is None:
            self.start()
