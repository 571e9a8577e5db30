"""Table test for the RFC 8767 serve-stale decision (resolver.stale.decide)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from dnslib import EDNS0, QTYPE, RR, A, DNSHeader, DNSQuestion, DNSRecord

from resolver import wire
from resolver.cache.store import Cache
from resolver.clock import FakeClock
from resolver.config import StaleConfig
from resolver.policy import stale

T0 = 1000.0
TTL = 60
ON = StaleConfig(enabled=True, max_age=3600.0, answer_ttl=30, client_timeout=1.8, recheck=30.0)
OFF = StaleConfig(enabled=False)


def prepared(ttl=TTL) -> wire.Prepared:
    rec = DNSRecord(DNSHeader(id=1, qr=1, rd=1, ra=1), q=DNSQuestion("www.example.com", QTYPE.A))
    rec.add_answer(RR("www.example.com", QTYPE.A, rdata=A("192.0.2.1"), ttl=ttl))
    rec.add_ar(EDNS0(udp_len=1232))
    question = wire.name_to_wire("www.example.com") + b"\x00\x01\x00\x01"
    return wire.parse_reply(bytes(rec.pack()), question, min_ttl=0, max_ttl=86400, max_negative_ttl=3600)


@dataclass
class Row:
    comment: str
    entry: bool = True             # False: nothing cached
    stored_with: StaleConfig = ON  # stale settings when the entry was stored (sets stale_until)
    age: float = 0.0               # seconds since the store, at decision time
    recheck_for: float | None = None  # recheck timer set this long, at expiry + 5 s
    now_config: StaleConfig = ON   # stale settings at decision time (after a reload, maybe)
    expect: str = stale.RESOLVE


ROWS = [
    Row("nothing cached: ask upstream", entry=False, expect=stale.RESOLVE),
    Row("nothing cached, stale disabled: same", entry=False, now_config=OFF, expect=stale.RESOLVE),
    Row("just stored: fresh", age=0, expect=stale.ANSWER_FRESH),
    Row("last moment of freshness", age=TTL - 0.001, expect=stale.ANSWER_FRESH),
    Row("fresh, stale disabled: still fresh", age=10, now_config=OFF, expect=stale.ANSWER_FRESH),
    Row("fresh even if a recheck timer is set", age=10, recheck_for=30, expect=stale.ANSWER_FRESH),
    Row("expiry instant: refresh, stale as fallback", age=TTL, expect=stale.RESOLVE_OR_STALE),
    Row("expired within the stale window", age=TTL + 600, expect=stale.RESOLVE_OR_STALE),
    Row("last moment of the stale window", age=TTL + 3600 - 0.001, expect=stale.RESOLVE_OR_STALE),
    Row("expired past max_age (stale_until)", age=TTL + 3600, expect=stale.RESOLVE),
    Row("long past max_age", age=TTL + 10 * 3600, expect=stale.RESOLVE),
    Row("recheck timer running: answer stale now", age=TTL + 10, recheck_for=30, expect=stale.ANSWER_STALE),
    Row("recheck timer about to end", age=TTL + 5 + 29.999, recheck_for=30, expect=stale.ANSWER_STALE),
    Row("recheck timer ended: try upstream again", age=TTL + 5 + 30, recheck_for=30,
        expect=stale.RESOLVE_OR_STALE),
    Row("recheck timer running but past stale_until", age=TTL + 3600, recheck_for=10 * 3600,
        expect=stale.RESOLVE),
    Row("stale disabled by reload: expired entry is refetched", age=TTL + 10, now_config=OFF,
        expect=stale.RESOLVE),
    Row("stale disabled by reload, recheck running: still refetch", age=TTL + 10, recheck_for=30,
        now_config=OFF, expect=stale.RESOLVE),
    Row("stored with stale disabled: no window at all", stored_with=OFF, age=TTL + 1, expect=stale.RESOLVE),
    Row("max_age lowered by reload: past the new limit", age=TTL + 120,
        now_config=StaleConfig(max_age=60.0), expect=stale.RESOLVE),
    Row("max_age lowered by reload, recheck running: past the new limit", age=TTL + 120, recheck_for=3600,
        now_config=StaleConfig(max_age=60.0), expect=stale.RESOLVE),
    Row("max_age lowered by reload: exactly at the new limit", age=TTL + 60,
        now_config=StaleConfig(max_age=60.0), expect=stale.RESOLVE),
    Row("max_age lowered by reload: still within it", age=TTL + 30,
        now_config=StaleConfig(max_age=60.0), expect=stale.RESOLVE_OR_STALE),
    Row("max_age raised by reload does not extend an old entry's stale_until", age=TTL + 3600 + 1,
        now_config=StaleConfig(max_age=86400.0), expect=stale.RESOLVE),
    Row("max_age zero: expiry means refetch", age=TTL + 0.5, now_config=StaleConfig(max_age=0.0),
        expect=stale.RESOLVE),
]


@pytest.mark.parametrize("row", ROWS, ids=[r.comment for r in ROWS])
def test_decide(row: Row):
    clock = FakeClock(T0)
    cache = Cache(10)
    entry = None
    if row.entry:
        entry = cache.put(b"k", prepared(), clock.monotonic(), stale.stale_window(row.stored_with))
        if row.recheck_for is not None:
            entry.recheck_until = entry.fresh_until + 5 + row.recheck_for
    clock.advance(row.age)
    assert stale.decide(entry, clock.monotonic(), row.now_config) == row.expect


def test_decide_with_the_cache_state():
    """decide agrees with Cache.lookup: FRESH ⇔ ANSWER_FRESH, and a MISS entry is gone."""
    clock = FakeClock(T0)
    cache = Cache(10)
    cache.put(b"k", prepared(), clock.monotonic(), stale.stale_window(ON))
    for age in (0, TTL - 1, TTL, TTL + 100, TTL + 3600):
        now = T0 + age
        state, entry = cache.lookup(b"k", now)
        action = stale.decide(entry, now, ON)
        assert (state == "fresh") == (action == stale.ANSWER_FRESH)
        assert (state == "miss") == (entry is None)


@pytest.mark.parametrize("config,window", [(ON, 3600.0), (OFF, 0.0), (StaleConfig(max_age=5.0), 5.0),
                                           (StaleConfig(enabled=False, max_age=5.0), 0.0)])
def test_stale_window(config, window):
    assert stale.stale_window(config) == window


@pytest.mark.parametrize("held_epoch, epoch, expect", [
    (0, None, stale.ANSWER_STALE),        # no epoch given: the timer alone decides
    (0, 0, stale.ANSWER_STALE),           # same epoch: the hold stands
    (0, 1, stale.RESOLVE_OR_STALE),       # an upstream recovered since: ask again now
    (3, 4, stale.RESOLVE_OR_STALE),
])
def test_recovery_epoch_ends_the_recheck_hold(held_epoch, epoch, expect):
    clock = FakeClock(T0)
    entry = Cache(10).put(b"k", prepared(), clock.monotonic(), stale.stale_window(ON))
    entry.recheck_until = entry.fresh_until + 30
    entry.recheck_epoch = held_epoch
    clock.advance(TTL + 5)
    assert stale.decide(entry, clock.monotonic(), ON, epoch) == expect
