"""Unit tests for resolver.snapshot: round trip, wall-clock conversion, and hostile files.

Every damaged-file case must end as SnapshotError (one warning upstream), never
as another exception; a fuzz test mutates a valid file byte by byte to keep it so.
"""

from __future__ import annotations

import os
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver import wire
from resolver.cache import snapshot
from resolver.cache.store import Cache
from resolver.clock import FakeClock
from tests.support.packets import key, negative, prepared


def filled(clock: FakeClock, n: int = 3, max_stale: float = 1000) -> Cache:
    cache = Cache(100)
    for i in range(n):
        cache.put(key(f"n{i}.example.com"), prepared(f"n{i}.example.com", ttl=60 + i), clock.monotonic(), max_stale)
    cache.put(key("nx.example.com"), negative(ttl=120), clock.monotonic(), max_stale)
    return cache


def dump(cache: Cache, clock: FakeClock) -> bytes:
    return snapshot.encode(list(cache.entries), list(cache.entries.values()), clock.wall() - clock.monotonic(), clock.wall())


def test_round_trip_converts_deadlines_through_wall_clock():
    """Another process has another monotonic origin: the deadlines must survive via wall time."""
    old = FakeClock(start=1000.0, wall_start=1_700_000_000.0)
    cache = filled(old)
    data = dump(cache, old)
    # The new process starts 30 s of wall time later, its monotonic clock near zero.
    new = FakeClock(start=5.0, wall_start=1_700_000_030.0)
    restored = Cache(100)
    written_at, records = snapshot.decode(data)
    assert written_at == 1_700_000_000.0
    result = snapshot.restore(restored, records, new.monotonic(), new.wall(), written_at)
    assert result.restored == 4 and result.expired == 0
    assert list(restored.entries) == list(cache.entries)  # LRU order kept
    for k, e in cache.entries.items():
        r = restored.entries[k]
        assert (r.kind, r.rcode, r.hdr, r.hdr_opt, r.body, r.ttl_offsets) == \
               (e.kind, e.rcode, e.hdr, e.hdr_opt, e.body, e.ttl_offsets)
        assert r.fresh_until == pytest.approx(e.fresh_until - 1000 - 30 + 5)
        assert r.stale_until == pytest.approx(e.stale_until - 1000 - 30 + 5)
        # TTLs are aged by the 30 s that passed: 60 → 30 for n0.
    n0 = restored.entries[key("n0.example.com")]
    aged = n0.aged_body(int(new.monotonic()))
    assert struct.unpack_from(">I", aged, n0.ttl_offsets[0])[0] == 30


def test_entries_past_their_stale_window_are_dropped_at_load():
    clock = FakeClock()
    cache = Cache(10)
    cache.put(key("short.example.com"), prepared("short.example.com", ttl=10), clock.monotonic(), 5)
    cache.put(key("long.example.com"), prepared("long.example.com", ttl=10), clock.monotonic(), 500)
    data = dump(cache, clock)
    later = FakeClock(start=1.0, wall_start=clock.wall() + 100)
    restored = Cache(10)
    written_at, records = snapshot.decode(data)
    result = snapshot.restore(restored, records, later.monotonic(), later.wall(), written_at)
    assert (result.restored, result.expired) == (1, 1)
    assert list(restored.entries) == [key("long.example.com")]


def test_restore_fills_the_existing_dict_in_place_and_respects_max_entries():
    clock = FakeClock()
    data = dump(filled(clock, n=5), clock)  # 6 entries
    target = Cache(3)
    same_dict = target.entries
    written_at, records = snapshot.decode(data)
    result = snapshot.restore(target, records, clock.monotonic(), clock.wall(), written_at)
    assert target.entries is same_dict
    assert result.restored == 3 and result.skipped == 3
    # The most recently used survive.
    assert list(target.entries) == [key("n3.example.com"), key("n4.example.com"), key("nx.example.com")]


def test_failure_entries_are_not_written():
    clock = FakeClock()
    cache = filled(clock, n=1)
    servfail = wire.Prepared(wire.FAILURE, wire.SERVFAIL, 1, b"\x81\x82" + bytes(8), b"\x81\x82" + bytes(7) + b"\x01",
                             b"", (), False)
    cache.put(key("fail.example.com"), servfail, clock.monotonic(), 0)
    _, records = snapshot.decode(dump(cache, clock))
    assert key("fail.example.com") not in {r[0] for r in records}
    assert len(records) == 2


def test_future_stored_at_never_raises_ttls():
    """Wall clock stepped back between save and load: TTLs must not grow."""
    clock = FakeClock()
    cache = filled(clock, n=1)
    data = dump(cache, clock)
    back = FakeClock(start=50.0, wall_start=clock.wall() - 3600)
    restored = Cache(10)
    written_at, records = snapshot.decode(data)
    snapshot.restore(restored, records, back.monotonic(), back.wall(), written_at)
    e = restored.entries[key("n0.example.com")]
    assert e.stored_at == pytest.approx(back.monotonic())
    assert e.fresh_until == pytest.approx(back.monotonic() + 60)


# ------------------------------------------------------------------ hostile files
def _valid() -> bytes:
    clock = FakeClock()
    return dump(filled(clock), clock)


def _recrc(data: bytes) -> bytes:
    body = data[:-4]
    return body + struct.pack(">I", zlib.crc32(body))


@pytest.mark.parametrize("mangle, why", [
    (lambda d: b"", "truncated"),
    (lambda d: d[:20], "truncated"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d + b"\x00", "padded"),
    (lambda d: b"XXXXXXXX" + d[8:], "magic"),
    (lambda d: d[:8] + b"\x00\x02" + d[10:], "version"),
    (lambda d: d[:40] + bytes([d[40] ^ 1]) + d[41:], "checksum"),
    # Valid checksum but lying counts/lengths: the parser must not trust them.
    (lambda d: _recrc(d[:12] + b"\xff\xff\xff\xff" + d[16:]), "past the end"),
    (lambda d: _recrc(d[:36] + b"\xff\xff" + d[38:]), "bad record"),
    (lambda d: b"\x80\x04\x95" + b"pickle" * 10, "magic"),
])
def test_damaged_files_raise_snapshot_error(mangle, why):
    with pytest.raises(snapshot.SnapshotError, match=why):
        snapshot.decode(mangle(_valid()))


def test_ttl_offset_outside_the_body_is_refused():
    """A file whose offsets point past the body would make the hit path write out of bounds."""
    clock = FakeClock()
    cache = filled(clock, n=1)
    entry = cache.entries[key("n0.example.com")]
    entry.ttl_offsets = (len(entry.body) - 2,)
    with pytest.raises(snapshot.SnapshotError, match="TTL offset"):
        snapshot.decode(dump(cache, clock))


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(min_value=0), byte=st.integers(min_value=0, max_value=255), fix_crc=st.booleans())
def test_fuzz_any_single_byte_change_is_refused_or_valid(pos, byte, fix_crc):
    data = bytearray(_valid())
    pos %= len(data)
    data[pos] = byte
    blob = _recrc(bytes(data)) if fix_crc else bytes(data)
    try:
        written_at, records = snapshot.decode(blob)
    except snapshot.SnapshotError:
        return
    cache = Cache(100)
    clock = FakeClock()
    snapshot.restore(cache, records, clock.monotonic(), clock.wall(), written_at)
    for e in cache.entries.values():  # whatever got in must be safe for the hit path
        e.aged_body(int(clock.monotonic()) + 5)
        e.stale_answer_body(30)


@given(st.binary(max_size=400))
def test_fuzz_garbage_is_refused(blob):
    with pytest.raises(snapshot.SnapshotError):
        snapshot.decode(blob)


# ------------------------------------------------------------------- file I/O
def test_write_atomic_then_load(tmp_path):
    clock = FakeClock()
    path = str(tmp_path / "cache.snap")
    size = snapshot.write_atomic(path, [_valid()])
    assert os.path.getsize(path) == size
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["cache.snap"]  # no temp file left behind
    cache = Cache(100)
    result = snapshot.load(path, cache, clock.monotonic(), clock.wall())
    assert result.restored == 4


def test_write_atomic_into_missing_directory_raises_and_leaves_nothing(tmp_path):
    with pytest.raises(OSError):
        snapshot.write_atomic(str(tmp_path / "nope" / "cache.snap"), [b"x"])


def test_load_missing_unreadable_and_huge_files(tmp_path):
    clock = FakeClock()
    with pytest.raises(snapshot.SnapshotError, match="no snapshot"):
        snapshot.load(str(tmp_path / "missing"), Cache(10), clock.monotonic(), clock.wall())
    with pytest.raises(snapshot.SnapshotError, match="cannot read"):
        snapshot.load(str(tmp_path), Cache(10), clock.monotonic(), clock.wall())  # a directory
    huge = tmp_path / "huge"
    huge.write_bytes(b"\x00" * (1024 * 1024 + 10 * snapshot.BYTES_PER_ENTRY_LIMIT + 1))
    with pytest.raises(snapshot.SnapshotError, match="too large"):
        snapshot.load(str(huge), Cache(10), clock.monotonic(), clock.wall())


def test_a_bad_record_late_in_the_file_leaves_the_cache_as_it_was(tmp_path):
    """Records are restored as they are parsed; a bad one half-way takes the others out again."""
    clock = FakeClock()
    cache = filled(clock, n=3)
    last = list(cache.entries)[-1]
    cache.entries[last].ttl_offsets = (len(cache.entries[last].body),)
    path = tmp_path / "c.snap"
    path.write_bytes(dump(cache, clock))
    target = Cache(100)
    with pytest.raises(snapshot.SnapshotError, match="TTL offset"):
        snapshot.load(str(path), target, clock.monotonic(), clock.wall())
    assert len(target) == 0


# -- the temp file: exclusive, unpredictable, never through a planted symlink ----------------

def test_a_planted_symlink_is_not_followed(tmp_path):
    """Someone who can write the directory plants symlinks at the names a writer could
    use (the old predictable `<path>.tmp.<pid>`); the write must not touch their target."""
    import os

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "cache.snap"
    for name in (f"cache.snap.tmp.{os.getpid()}", "cache.snap.tmp"):
        (tmp_path / name).symlink_to(victim)
    size = snapshot.write_atomic(str(path), [b"new ", b"snapshot"])
    assert victim.read_bytes() == b"precious"
    assert path.read_bytes() == b"new snapshot" and size == 12 and not path.is_symlink()
    assert (path.stat().st_mode & 0o777) == 0o600


def test_temp_names_are_unpredictable_and_cleaned_up_on_failure(tmp_path, monkeypatch):
    import os

    seen = []
    real_replace = os.replace

    def failing_replace(src, dst):
        seen.append(os.path.basename(src))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    for _ in range(2):
        with pytest.raises(OSError):
            snapshot.write_atomic(str(tmp_path / "cache.snap"), [b"x"])
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(set(seen)) == 2 and all(n.startswith("cache.snap.tmp.") for n in seen)
    assert not any(str(os.getpid()) == n.rsplit(".", 1)[1] for n in seen)
    assert os.listdir(tmp_path) == []


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path):
    import os

    path = tmp_path / "cache.snap"
    old, fresh, other = tmp_path / "cache.snap.tmp.1234", tmp_path / "cache.snap.tmp.abcd", tmp_path / "keep.tmp.1"
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "cache.snap.tmp.link"
    link.symlink_to(victim)
    for f in (old, fresh, other):
        f.write_bytes(b"half a snapshot")
    now = 1_800_000_000.0
    for f in (old, other):
        os.utime(f, (now - 3600, now - 3600))
    os.utime(fresh, (now - 10, now - 10))
    os.utime(link, (now - 3600, now - 3600), follow_symlinks=False)
    assert snapshot.remove_stale_temps(str(path), now, 300) == 2
    assert sorted(os.listdir(tmp_path)) == ["cache.snap.tmp.abcd", "keep.tmp.1", "victim"]
    assert victim.read_bytes() == b"precious"


def test_a_fifo_at_the_snapshot_path_does_not_hang_the_load(tmp_path):
    import os

    fifo = tmp_path / "cache.snap"
    os.mkfifo(fifo)
    with pytest.raises(snapshot.SnapshotError, match="not a regular file"):
        snapshot.read_file(str(fifo), 100)
