"""The host cache tier (L2): one LMDB file shared by every worker and by the next process.

Why LMDB: it is made for exactly this — an embedded, crash-safe (copy-on-write
B+tree, a commit is atomic), multi-process store whose readers never wait for the
writer and read through a shared memory map; Knot Resolver keeps its whole cache
in it, shared by its workers, for the same reasons.  Its pitfalls, and what this
module does about each:

* **Reader slots leaked by a killed process** (SIGKILL, OOM): ``reader_check()`` at
  open clears the slots of dead processes, so they cannot fill the reader table
  or pin old pages for ever.
* **One writer at a time** (across processes): writes never happen on the event
  loop.  ``Cache.put`` appends to a bounded queue (``enqueue``: a deque append);
  a writer thread drains it every ``write_interval`` into *one* transaction per
  batch (the last value per key wins), so a worker holds the write lock for a
  batch, not per entry, and serving never waits for it.
* **A fixed map size** (``map_size``): configured; the file is sparse, so a large
  map costs address space, not disk.  ``max_entries`` / ``max_bytes`` bound what is
  kept well inside it.
* **A full map**: evict (the entries nearest the end of their stale window go
  first, see ``_evict``), retry once; never wipe everything.

Values are the snapshot's record encoding (``snapshot.encode_value``: magic,
version, CRC, wall-clock deadlines) parsed by the same trust-nothing parser, so a
corrupt or foreign value is refused and counted, never served.  Keys are the
cache key (the question with its DO/CD flag byte).  One table, no secondary
index: a write is one ``put`` (an index by deadline doubled the write cost of a
miss, measured with bench/misspath.py).  The sweep walks the table a slice at a
time from where it stopped (a full pass takes about a minute);
eviction samples ``EVICT_SAMPLE`` times as many entries as it must remove, from
where the last one stopped, and removes those nearest the end of their stale
window — least useful first, approximately (as Redis samples for its LRU): an
entry is rewritten by whichever worker fetches it again, so a name in use keeps
moving its deadline forward.

Failures never stop serving: a file that cannot be opened (foreign, corrupt,
unwritable, unreadable) is one warning and the process runs on its in-process
cache alone; write errors (disk full) drop that batch, are counted and logged
at most once a minute; a damaged store found while reading turns the tier off
with one warning.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import struct
import threading
import time

import lmdb

from ..clock import Clock
from ..config import PersistConfig
from . import snapshot
from .store import Entry

log = logging.getLogger("resolver.hostcache")

MAX_READERS = 126  # LMDB's default; each worker holds at most two (its loop, its writer)
WRITE_BATCH = 10_000  # entries per write transaction at most
MIN_SPLIT = 64  # a failed batch is halved down to this size, then dropped
SWEEP_EVERY = 2.0  # seconds between sweep slices (entries past their stale window) ...
SWEEP_SLICE = 20_000  # ... of this many entries (~6 ms in the writer): 1M entries in under 2 minutes.
# Dead entries are harmless meanwhile: never served, and the first to be evicted.
DELETE_BUDGET = 5_000  # entries deleted per transaction (bounded write-lock hold)
EVICT_SAMPLE = 4  # eviction looks at this many entries per entry it removes
EVICT_TO = 0.9  # eviction brings the tier down to this fraction of its bound
LOG_EVERY = 60.0  # write failures are logged at most this often
MAIN_DB = b"entries"


class HostTierStats:
    """Plain counters, read by the metrics collector at scrape time."""

    __slots__ = ("hits", "misses", "rejected", "writes", "batches", "dropped", "write_errors",
                 "evictions", "swept", "write_lag", "open_failures", "enabled", "full")

    def __init__(self):
        self.hits = 0  # lookups answered by an entry from the host tier
        self.misses = 0  # lookups the host tier could not answer (absent, or past its stale window)
        self.rejected = 0  # values refused by the parser (corrupt, foreign, another version)
        self.writes = 0  # entries written
        self.batches = 0  # write transactions committed
        self.dropped = 0  # entries not written: the queue was full or the batch failed
        self.write_errors = 0  # write transactions that failed (disk full, I/O error, map full after eviction)
        self.evictions = 0  # entries removed to stay within max_entries / max_bytes / the map
        self.swept = 0  # entries removed past their stale window
        self.write_lag = 0.0  # seconds from enqueue to commit, oldest entry of the last batch
        self.open_failures = 0
        self.full = 0  # write transactions refused for want of room (map or disk full): eviction follows
        self.enabled = False  # the tier is open and in use


class HostTier:
    """The lower cache level; ``fetch`` on the loop, writes in a thread."""

    def __init__(self, config: PersistConfig, clock: Clock):
        self.config = config
        self.clock = clock
        self.stats = HostTierStats()
        self._env: lmdb.Environment | None = None
        self._main = None
        self._sweep_at = b""  # where the sweep and the eviction sampling go on from (a key)
        self._evict_at = b""
        # (key, entry or None = delete, monotonic enqueue time); bounded by config.write_queue.
        self._queue: collections.deque = collections.deque()
        self._forgotten: set[bytes] = set()  # deleted here, not yet committed: never read back
        self._clear_pending = False
        # Operator flushes of every type of a name, or of a zone: key predicates the
        # writer applies with one cursor walk; until then matching keys read as misses.
        self._forget_where: list = []
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_logged = -LOG_EVERY
        self._last_sweep = time.monotonic()  # not at once: a start must not scan a big file

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> bool:
        """Open (create) the store; on any problem one warning, and the tier stays off."""
        path = self.config.path
        try:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            env = lmdb.open(path, subdir=False, map_size=self.config.map_size, max_dbs=1,
                            max_readers=MAX_READERS, readahead=False, meminit=False,
                            lock=True, writemap=False)
        except (lmdb.Error, OSError) as exc:
            return self._open_failed(exc)
        try:
            # A file shorter than the pages its meta page claims (truncated by a full
            # disk in a copy, a bad restore): reading such a page through the map would
            # be SIGBUS, a crash no exception handler can catch.  Refuse it here.
            needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
            size = os.stat(path).st_size
            if size < needed:
                raise lmdb.CorruptedError(f"truncated: {size} bytes, its pages need {needed}")
            # Slots of processes that died holding a read transaction (SIGKILL, OOM).
            cleared = env.reader_check()
            main = env.open_db(MAIN_DB)
        except (lmdb.Error, OSError) as exc:
            env.close()
            return self._open_failed(exc)
        self._env, self._main = env, main
        self.stats.enabled = True
        log.info("host cache tier %s: %d entries (%d stale reader slots cleared)", path, self.entries(), cleared)
        return True

    def _open_failed(self, exc: BaseException) -> bool:
        self.stats.open_failures += 1
        log.warning("host cache tier %s not used, serving from the in-process cache only: %s",
                    self.config.path, _describe(exc))
        return False

    @property
    def enabled(self) -> bool:
        return self._env is not None

    def start(self) -> None:
        """Start the writer thread (no-op when the tier is off)."""
        if self._env is not None and self._thread is None:
            self._thread = threading.Thread(target=self._write_loop, name="host-cache-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Write what is queued, stop the writer and close the store (clean shutdown)."""
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
            self._thread = None
        if self._env is not None:
            self._flush()
            self._env.close()
            self._env = None
            self.stats.enabled = False

    def _disable(self, exc: BaseException) -> None:
        """A damaged store: stop using it (one warning), keep serving from memory."""
        if self._env is None:
            return
        log.warning("host cache tier %s turned off, serving from the in-process cache only: %s",
                    self.config.path, _describe(exc))
        self._env = None  # not closed here: the writer thread may be inside it; the process exit closes it
        self.stats.enabled = False

    # ---------------------------------------------------------------- reads (loop)
    def fetch(self, key: bytes, now: float) -> Entry | None:
        """The entry for ``key`` with monotonic deadlines, or None (absent, past its stale window, refused).

        One read transaction (no lock: LMDB readers never wait for the writer),
        one lookup in the memory map, one parse of a few hundred bytes.
        """
        env = self._env
        if env is None:
            return None
        if key in self._forgotten or self._clear_pending or (
                self._forget_where and any(match(key) for match in self._forget_where)):
            self.stats.misses += 1
            return None
        try:
            with env.begin(db=self._main) as txn:
                value = txn.get(key)
        except lmdb.Error as exc:
            self._disable(exc)
            return None
        if value is None:
            self.stats.misses += 1
            return None
        try:
            record = snapshot.decode_value(value)
            if record[0] != key:
                raise snapshot.SnapshotError("value stored under another key")
        except snapshot.SnapshotError as exc:
            self.stats.rejected += 1
            self.stats.misses += 1
            self._log_throttled("host cache tier %s: value refused (not served): %s", self.config.path, exc)
            self.forget(key)  # a bad value is deleted, not read again and again
            return None
        entry = snapshot.entry_from_record(record, now, self.clock.wall())
        if entry is None:  # past its stale window: the sweep removes it
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return entry

    # -------------------------------------------------------------- writes (loop)
    def enqueue(self, key: bytes, entry: Entry) -> None:
        """Queue ``entry`` for the next batch: one append, off the hit path (called by ``Cache.put``).

        A full queue (the writer cannot keep up, or the disk is failing) drops the
        write and counts it: the entry is still served from this process's cache.
        """
        if self._env is None:
            return
        queue = self._queue
        if len(queue) >= self.config.write_queue:
            self.stats.dropped += 1
            return
        queue.append((key, entry, self.clock.monotonic()))

    def forget(self, key: bytes) -> None:
        """Delete ``key`` (an operator's flush, a refused value); never read back meanwhile."""
        if self._env is None:
            return
        self._forgotten.add(key)
        self._queue.append((key, None, self.clock.monotonic()))

    def forget_where(self, match) -> None:
        """Delete every key for which ``match(key)`` is true (``resolver ctl flush NAME`` of
        all types, or ``--zone``): the writer walks the file once, off the event loop.

        Entries queued before this call are written first and then walked over, so
        an answer learnt before the flush cannot come back after it.
        """
        if self._env is None:
            return
        self._forget_where.append(match)
        self._wake.set()

    def forget_all(self) -> None:
        """Empty the tier (``resolver ctl flush`` of everything)."""
        if self._env is None:
            return
        self._clear_pending = True
        self._queue.clear()  # written before the flush: must not come back after it
        self._wake.set()

    # -------------------------------------------------------- writer (its thread)
    def _write_loop(self) -> None:
        interval = self.config.write_interval
        while not self._stopping:
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self._flush()
                now = time.monotonic()
                if now - self._last_sweep >= SWEEP_EVERY:
                    self._last_sweep = now
                    self.sweep(self.clock.wall())
            except lmdb.Error as exc:
                self.stats.write_errors += 1
                self._log_throttled("host cache tier %s: write failed: %s", self.config.path, _describe(exc))
            except Exception:  # background thread boundary: log with context, keep going
                self.stats.write_errors += 1
                log.exception("host cache tier %s: writer failed", self.config.path)

    def _flush(self) -> None:
        """Write everything queued so far in one transaction per batch."""
        env = self._env
        if env is None:
            return
        if self._clear_pending:
            with env.begin(write=True) as txn:
                txn.drop(self._main, delete=False)
            self._clear_pending = False
        queue = self._queue
        while queue:
            batch: dict[bytes, tuple] = {}
            oldest = None
            for _ in range(min(len(queue), WRITE_BATCH)):
                key, entry, queued_at = queue.popleft()
                if oldest is None:
                    oldest = queued_at
                batch[key] = (entry, queued_at)
            self._write_batch(env, batch)
            forgotten = [k for k, (e, _) in batch.items() if e is None]
            self._forgotten.difference_update(forgotten)
            self.stats.write_lag = max(0.0, self.clock.monotonic() - oldest)
        while self._forget_where:
            match = self._forget_where[0]
            with env.begin(write=True) as txn:
                doomed = [key for key in txn.cursor(db=self._main).iternext(keys=True, values=False)
                          if match(key)]
                for key in doomed:
                    txn.delete(key, db=self._main)
            self._forget_where.pop(0)  # only now: until committed, fetch treats them as misses

    def _write_batch(self, env: lmdb.Environment, batch: dict[bytes, tuple]) -> None:
        wall_offset = self.clock.wall() - self.clock.monotonic()
        values = []
        for key, (entry, _) in batch.items():
            values.append((key, None if entry is None else snapshot.encode_value(key, entry, wall_offset)))
        written = self._write_values(env, values)
        if written is None:
            return
        self.stats.writes += written
        self.stats.batches += 1
        self._enforce_bounds(env)

    def _write_values(self, env: lmdb.Environment, values: list, may_evict: bool = True) -> int | None:
        """One transaction for ``values``; when the map or the disk is full, evict and retry, then halve.

        Eviction makes room for at most the batch and never takes more than a
        quarter of what is stored (never everything); only the whole batch evicts,
        its halves just get their own chance (a map too small for one batch's copied
        pages).  None (counted, logged) for what still cannot be written.
        """
        failure: BaseException | None = None
        for attempt in (1, 2):
            try:
                with env.begin(write=True) as txn:
                    return self._apply(txn, values)
            except lmdb.Error as exc:
                # MapFullError, or most likely a full disk (LMDB reports a short write
                # as EIO or ENOSPC): the file cannot grow, but pages freed inside it
                # are reused.  A failing disk fails the retry too.
                failure = exc
                self.stats.full += 1
                room = min(len(values), self.entries() // 4)
                if attempt == 1 and may_evict and room > 0 and self._evict(env, make_room=room):
                    continue
                break
        if len(values) >= 2 * MIN_SPLIT:
            half = len(values) // 2
            first = self._write_values(env, values[:half], may_evict=False)
            second = self._write_values(env, values[half:], may_evict=False)
            if first is None and second is None:
                return None
            return (first or 0) + (second or 0)
        self._batch_failed(len(values), failure)
        return None

    def _apply(self, txn: lmdb.Transaction, values: list) -> int:
        main = self._main
        written = 0
        for key, value in values:
            if value is None:
                txn.delete(key, db=main)
            else:
                txn.put(key, value, db=main)
                written += 1
        return written

    def _batch_failed(self, count: int, exc: BaseException) -> None:
        self.stats.write_errors += 1
        self.stats.dropped += count
        self._log_throttled("host cache tier %s: %d entries not written (still served from memory): %s",
                            self.config.path, count, _describe(exc))

    def sweep(self, wall_now: float) -> int:
        """Delete entries past their stale window (RFC 8767 max stale timer) in the next slice.

        One slice per call, from where the last one stopped; a value that does
        not parse goes too.  Runs in the writer thread: readers (every worker's
        loop) never wait for it.
        """
        env = self._env
        if env is None:
            return 0
        self._sweep_at, dead = self._scan(env, self._sweep_at, SWEEP_SLICE, dead_at=wall_now)
        dead = [key for key, _ in dead]
        removed = self._delete(env, dead)
        self.stats.swept += removed
        return removed

    def _scan(self, env: lmdb.Environment, start: bytes, count: int,
              dead_at: float | None = None) -> tuple[bytes, list]:
        """(where to go on from, [(key, stale deadline)]) for ``count`` entries from ``start``, wrapping;
        with ``dead_at``, only those whose deadline has passed by then (nothing else is kept)."""
        out = []
        seen = 0
        with env.begin(db=self._main, buffers=True) as txn:
            cursor = txn.cursor()
            positioned = cursor.set_range(start) if start else cursor.first()
            wrapped = False
            while seen < count:
                if not positioned:
                    if wrapped or not start:
                        break
                    wrapped = True
                    positioned = cursor.first()
                    continue
                key = cursor.key()
                if wrapped and bytes(key) >= start:
                    break
                seen += 1
                deadline = _stale_deadline(cursor.value())
                if dead_at is None or deadline <= dead_at:
                    out.append((bytes(key), deadline))
                positioned = cursor.next()
            nxt = bytes(cursor.key()) if positioned else b""
        return nxt, out

    def _delete(self, env: lmdb.Environment, keys: list[bytes]) -> int:
        """Delete ``keys`` in transactions of DELETE_BUDGET, at least two (see ``_evict``)."""
        if not keys:
            return 0
        chunk = max(1, min(DELETE_BUDGET, (len(keys) + 1) // 2))
        removed = 0
        for start in range(0, len(keys), chunk):
            with env.begin(write=True, db=self._main) as txn:
                for key in keys[start:start + chunk]:
                    removed += txn.delete(key)
        return removed

    def _enforce_bounds(self, env: lmdb.Environment) -> None:
        """Evict down to EVICT_TO of max_entries / max_bytes once either is exceeded."""
        entries, used = self.entries(), self.bytes_used()
        cfg = self.config
        excess = 0
        if entries > cfg.max_entries:
            excess = entries - int(cfg.max_entries * EVICT_TO)
        if used > cfg.max_bytes and entries:
            per_entry = used / entries
            excess = max(excess, int((used - cfg.max_bytes * EVICT_TO) / per_entry) + 1)
        if excess > 0:
            self._evict(env, excess)

    def _evict(self, env: lmdb.Environment, make_room: int) -> bool:
        """Delete about ``make_room`` entries, those nearest the end of their stale window in a
        sample EVICT_SAMPLE times larger; False if none could go.

        In at least two transactions: LMDB reuses the pages a commit frees only
        after the next commit (the previous snapshot stays intact for crash
        safety), so on a full disk the room made by the first is usable once the
        second is done.
        """
        removed = 0
        try:
            self._evict_at, sample = self._scan(env, self._evict_at, make_room * EVICT_SAMPLE)
            sample.sort(key=lambda item: item[1])
            removed = self._delete(env, [key for key, _ in sample[:make_room]])
        except lmdb.Error:
            # Even a delete needs a few free pages: the map or the disk is too full for
            # what it holds.  The caller counts the write that needed the room.
            pass
        self.stats.evictions += removed
        return removed > 0

    # ------------------------------------------------------------------- figures
    def entries(self) -> int:
        env = self._env
        if env is None:
            return 0
        try:
            with env.begin() as txn:
                return txn.stat(self._main)["entries"]
        except lmdb.Error:
            return 0

    def bytes_used(self) -> int:
        """Bytes in pages holding data (both tables); free pages inside the file are not counted."""
        env = self._env
        if env is None:
            return 0
        try:
            with env.begin() as txn:
                total = 0
                st = txn.stat(self._main)
                total += (st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]) * st["psize"]
                return total
        except lmdb.Error:
            return 0

    def file_bytes(self) -> int:
        """Disk blocks the file occupies (the map is sparse: this, not map_size)."""
        try:
            return os.stat(self.config.path).st_blocks * 512
        except OSError:
            return 0

    def readers_in_use(self) -> int:
        """Reader slots held right now, by every process sharing the file."""
        env = self._env
        if env is None:
            return 0
        try:
            lines = env.readers().splitlines()
        except lmdb.Error:
            return 0
        # "(no active readers)" or a header line followed by one line per slot.
        return max(0, len(lines) - 1) if len(lines) > 1 else 0

    def _log_throttled(self, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._last_logged >= LOG_EVERY:
            self._last_logged = now
            log.warning(message, *args)


def _stale_deadline(value) -> float:
    """A stored value's wall-clock stale deadline (0.0 for a damaged one: swept and evicted first)."""
    try:
        deadline = snapshot.value_stale_until(value)
    except (struct.error, ValueError, TypeError):
        return 0.0
    return deadline if deadline == deadline else 0.0  # NaN: damaged


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full ({exc.strerror})"
    return f"{type(exc).__name__}: {exc}"
