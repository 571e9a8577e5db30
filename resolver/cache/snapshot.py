"""The cache snapshot file: a versioned, self-validating binary format, and its atomic write.

Why a format of our own, written with ``struct``: the file outlives the process and
may be left truncated by a crash, damaged by a disk, written by another version, or
planted by someone with write access to the directory.  Loading must therefore be
a parser that trusts nothing — never ``pickle``/``marshal``, whose loaders run
code — and every failure must end as ``SnapshotError`` (the caller logs one warning
and starts with an empty cache), never as a crash.

Layout (all integers big-endian)::

    header   magic "RSLVSNAP" | version u16 | reserved u16 | count u32 |
             written_at f64 (wall clock) | payload length u64
    payload  count records, each:
             key_len u16 | kind u8 | rcode u8 | hdr_len u8 | hdr_opt_len u8 |
             body_len u32 | n_ttl_offsets u16 |
             stored_at f64 | fresh_until f64 | stale_until f64   (wall clock, seconds)
             key | hdr | hdr_opt | body | ttl_offsets (n × u16)
    trailer  CRC-32 of header and payload, u32

Cache entries hold monotonic deadlines, which mean nothing to another process, so
the file stores wall-clock times (``wall = monotonic + (clock.wall() - clock.monotonic())``)
and the loader converts them back against its own clock.  Records are written in
LRU order (least recently used first), so restoring them in file order restores
the recency order too.
"""

from __future__ import annotations

import math
import os
import stat
import struct
import tempfile
import zlib
from dataclasses import dataclass
from typing import Iterable, Iterator

from .. import wire
from .store import Cache, Entry

MAGIC = b"RSLVSNAP"
VERSION = 1

_HEADER = struct.Struct(">8sHHIdQ")
_RECORD = struct.Struct(">HBBBBIHddd")
_CRC = struct.Struct(">I")

# Kinds are stored as an index into this tuple; FAILURE (the brief RFC 9520
# SERVFAIL memory) is never written: it lives for a second or so.
KINDS = (wire.POSITIVE, wire.NODATA, wire.NEGATIVE_NXDOMAIN)
_KIND_INDEX = {kind: i for i, kind in enumerate(KINDS)}

MAX_KEY = 512  # flags byte + a question (name ≤ 255 bytes + type + class) fits well within
HDR_LEN = 10  # bytes 2..12 of a DNS header (RFC 1035 §4.1.1): flags and four counts
# A hostile or absurd file must not make the loader allocate without bound: refuse
# files larger than this many bytes per allowed entry (real answers average well
# under 300 bytes; this leaves room for caches full of large TXT/DNSKEY answers).
BYTES_PER_ENTRY_LIMIT = 4096


class SnapshotError(Exception):
    """The snapshot cannot be used; the message says why, for one log line."""


@dataclass
class LoadResult:
    restored: int  # entries put into the cache
    expired: int  # records dropped: past their stale window
    skipped: int  # records dropped: over max_entries, or already in the cache
    written_at: float  # wall-clock time the snapshot was written


def encode_records(keys: list[bytes], values: list[Entry], wall_offset: float) -> bytes:
    """Records for parallel lists of keys and entries; ``wall_offset`` = wall() - monotonic().

    Pure and bounded by the size of the lists, so the caller can serialise a
    million entries in slices and let the event loop run in between.  Parallel
    lists rather than (key, entry) pairs: building a million pairs makes the
    cyclic GC run a full collection, which stalls the loop for seconds.
    """
    out = []
    pack = _RECORD.pack
    kinds = _KIND_INDEX
    for key, e in zip(keys, values):
        kind = kinds.get(e.kind)
        if kind is None or len(key) > MAX_KEY:
            continue
        offsets = e.ttl_offsets
        out.append(pack(len(key), kind, e.rcode, len(e.hdr), len(e.hdr_opt), len(e.body), len(offsets),
                        e.stored_at + wall_offset, e.fresh_until + wall_offset, e.stale_until + wall_offset))
        out.append(key)
        out.append(e.hdr)
        out.append(e.hdr_opt)
        out.append(e.body)
        if offsets:
            out.append(struct.pack(f">{len(offsets)}H", *offsets))
    return b"".join(out)


def count_records(keys: list[bytes], values: list[Entry]) -> int:
    """How many records ``encode_records`` writes for these lists (the header needs the count)."""
    kinds = _KIND_INDEX
    return sum(1 for key, e in zip(keys, values) if e.kind in kinds and len(key) <= MAX_KEY)


def frame(payload_parts: list[bytes], count: int, written_at: float) -> list[bytes]:
    """Header + payload parts + CRC trailer, as a list of byte strings to write in order."""
    length = sum(len(p) for p in payload_parts)
    header = _HEADER.pack(MAGIC, VERSION, 0, count, written_at, length)
    crc = zlib.crc32(header)
    for part in payload_parts:
        crc = zlib.crc32(part, crc)
    return [header, *payload_parts, _CRC.pack(crc)]


def encode(keys: list[bytes], values: list[Entry], wall_offset: float, written_at: float) -> bytes:
    """The whole file in one go (tests, benchmarks; the server uses the sliced form)."""
    payload = encode_records(keys, values, wall_offset)
    return b"".join(frame([payload], count_records(keys, values), written_at))


def open_records(data: bytes) -> tuple[float, int, Iterator[tuple]]:
    """(written_at, count, records): the header and checksum checked now, records lazily.

    Each record is ``(key, kind, rcode, hdr, hdr_opt, body, ttl_offsets, stored_at,
    fresh_until, stale_until)`` with wall-clock times.  Every length is checked
    against what is left, every value against what the hit path will assume
    (TTL offsets inside the body, finite and ordered times), before anything is
    built from it; the iterator raises SnapshotError at the first bad record.
    Lazy, so a million records never exist as a million tuples at once.
    """
    size = len(data)
    if size < _HEADER.size + _CRC.size:
        raise SnapshotError(f"truncated: {size} bytes")
    magic, version, _reserved, count, written_at, length = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise SnapshotError("not a resolver cache snapshot (bad magic)")
    if version != VERSION:
        raise SnapshotError(f"unsupported snapshot version {version} (this build reads {VERSION})")
    end = _HEADER.size + length
    if end + _CRC.size != size:
        raise SnapshotError(f"truncated or padded: header says {end + _CRC.size} bytes, file has {size}")
    (crc,) = _CRC.unpack_from(data, end)
    if zlib.crc32(memoryview(data)[:end]) != crc:
        raise SnapshotError("checksum mismatch (corrupt)")
    if not math.isfinite(written_at):
        raise SnapshotError("bad written_at")
    return written_at, count, _records(data, count, end)


def _records(data: bytes, count: int, end: int, start: int = _HEADER.size) -> Iterator[tuple]:
    pos = start
    unpack = _RECORD.unpack_from
    rec_size = _RECORD.size
    offset_structs: dict[int, struct.Struct] = {}
    isfinite = math.isfinite
    n_kinds = len(KINDS)
    for _ in range(count):
        if pos + rec_size > end:
            raise SnapshotError("record runs past the end")
        (key_len, kind, rcode, hdr_len, hdr_opt_len, body_len, n_off,
         stored_at, fresh_until, stale_until) = unpack(data, pos)
        if not (0 < key_len <= MAX_KEY and kind < n_kinds and hdr_len == HDR_LEN
                and hdr_opt_len == HDR_LEN and body_len <= 65535 and n_off * 4 <= body_len):
            raise SnapshotError(f"bad record at byte {pos}")
        if not (isfinite(stored_at) and isfinite(fresh_until) and isfinite(stale_until)
                and stored_at <= fresh_until <= stale_until):
            raise SnapshotError(f"bad times in record at byte {pos}")
        pos += rec_size
        if pos + key_len + 2 * HDR_LEN + body_len + 2 * n_off > end:
            raise SnapshotError("record runs past the end")
        key = data[pos:pos + key_len]
        pos += key_len
        hdr = data[pos:pos + HDR_LEN]
        hdr_opt = data[pos + HDR_LEN:pos + 2 * HDR_LEN]
        pos += 2 * HDR_LEN
        body = data[pos:pos + body_len]
        pos += body_len
        if n_off:
            s = offset_structs.get(n_off)
            if s is None:
                s = offset_structs[n_off] = struct.Struct(f">{n_off}H")
            offsets = s.unpack_from(data, pos)
            pos += 2 * n_off
            if max(offsets) + 4 > body_len:
                raise SnapshotError(f"TTL offset outside the body in record ending at byte {pos}")
        else:
            offsets = ()
        yield (key, KINDS[kind], rcode, hdr, hdr_opt, body, offsets, stored_at, fresh_until, stale_until)
    if pos != end:
        raise SnapshotError("trailing bytes after the last record")


def decode(data: bytes) -> tuple[float, list[tuple]]:
    """(written_at, all records): ``open_records`` with the records in a list (tests, tools)."""
    written_at, _count, records = open_records(data)
    return written_at, list(records)


# ---------------------------------------------------------------- one record as a value
# The host tier (``host.py``) stores each entry as one value: the same record as in
# the file, framed on its own so that it validates on its own — a magic and version
# (a value written by another build, or not by us at all, is refused) and a CRC-32
# (a damaged page is refused) — and parsed by the same trust-nothing ``_records``.
VALUE_MAGIC = b"RSLV"
VALUE_VERSION = 1
_VALUE_HEAD = struct.Struct(">4sH")
# A stale deadline is stored as a finite wall-clock time: a pinned entry's ``inf``
# (last-known-good, held for the whole incident) is written as this far ahead.
PINNED_FOR = 30 * 86_400.0


def encode_value(key: bytes, e: Entry, wall_offset: float) -> bytes | None:
    """One entry as a self-validating value (None: not stored, e.g. a brief SERVFAIL memory)."""
    kind = _KIND_INDEX.get(e.kind)
    if kind is None or len(key) > MAX_KEY:
        return None
    offsets = e.ttl_offsets
    fresh = e.fresh_until + wall_offset
    stale = e.stale_until + wall_offset
    if not math.isfinite(stale):
        stale = fresh + PINNED_FOR
    parts = [_VALUE_HEAD.pack(VALUE_MAGIC, VALUE_VERSION),
             _RECORD.pack(len(key), kind, e.rcode, len(e.hdr), len(e.hdr_opt), len(e.body), len(offsets),
                          e.stored_at + wall_offset, fresh, stale),
             key, e.hdr, e.hdr_opt, e.body]
    if offsets:
        parts.append(struct.pack(f">{len(offsets)}H", *offsets))
    data = b"".join(parts)
    return data + _CRC.pack(zlib.crc32(data))


def decode_value(data: bytes) -> tuple:
    """The record tuple of ``encode_value`` (wall-clock times); raises SnapshotError, nothing else."""
    try:
        end = len(data) - _CRC.size
        if end < _VALUE_HEAD.size + _RECORD.size:
            raise SnapshotError(f"value too short ({len(data)} bytes)")
        magic, version = _VALUE_HEAD.unpack_from(data, 0)
        if magic != VALUE_MAGIC:
            raise SnapshotError("not a resolver cache value (bad magic)")
        if version != VALUE_VERSION:
            raise SnapshotError(f"unsupported value version {version} (this build reads {VALUE_VERSION})")
        if zlib.crc32(memoryview(data)[:end]) != _CRC.unpack_from(data, end)[0]:
            raise SnapshotError("checksum mismatch (corrupt)")
        (record,) = _records(data, 1, end, _VALUE_HEAD.size)
        return record
    except SnapshotError:
        raise
    except Exception as exc:  # the parser's boundary: nothing from disk may raise anything else
        raise SnapshotError(f"unreadable value: {type(exc).__name__}: {exc}") from None


_STALE_AT = _VALUE_HEAD.size + _RECORD.size - 8  # the record's last field: stale_until
_F64 = struct.Struct(">d")


def value_stale_until(data) -> float:
    """The wall-clock stale deadline of a value without parsing it (sweep, eviction); raises struct.error."""
    if len(data) < _STALE_AT + 8 or data[:4] != VALUE_MAGIC:
        raise struct.error("not a value")
    return _F64.unpack_from(data, _STALE_AT)[0]


def entry_from_record(record: tuple, now: float, wall_now: float) -> Entry | None:
    """An `Entry` with monotonic deadlines from a record with wall-clock ones (None: past its stale window).

    The same conversion as ``restore`` does for a whole file, for one record.
    """
    key, kind, rcode, hdr, hdr_opt, body, offsets, stored_at, fresh_until, stale_until = record
    if stale_until <= wall_now:
        return None
    shift = max(0.0, stored_at - wall_now)  # stored "in the future" (a wall-clock step): TTLs never grow
    offset = now - wall_now
    e = Entry.__new__(Entry)
    e.kind = kind
    e.rcode = rcode
    e.hdr = hdr
    e.hdr_opt = hdr_opt
    e.body = e.aged = body
    e.ttl_offsets = offsets
    e.stored_at = stored_at - shift + offset
    e.fresh_until = fresh_until - shift + offset
    e.stale_until = stale_until - shift + offset
    e.recheck_until = 0.0
    e.aged_until = -math.inf
    e.stale_body = None
    e.recheck_epoch = 0
    e.prefetch_after = e.fresh_until
    e.lkg_text = None
    return e


def restore(cache: Cache, records: Iterable[tuple], now: float, wall_now: float, written_at: float,
            count: int | None = None) -> LoadResult:
    """Put records into ``cache`` in place, converting wall-clock times to monotonic.

    ``cache.entries`` is filled, never replaced: the pipeline holds its bound
    methods.  Records past their stale window are dropped (RFC 8767 max stale
    timer); so are keys already present (a live answer beats a remembered one)
    and, when ``count`` records would not fit in ``max_entries``, the first ones
    in the file (the least recently inserted).  A record stored "in the future"
    (the wall clock stepped back) is shifted back to now, so TTLs never grow.
    If the records turn out bad half-way (SnapshotError), what was added is
    taken out again: a snapshot is used whole or not at all.
    """
    if count is None:
        records = list(records)
        count = len(records)
    entries = cache.entries
    offset = now - wall_now  # monotonic = wall + offset
    expired = skipped = restored = 0
    to_skip = max(0, count - max(0, cache.max_entries - len(entries)))
    added = []
    intern: dict = {}
    new_entry = Entry.__new__
    adopt = cache.adopt
    try:
        for key, kind, rcode, hdr, hdr_opt, body, offsets, stored_at, fresh_until, stale_until in records:
            if to_skip:
                to_skip -= 1
                skipped += 1
                continue
            if stale_until <= wall_now:
                expired += 1
                continue
            if key in entries:
                skipped += 1
                continue
            shift = stored_at - wall_now
            if shift < 0.0:
                shift = 0.0
            # Built field by field (not through Entry(prepared, ...)): a million of these.
            e = new_entry(Entry)
            e.kind = kind
            e.rcode = rcode
            e.hdr = intern.setdefault(hdr, hdr)
            e.hdr_opt = intern.setdefault(hdr_opt, hdr_opt)
            e.body = e.aged = body
            e.ttl_offsets = intern.setdefault(offsets, offsets)
            e.stored_at = stored_at - shift + offset
            e.fresh_until = fresh_until - shift + offset
            e.stale_until = stale_until - shift + offset
            e.recheck_until = 0.0
            e.aged_until = -math.inf  # ``aged`` is the stored body: age it on first use
            e.stale_body = None
            e.recheck_epoch = 0
            e.prefetch_after = e.fresh_until  # no prefetch for restored entries until refreshed
            e.lkg_text = None
            adopt(key, e)
            added.append(key)
            restored += 1
    except SnapshotError:
        for key in added:
            cache.remove(key)
        raise
    return LoadResult(restored, expired, skipped, written_at)


TEMP_INFIX = ".tmp."  # temp files are "<snapshot name>.tmp.<random>" in the snapshot's directory


def write_atomic(path: str, parts: list[bytes]) -> int:
    """Write ``parts`` to ``path`` so that readers see the old file or the new one, never half.

    Temp file in the same directory (rename is atomic only within a file system),
    fsync it, rename over the target, then fsync the directory so the rename itself
    survives a power cut.  The temp file is created by ``tempfile.mkstemp``: an
    unpredictable name opened with O_CREAT|O_EXCL (which also refuses to follow a
    symlink planted at that name, POSIX open(2)), mode 0600 — a predictable name
    opened with O_TRUNC let anyone who could write the directory plant a symlink and
    have us overwrite its target.  Returns the bytes written; raises OSError (the
    temp file is removed).
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + TEMP_INFIX, dir=directory)
    try:
        written = 0
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
                written += len(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return written


def remove_stale_temps(path: str, now_wall: float, older_than: float) -> int:
    """Delete temp files of snapshot writes that never finished (a killed process).

    Only names "<snapshot>.tmp.*" beside the snapshot, only regular files and
    symlinks (the link itself is removed, never followed), only those untouched
    for ``older_than`` seconds: a predecessor still writing during a zero-gap
    upgrade keeps its file.  Returns how many were removed; errors are ignored
    (the next start tries again).
    """
    directory = os.path.dirname(os.path.abspath(path))
    prefix = os.path.basename(path) + TEMP_INFIX
    removed = 0
    try:
        names = [n for n in os.listdir(directory) if n.startswith(prefix)]
    except OSError:
        return 0
    for name in names:
        full = os.path.join(directory, name)
        try:
            st = os.lstat(full)
            if (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) and now_wall - st.st_mtime >= older_than:
                os.unlink(full)
                removed += 1
        except OSError:
            continue
    return removed


def read_file(path: str, max_entries: int) -> bytes:
    """The snapshot's bytes; raises SnapshotError (missing, unreadable, absurdly large)."""
    limit = 1024 * 1024 + max_entries * BYTES_PER_ENTRY_LIMIT
    try:
        # O_NONBLOCK: a FIFO planted at the path must not block start-up in open();
        # anything but a regular file is then refused by the fstat check.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SnapshotError("not a regular file")
            size = st.st_size
            if size > limit:
                raise SnapshotError(f"too large ({size} bytes, limit {limit} for max_entries {max_entries})")
            return f.read(limit + 1)
    except FileNotFoundError:
        raise SnapshotError("no snapshot file (first start?)") from None
    except OSError as exc:
        raise SnapshotError(f"cannot read: {exc.strerror or exc}") from None


def load(path: str, cache: Cache, now: float, wall_now: float) -> LoadResult:
    """Read, validate and restore a snapshot; raises SnapshotError, never anything else."""
    data = read_file(path, cache.max_entries)
    try:
        written_at, count, records = open_records(data)
        return restore(cache, records, now, wall_now, written_at, count)
    except SnapshotError:
        raise
    except Exception as exc:  # the parser's boundary: a bug here must not stop the server starting
        raise SnapshotError(f"unreadable: {type(exc).__name__}: {exc}") from None
