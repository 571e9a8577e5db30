"""Table tests for the RFC 8767 serve-stale decision (resolver.policy.stale): the timers (decide),
every outcome of a query (plan, with the hit path checked against every row) and of a failed fetch."""

from __future__ import annotations

import math
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


# -- plan: every outcome of a query, one table --------------------------------------

P = stale.Plan
FETCH = P(stale.UPSTREAM, fetch=True)                       # wait for the fetch, SERVFAIL on failure
RACE = P(stale.UPSTREAM, fetch=True, wait=ON.client_timeout)  # wait ≤ client_timeout, then stale
FIRST = StaleConfig(enabled=True, max_age=3600.0, answer_ttl=30, client_timeout=0.0, recheck=30.0)
IN_WINDOW = TTL + 600
RECHECK = TTL + 10  # with recheck_for=30: the timer runs


@dataclass
class PlanRow:
    comment: str
    expect: stale.Plan
    entry: bool = True
    age: float = 0.0
    recheck_for: float | None = None   # recheck timer set this long, at expiry + 5 s
    held_epoch: int = 0                # the pool epoch the timer was set under
    epoch: int = 0                     # the pool epoch now
    now_config: StaleConfig = ON
    down: bool = False                 # every upstream known down
    slow: bool = False                 # the upstream group's best smoothed RTT is past stale.slow_upstream
    lossy: bool = False                # the upstream group loses stale.lossy_upstream of its sends
    fetching: bool = False             # the key's fetch is in flight
    cap: str | None = None             # stale.OVERLOAD / stale.CLIENT_LIMIT reached
    lkg_text: bytes | None = None      # held by last-known-good (the answer carries an EDE text)


PLAN_ROWS = [
    PlanRow("nothing cached: fetch, SERVFAIL on failure", FETCH, entry=False),
    PlanRow("nothing cached, client at its share, fetch in flight: joining is free", FETCH, entry=False,
            fetching=True, cap=stale.CLIENT_LIMIT),
    PlanRow("nothing cached, client at its share: Not Ready", P(stale.NOT_READY, stale.CLIENT_LIMIT), entry=False,
            cap=stale.CLIENT_LIMIT),
    PlanRow("nothing cached, server overloaded: Not Ready", P(stale.NOT_READY, stale.OVERLOAD), entry=False,
            cap=stale.OVERLOAD),
    PlanRow("nothing cached, overloaded, fetch in flight: no waiting either", P(stale.NOT_READY, stale.OVERLOAD),
            entry=False, cap=stale.OVERLOAD, fetching=True),
    PlanRow("fresh", P(stale.FRESH)),
    PlanRow("fresh, overloaded: still answered", P(stale.FRESH), age=10, cap=stale.OVERLOAD),
    PlanRow("fresh, upstreams down, client at its share", P(stale.FRESH), age=10, down=True,
            cap=stale.CLIENT_LIMIT),
    PlanRow("expired within the window: race client_timeout", RACE, age=IN_WINDOW),
    PlanRow("expired past the window: fetch, nothing to fall back on", FETCH, age=TTL + 3600),
    PlanRow("past the window, client at its share: Not Ready", P(stale.NOT_READY, stale.CLIENT_LIMIT),
            age=TTL + 3600, cap=stale.CLIENT_LIMIT),
    PlanRow("past the window, upstreams down: nothing servable, fetch", FETCH, age=TTL + 3600, down=True),
    PlanRow("stale disabled by reload: fetch", FETCH, age=IN_WINDOW, now_config=OFF),
    PlanRow("recheck timer running: stale now", P(stale.STALE, "recheck"), age=RECHECK, recheck_for=30),
    PlanRow("recheck running, held by last-known-good", P(stale.STALE, "recheck"), age=RECHECK, recheck_for=30,
            lkg_text=b"upstream answered NODATA; serving last known good records"),
    PlanRow("recheck running, overloaded: the hit path's answer", P(stale.STALE, "recheck"), age=RECHECK,
            recheck_for=30, cap=stale.OVERLOAD),
    PlanRow("recheck running, upstreams down: no new hold", P(stale.STALE, "recheck"), age=RECHECK,
            recheck_for=30, down=True),
    PlanRow("recheck timer ended: race again", RACE, age=TTL + 5 + 30, recheck_for=30),
    PlanRow("recheck set before an upstream recovered: race again", RACE, age=RECHECK, recheck_for=30,
            held_epoch=0, epoch=1),
    PlanRow("old-epoch recheck, overloaded: stale, overload", P(stale.STALE, "overload"), age=RECHECK,
            recheck_for=30, epoch=1, cap=stale.OVERLOAD),
    PlanRow("in the window, overloaded: stale, overload", P(stale.STALE, "overload"), age=IN_WINDOW,
            cap=stale.OVERLOAD),
    PlanRow("in the window, upstreams down: stale now, hold, one fetch behind",
            P(stale.STALE, "upstreams_down", fetch=True, hold=True), age=IN_WINDOW, down=True),
    PlanRow("upstreams down, fetch already in flight: hold, no second fetch",
            P(stale.STALE, "upstreams_down", hold=True), age=IN_WINDOW, down=True, fetching=True),
    PlanRow("upstreams down, client at its share: hold, no fetch",
            P(stale.STALE, "upstreams_down", hold=True), age=IN_WINDOW, down=True, cap=stale.CLIENT_LIMIT),
    PlanRow("in the window, client at its share: stale, client_limit", P(stale.STALE, "client_limit"),
            age=IN_WINDOW, cap=stale.CLIENT_LIMIT),
    PlanRow("client at its share, fetch in flight: join it, race", RACE, age=IN_WINDOW, cap=stale.CLIENT_LIMIT,
            fetching=True),
    PlanRow("answer-first (client_timeout 0): stale now, fetch behind",
            P(stale.STALE, "answer_first", fetch=True), age=IN_WINDOW, now_config=FIRST),
    PlanRow("answer-first, fetch in flight: joined", P(stale.STALE, "answer_first", fetch=True), age=IN_WINDOW,
            now_config=FIRST, fetching=True),
    PlanRow("answer-first, client at its share: stale, client_limit", P(stale.STALE, "client_limit"),
            age=IN_WINDOW, now_config=FIRST, cap=stale.CLIENT_LIMIT),
    PlanRow("answer-first, upstreams down: the down row wins (hold)",
            P(stale.STALE, "upstreams_down", fetch=True, hold=True), age=IN_WINDOW, now_config=FIRST, down=True),
    PlanRow("in the window, upstreams slow: stale now, fetch behind",
            P(stale.STALE, "slow_upstream", fetch=True), age=IN_WINDOW, slow=True),
    PlanRow("upstreams slow, fetch in flight: stale now, joined", P(stale.STALE, "slow_upstream", fetch=True),
            age=IN_WINDOW, slow=True, fetching=True),
    PlanRow("upstreams slow, client at its share: stale, client_limit", P(stale.STALE, "client_limit"),
            age=IN_WINDOW, slow=True, cap=stale.CLIENT_LIMIT),
    PlanRow("upstreams slow, recheck timer running: recheck", P(stale.STALE, "recheck"), age=RECHECK,
            recheck_for=30, slow=True),
    PlanRow("fresh, upstreams slow: fresh", P(stale.FRESH), age=10, slow=True),
    PlanRow("past the window, upstreams slow: nothing servable, fetch", FETCH, age=TTL + 3600, slow=True),
    PlanRow("in the window, upstreams lossy: stale now, fetch behind",
            P(stale.STALE, "lossy_upstream", fetch=True), age=IN_WINDOW, lossy=True),
    PlanRow("upstreams lossy, fetch in flight: stale now, joined", P(stale.STALE, "lossy_upstream", fetch=True),
            age=IN_WINDOW, lossy=True, fetching=True),
    PlanRow("upstreams lossy, client at its share: stale, client_limit", P(stale.STALE, "client_limit"),
            age=IN_WINDOW, lossy=True, cap=stale.CLIENT_LIMIT),
    PlanRow("upstreams lossy and slow: the slow row wins", P(stale.STALE, "slow_upstream", fetch=True),
            age=IN_WINDOW, lossy=True, slow=True),
    PlanRow("upstreams lossy, answer-first: answer_first", P(stale.STALE, "answer_first", fetch=True),
            age=IN_WINDOW, now_config=FIRST, lossy=True),
    PlanRow("upstreams lossy, recheck timer running: recheck", P(stale.STALE, "recheck"), age=RECHECK,
            recheck_for=30, lossy=True),
    PlanRow("fresh, upstreams lossy: fresh", P(stale.FRESH), age=10, lossy=True),
    PlanRow("past the window, upstreams lossy: nothing servable, fetch", FETCH, age=TTL + 3600, lossy=True),
]


def _plan_entry(row: PlanRow, cache: Cache, key: bytes, clock: FakeClock):
    if not row.entry:
        return None
    entry = cache.put(key, prepared(), clock.monotonic(), stale.stale_window(ON))
    if row.recheck_for is not None:
        entry.recheck_until = entry.fresh_until + 5 + row.recheck_for
        entry.recheck_epoch = row.held_epoch
    entry.lkg_text = row.lkg_text
    return entry


@pytest.mark.parametrize("row", PLAN_ROWS, ids=[r.comment for r in PLAN_ROWS])
def test_plan(row: PlanRow):
    clock = FakeClock(T0)
    entry = _plan_entry(row, Cache(10), b"k", clock)
    clock.advance(row.age)
    got = stale.plan(entry, clock.monotonic(), row.now_config, row.epoch, upstreams_down=row.down,
                     upstreams_slow=row.slow, upstreams_lossy=row.lossy, fetching=row.fetching, cap=row.cap)
    assert got == row.expect


def test_plan_table_covers_every_outcome():
    """Every answer kind and every stale reason the plan can give has a row."""
    kinds = {(r.expect.answer, r.expect.reason, r.expect.fetch, r.expect.hold, r.expect.wait is not None)
             for r in PLAN_ROWS}
    reasons = {r.expect.reason for r in PLAN_ROWS if r.expect.answer == stale.STALE}
    assert reasons == {"recheck", "overload", "upstreams_down", "client_limit", "answer_first", "slow_upstream",
                       "lossy_upstream"}
    assert {k[0] for k in kinds} == {stale.FRESH, stale.STALE, stale.UPSTREAM, stale.NOT_READY}
    assert {r.expect.reason for r in PLAN_ROWS if r.expect.answer == stale.NOT_READY} == set(stale.CAP_REASON)


class _Pool:
    def __init__(self, epoch: int):
        self.epoch = epoch


@pytest.mark.parametrize("row", PLAN_ROWS, ids=[r.comment for r in PLAN_ROWS])
def test_fast_path_agrees_with_plan(row: PlanRow):
    """The hit path answers exactly the rows the plan answers from cache without a fetch:
    "fresh", and stale "recheck" (bar a last-known-good hold, whose EDE text only the slow
    path renders); every other row it leaves to the slow path.  It never sees the caps,
    the upstreams' state or the in-flight map: the plan's row order makes them irrelevant
    to the two rows it serves, which this test checks on every row."""
    import dataclasses

    from resolver.config import Config
    from resolver.serve.fastpath import FastPath

    clock = FakeClock(T0)
    cache = Cache(10)
    data = bytes(DNSRecord(DNSHeader(id=0x4242, rd=1), q=DNSQuestion("www.example.com", QTYPE.A)).pack())
    entry = _plan_entry(row, cache, wire.parse_query(data).key, clock)
    clock.advance(row.age)
    config = dataclasses.replace(Config(), stale=row.now_config)
    fast = FastPath(config, cache, _Pool(row.epoch), clock, lambda key: None)
    expect = stale.plan(entry, clock.monotonic(), row.now_config, row.epoch, upstreams_down=row.down,
                        fetching=row.fetching, cap=row.cap)
    reply = fast.answer_fast(data, False)
    if expect.answer == stale.FRESH:
        assert reply is not None and DNSRecord.parse(reply).a.ttl == TTL - math.ceil(row.age)
    elif expect == stale.Plan(stale.STALE, "recheck") and row.lkg_text is None:
        assert reply is not None and DNSRecord.parse(reply).a.ttl == row.now_config.answer_ttl
        assert entry.tally.stale == 1  # counted as a stale answer
    else:
        assert reply is None


@pytest.mark.parametrize("comment, entry, age, kind, servfail_ttl, expect", [
    ("nothing cached: remember the failure briefly", False, 0, None, 5, stale.CACHE_SERVFAIL),
    ("nothing cached, servfail_ttl 0: nothing", False, 0, None, 0, stale.NOTHING),
    ("stale-servable answer: hold it (recheck)", True, TTL + 10, None, 5, stale.HOLD),
    ("fresh answer (a prefetch failed): hold it", True, 10, None, 5, stale.HOLD),
    ("past its stale window: replaced by the failure", True, TTL + 3600, None, 5, stale.CACHE_SERVFAIL),
    ("past its window, servfail_ttl 0: nothing", True, TTL + 3600, None, 0, stale.NOTHING),
    ("a remembered failure is never held", True, 1, wire.FAILURE, 5, stale.NOTHING),
])
def test_after_failure(comment, entry, age, kind, servfail_ttl, expect):
    clock = FakeClock(T0)
    cached = None
    if entry:
        cached = Cache(10).put(b"k", prepared(), clock.monotonic(), stale.stale_window(ON))
        if kind is not None:
            cached.kind = kind
    clock.advance(age)
    assert stale.after_failure(cached, clock.monotonic(), servfail_ttl) == expect
