"""Chaos: bounded client load through the forwarder while the upstream misbehaves.

Each test warms the cache with CACHED names, breaks the upstream one way, then runs
ROUNDS rounds of concurrent queries (WORKERS threads, every name once per round,
the whole run capped at BUDGET seconds).  Before each round the forwarder's clock
moves past every TTL *and* past the recheck timer, so every round asks upstream
again: the worst case.  Each round also asks a few names the forwarder has never
cached.  Expectations:

* cached names: zero client-visible failures (every answer NOERROR with records),
  each within client_timeout plus a generous margin (a loaded 2-core machine);
* never-cached names: an answer or SERVFAIL within the total timeout — never
  NXDOMAIN, never silence;
* upstream queries bounded: at most one refresh per name per round (coalescing,
  recheck timer, health back-off), each of at most SENDS_PER_REFRESH datagrams
  (a send past its RTO is retransmitted within the deadline, the RTO doubling
  from ``attempt_timeout_min`` each time: RFC 6298 §5.5), plus the background probes.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from resolver.config import LastKnownGoodConfig
from tests.support.fake_upstream import FakeUpstream

CLIENT_TIMEOUT = 0.5
TOTAL_TIMEOUT = 1.0
MARGIN = 1.5          # scheduling slack on a loaded machine; the point is "not 2 s, not 5 s"
TTL = 20
RECHECK = 30
ROUNDS = 3
WORKERS = 8
BUDGET = 40.0
CACHED = [f"c{i}.test" for i in range(12)]

STALE = {"client_timeout": CLIENT_TIMEOUT, "recheck": RECHECK}
UPSTREAM = {"attempt_timeout": 0.4, "total_timeout": TOTAL_TIMEOUT}
RTO_MIN = 0.05  # upstream.attempt_timeout_min's default
# Sends at 0, m, 3m, 7m, ... (2^k - 1)·m < total_timeout for a measured-fast upstream.
SENDS_PER_REFRESH = 1 + math.floor(math.log2(TOTAL_TIMEOUT / RTO_MIN + 1))


def never_cached(round_no: int) -> list[str]:
    return [f"new{round_no}-{i}.test" for i in range(3)]


def publish(up: FakeUpstream) -> None:
    for i, name in enumerate(CACHED):
        up.answer(name, "A", f"192.0.2.{i + 1}", ttl=TTL)
    for r in range(ROUNDS):
        for name in never_cached(r):
            up.answer(name, "A", "198.51.100.1", ttl=TTL)


def query_once(port: int, name: str) -> tuple[str, int | None, bool, float]:
    q = dns.message.make_query(name, "A", use_edns=0)
    t = time.monotonic()
    try:
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=TOTAL_TIMEOUT + 4)
        return name, r.rcode(), bool(r.answer), time.monotonic() - t
    except dns.exception.Timeout:
        return name, None, False, time.monotonic() - t


def load(fwd, between=None) -> tuple[list, float]:
    """ROUNDS rounds over CACHED + never-cached names; returns (results, seconds)."""
    results = []
    start = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        for r in range(ROUNDS):
            if time.monotonic() - start > BUDGET:
                break
            if between is not None:
                between(r)
            fwd.advance(max(TTL, RECHECK) + 1)
            names = CACHED + never_cached(r)
            results += list(pool.map(lambda n: query_once(fwd.port, n), names))
    return results, time.monotonic() - start


def warm(fwd) -> None:
    for name in CACHED:
        _, rcode, has_answer, _ = query_once(fwd.port, name)
        assert rcode == dns.rcode.NOERROR and has_answer, name


def check(results: list, rounds: int = ROUNDS, empty_ok: bool = False) -> None:
    cached = [r for r in results if r[0] in CACHED]
    fresh = [r for r in results if r[0] not in CACHED]
    assert len(cached) == rounds * len(CACHED)
    failures = [r for r in cached if r[1] != dns.rcode.NOERROR or not r[2]]
    assert failures == [], f"client-visible failures for cached names: {failures[:5]}"
    slowest = max(r[3] for r in cached)
    assert slowest <= CLIENT_TIMEOUT + MARGIN, f"a cached name took {slowest:.2f}s"
    for name, rcode, has_answer, took in fresh:
        assert rcode in (dns.rcode.NOERROR, dns.rcode.SERVFAIL), (name, rcode)  # never NXDOMAIN or silence
        assert rcode != dns.rcode.NOERROR or has_answer or empty_ok
        assert took <= TOTAL_TIMEOUT + MARGIN, (name, took)


def upstream_queries(up: FakeUpstream, before: int) -> tuple[int, int]:
    """(refresh queries, probe queries) received since ``before`` calls."""
    calls = up.calls[before:]
    probes = sum(1 for c in calls if c[1] == ".")
    return len(calls) - probes, probes


def bounded(up: FakeUpstream, before: int, seconds: float, rounds: int = ROUNDS) -> None:
    refreshes, probes = upstream_queries(up, before)
    names_asked = rounds * (len(CACHED) + len(never_cached(0)))
    assert refreshes <= names_asked * SENDS_PER_REFRESH, f"{refreshes} upstream queries for {names_asked} name-rounds"
    assert probes <= seconds / 0.5 + 2, f"{probes} probes in {seconds:.1f}s"


@pytest.fixture
def chaos(fake_upstream, start_forwarder):
    publish(fake_upstream)

    def start(**sections):
        sections.setdefault("stale", STALE)
        sections.setdefault("upstream", UPSTREAM)
        fwd = start_forwarder([fake_upstream.address], **sections)
        warm(fwd)
        return fwd

    return fake_upstream, start


def run_chaos(chaos, breaker, between=None, empty_ok: bool = False, **sections):
    """Start a warmed forwarder, break the upstream with ``breaker(up)``, load, check, bound."""
    up, start = chaos
    fwd = start(**sections)
    breaker(up)
    before = len(up.calls)
    results, seconds = load(fwd, between=None if between is None else lambda r: between(up, r))
    check(results, empty_ok=empty_ok)
    bounded(up, before, seconds)
    return fwd, results


def never_cached_rcodes(results) -> set:
    return {r[1] for r in results if r[0] not in CACHED}


def test_flapping_upstream(chaos):
    run_chaos(chaos, lambda up: None, between=lambda up, r: up.mode("drop" if r % 2 == 0 else "normal"))


def test_thirty_percent_packet_loss(chaos):
    run_chaos(chaos, lambda up: up.loss(0.3))


def test_two_second_latency(chaos):
    _, results = run_chaos(chaos, lambda up: up.delay(2.0))
    assert never_cached_rcodes(results) == {dns.rcode.SERVFAIL}


def test_servfail_storm(chaos):
    fwd, results = run_chaos(chaos, lambda up: up.mode("servfail"))
    assert never_cached_rcodes(results) == {dns.rcode.SERVFAIL}
    # Once the upstream is known down, cached names are answered stale at once.
    assert fwd.metric("resolver_stale_answers_total", reason="upstreams_down") > 0


def test_empty_answers_in_a_last_known_good_zone(chaos):
    lkg = LastKnownGoodConfig(zones=("test",), max_age=3600.0, mode="enforce")
    # Never-cached names: the empty answer is all there is (empty_ok).
    fwd, _ = run_chaos(chaos, lambda up: up.mode("empty"), empty_ok=True, stale={**STALE, "last_known_good": lkg})
    assert fwd.metric("resolver_answers_vanished_total") >= len(CACHED)


def test_one_of_two_upstreams_dead(chaos, start_forwarder):
    up, _ = chaos
    dead = FakeUpstream().start()
    try:
        dead.close_port()
        fwd = start_forwarder([dead.address, up.address], stale=STALE, upstream=UPSTREAM)
        warm(fwd)
        results, seconds = load(fwd)
        check(results)
        # The healthy upstream answers: every never-cached name resolves.
        assert all(r[1] == dns.rcode.NOERROR for r in results if r[0] not in CACHED)
        # The dead one is marked down after max_failures and then skipped (probes aside).
        label = f"udp://{dead.address}"
        assert fwd.metric("resolver_upstream_up", upstream=label) == 0
        assert fwd.metric("resolver_upstream_requests_total", upstream=label) <= 3 + ROUNDS
    finally:
        dead.stop()
