"""The fleet tier's value codec (resolver/cache/fleet_record.py): authenticated, key-bound, wall-clock times.

Pure: entries from the in-process store, a FakeClock per "node", bytes in and out.
The Redis I/O half is tested against a real redis-server in tests/integration/test_fleet.py.
"""

from __future__ import annotations

import math

import pytest

from resolver import wire
from resolver.cache import fleet_record
from resolver.cache.fleet_record import FleetRecordError
from resolver.cache.store import Cache, Entry
from resolver.clock import FakeClock
from tests.support.packets import key, negative, prepared

SECRET = b"s3cret-s3cret-s3cret-s3cret-0001"
MAX_STALE = 3600.0


def stored(name="www.example.com", ttl=60, clock=None, prep=None) -> tuple[bytes, Entry, FakeClock]:
    clock = clock or FakeClock()
    cache = Cache(10)
    k = key(name)
    entry = cache.put(k, prep or prepared(name, ttl=ttl), clock.monotonic(), MAX_STALE)
    return k, entry, clock


def offset(clock: FakeClock) -> float:
    return clock.wall() - clock.monotonic()


def test_a_value_round_trips_with_its_answer_and_deadlines():
    k, entry, clock = stored(ttl=60)
    value = fleet_record.encode(SECRET, k, entry, offset(clock))
    # Another node: its monotonic clock started elsewhere, its wall clock agrees.
    other = FakeClock(start=50.0, wall_start=clock.wall())
    got = fleet_record.entry_from_value(SECRET, k, value, other.monotonic(), other.wall())
    assert (got.kind, got.rcode, got.hdr, got.hdr_opt, got.body, got.ttl_offsets) == \
        (entry.kind, entry.rcode, entry.hdr, entry.hdr_opt, entry.body, entry.ttl_offsets)
    assert got.fresh_until == pytest.approx(other.monotonic() + 60, abs=1e-6)
    assert got.stale_until == pytest.approx(other.monotonic() + 60 + MAX_STALE, abs=1e-6)


def test_negative_answers_are_shared_too():
    k, entry, clock = stored("nx.example.com", prep=negative("nx.example.com", ttl=120))
    value = fleet_record.encode(SECRET, k, entry, offset(clock))
    got = fleet_record.entry_from_value(SECRET, k, value, clock.monotonic(), clock.wall())
    assert got.kind == wire.NEGATIVE_NXDOMAIN and got.rcode == wire.NXDOMAIN


def test_a_servfail_memory_is_not_shared():
    clock = FakeClock()
    k = key("broken.example.com")
    entry = Cache(10).put(k, wire.failure_prepared(wire.SERVFAIL, 1), clock.monotonic(), 0.0)
    assert fleet_record.encode(SECRET, k, entry, offset(clock)) is None


def test_a_value_moved_to_another_key_is_refused():
    k, entry, clock = stored("www.example.com")
    value = fleet_record.encode(SECRET, k, entry, offset(clock))
    with pytest.raises(FleetRecordError) as info:
        fleet_record.decode(SECRET, key("bank.example.com"), value)
    assert info.value.reason == "mac"


def test_a_value_moved_between_do_variants_of_one_name_is_refused():
    """DO/CD are part of the key: a DNSSEC-less answer must not be served to a DO client."""
    k, entry, clock = stored("www.example.com")
    value = fleet_record.encode(SECRET, k, entry, offset(clock))
    do_key = wire.question_key(wire.key_question(k), wire.KEY_DO)
    assert do_key != k
    with pytest.raises(FleetRecordError):
        fleet_record.decode(SECRET, do_key, value)


@pytest.mark.parametrize("where", [0, 20, 40, -40, -1])
def test_any_flipped_byte_is_refused(where):
    k, entry, clock = stored()
    value = bytearray(fleet_record.encode(SECRET, k, entry, offset(clock)))
    value[where] ^= 0x01
    with pytest.raises(FleetRecordError) as info:
        fleet_record.decode(SECRET, k, bytes(value))
    assert info.value.reason == "mac"


def test_a_later_deadline_written_without_the_secret_is_refused():
    """Someone with write access to Redis but not the secret cannot extend an answer's life."""
    k, entry, clock = stored(ttl=60)
    entry.fresh_until += 86_400  # what a forger wants: a stale answer presented as fresh
    forged = fleet_record.encode(b"not-the-secret-not-the-secret!!!", k, entry, offset(clock))
    with pytest.raises(FleetRecordError):
        fleet_record.decode(SECRET, k, forged)


@pytest.mark.parametrize("value", [b"", b"x" * 32, b"x" * 33, b"RSLV" + b"\0" * 200, b"x" * 80_000])
def test_garbage_is_refused_not_raised(value):
    with pytest.raises(FleetRecordError):
        fleet_record.decode(SECRET, key("www.example.com"), value)


def test_an_authentic_value_of_another_version_is_malformed():
    k, entry, clock = stored()
    value = fleet_record.encode(SECRET, k, entry, offset(clock))
    record = bytearray(value[:-fleet_record.MAC_SIZE])
    record[5] = 9  # the record's version field
    resigned = bytes(record) + fleet_record.mac(SECRET, k, bytes(record))
    with pytest.raises(FleetRecordError) as info:
        fleet_record.decode(SECRET, k, resigned)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize("skew", [-5.0, -1.0, 0.0, 2.0, 5.0])
def test_a_skewed_reader_is_off_by_at_most_its_skew(skew):
    """Deadlines are wall-clock: a reader whose clock is off by s sees them off by at most s."""
    k, entry, clock = stored(ttl=60)
    value = fleet_record.encode(SECRET, k, entry, offset(clock))
    clock.advance(10)
    reader = FakeClock(start=7.0, wall_start=clock.wall() + skew)
    got = fleet_record.entry_from_value(SECRET, k, value, reader.monotonic(), reader.wall())
    true_left = 50.0  # seconds of TTL left at this instant
    assert abs((got.fresh_until - reader.monotonic()) - true_left) <= abs(skew) + 1e-6
    # A reader whose clock runs ahead never sees more time left than there is.
    if skew >= 0:
        assert (got.fresh_until - reader.monotonic()) <= true_left + 1e-6


def test_past_its_stale_limit_by_the_readers_clock_it_is_nothing():
    k, entry, clock = stored(ttl=60)
    value = fleet_record.encode(SECRET, k, entry, offset(clock))
    clock.advance(60 + MAX_STALE + 1)
    assert fleet_record.entry_from_value(SECRET, k, value, clock.monotonic(), clock.wall()) is None


def test_redis_keeps_a_value_until_its_stale_limit():
    k, entry, clock = stored(ttl=60)
    assert fleet_record.expire_ms(entry, clock.monotonic()) == (60 + MAX_STALE) * 1000
    clock.advance(100)
    assert fleet_record.expire_ms(entry, clock.monotonic()) == (60 + MAX_STALE - 100) * 1000
    clock.advance(60 + MAX_STALE)
    assert fleet_record.expire_ms(entry, clock.monotonic()) == 0


def test_a_pinned_entry_is_kept_finitely():
    k, entry, clock = stored(ttl=60)
    entry.stale_until = math.inf  # last-known-good pin
    ms = fleet_record.expire_ms(entry, clock.monotonic())
    assert ms == (60 + fleet_record.snapshot.PINNED_FOR) * 1000
    value = fleet_record.encode(SECRET, k, entry, offset(clock))
    got = fleet_record.entry_from_value(SECRET, k, value, clock.monotonic(), clock.wall())
    assert math.isfinite(got.stale_until) and got.stale_until > clock.monotonic() + 86_400
