"""The fleet cache tier end to end: forwarders sharing a real redis-server.

Each forwarder runs in-process (RunningForwarder, its own FakeClock; the clocks
start at the same wall time, as NTP-synced hosts do) against a FakeUpstream;
the fleet tier is a real redis-server on loopback (tests/support/redis_server.py).
The stories of issue 17:

* a node started during an upstream blackhole serves stale every name other
  nodes cached (it never saw any of them);
* Redis frozen (SIGSTOP) costs cache hits nothing and a miss at most the read
  budget, then the breaker stops asking; thawed, one probe closes it again;
* the forwarder starts and serves with Redis down;
* a value moved to another key inside Redis is never served as that name's answer;
* Redis restarted empty mid-run is survived, and filled again.
"""

from __future__ import annotations

import time

import dns.rcode
import pytest

from tests.support.client import ask, ede_codes, eventually, ttls
from tests.support.redis_server import free_port

SECRET = "fleet-test-secret-0123456789abcdef"
TTL = 300
# Quick upstream give-up (the fake upstream is local) and a short client_timeout, so a
# blackholed upstream turns into stale answers within a second.
UPSTREAM = {"attempt_timeout": 0.4, "total_timeout": 0.8}
STALE = {"client_timeout": 0.3}


def names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}.fleet.example" for i in range(count)]


def ip_of(name: str) -> str:
    """A distinct address per name, so an answer moved to another name is recognisable."""
    n = sum(name.encode()) % 250 + 1
    return f"192.0.2.{n}" if "-b" not in name else f"198.51.100.{n}"


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "fleet.key"
    path.write_text(SECRET + "\n")
    return str(path)


@pytest.fixture
def node(start_forwarder, fake_upstream, secret_file):
    """Factory: a forwarder on the fake upstream with the fleet tier at ``url``."""

    def start(url: str, **fleet):
        return start_forwarder([fake_upstream.address], upstream=UPSTREAM, stale=STALE,
                               fleet={"url": url, "secret_file": secret_file, **fleet})

    return start


def serve(upstream, all_names):
    for name in all_names:
        upstream.answer(name, "A", ip_of(name), ttl=TTL)


def warm(fwd, some_names) -> None:
    for name in some_names:
        msg = ask(fwd.port, name)
        assert msg.rcode() == dns.rcode.NOERROR and msg.answer, name
    wrote = lambda: fwd.metric("resolver_fleet_writes_total") >= len(some_names)  # noqa: E731
    assert eventually(wrote, timeout=5), "written behind to the fleet"


def answer_ip(msg) -> str | None:
    for rrset in msg.answer:
        for rr in rrset:
            return rr.address
    return None


def test_a_new_node_serves_stale_every_name_the_fleet_learnt_during_a_blackhole(
        node, fake_upstream, redis_server):
    """Nodes A and B warm different halves; the upstream blackholes; C starts empty and,
    with every TTL past, answers every name stale (EDE 3, TTL answer_ttl) from the fleet."""
    half_a, half_b = names("a", 15), names("b", 15)
    serve(fake_upstream, half_a + half_b)
    a, b = node(redis_server.url), node(redis_server.url)
    warm(a, half_a)
    warm(b, half_b)
    assert redis_server.client().dbsize() == 30
    fake_upstream.mode("drop")  # the blackhole
    c = node(redis_server.url)
    c.advance(TTL + 1)  # C's clock: every entry the fleet holds is past its TTL, inside its stale window
    for name in half_a + half_b:
        msg = ask(c.port, name, timeout=5)
        assert msg.rcode() == dns.rcode.NOERROR, name
        assert answer_ip(msg) == ip_of(name), name
        assert ttls(msg) == {30} and ede_codes(msg) == [3], name
    assert c.metric("resolver_fleet_reads_total") >= 30
    assert c.metric("resolver_cache_tier_lookups_total", tier="fleet", result="hit") >= 30
    # Without the fleet a node in C's place has nothing: SERVFAIL, never NXDOMAIN.
    assert ask(c.port, "never.fleet.example", timeout=5).rcode() == dns.rcode.SERVFAIL


def test_a_fresh_fleet_entry_is_answered_with_source_fleet(node, fake_upstream, redis_server):
    serve(fake_upstream, ["www.fleet.example"])
    a = node(redis_server.url)
    warm(a, ["www.fleet.example"])
    fake_upstream.delay(1.0)  # the upstream is slow: the fleet answers first
    c = node(redis_server.url)
    started = time.monotonic()
    msg = ask(c.port, "www.fleet.example")
    assert time.monotonic() - started < 0.9  # not waiting for the slow upstream
    assert answer_ip(msg) == ip_of("www.fleet.example") and not ede_codes(msg)
    assert 0 < min(ttls(msg)) <= TTL
    assert c.metric("resolver_responses_by_source_total", source="fleet") == 1


def test_a_frozen_redis_costs_hits_nothing_and_a_miss_at_most_the_budget(node, fake_upstream, redis_server):
    cached, misses, later = names("hit", 20), names("miss", 12), names("later", 5)
    serve(fake_upstream, cached + misses + later)
    # breaker_reset far beyond the test's run time on a loaded machine (the harness clock flows):
    # the breaker must not half-open by itself before the test thaws Redis and jumps the clock.
    fwd = node(redis_server.url, read_budget=0.03, breaker_failures=5, breaker_reset=300.0)
    warm(fwd, cached)
    reads = fwd.metric("resolver_fleet_reads_total")
    redis_server.freeze()
    # Hits: answered from memory; the fleet is never asked.
    durations = []
    for _ in range(5):
        for name in cached:
            started = time.perf_counter()
            assert ask(fwd.port, name).answer
            durations.append(time.perf_counter() - started)
    durations.sort()
    assert fwd.metric("resolver_fleet_reads_total") == reads
    assert durations[int(len(durations) * 0.99) - 1] < 0.25  # loose: a loaded machine; the point is no wait
    # Misses: the upstream answers (it is raced, not queued behind Redis); each read is cut at the budget.
    for name in misses:
        msg = ask(fwd.port, name)
        assert answer_ip(msg) == ip_of(name)
    # Each read was cut at the budget (30 ms; in the background once the upstream had answered).
    assert eventually(lambda: fwd.metric("resolver_fleet_timeouts_total") >= 5)
    count = fwd.metric("resolver_fleet_read_duration_seconds_count")
    assert count >= 5 and fwd.metric("resolver_fleet_read_duration_seconds_bucket", le="0.25") == count
    # After 5 timeouts in a row the breaker is open: later misses do not ask at all.
    assert eventually(lambda: fwd.metric("resolver_fleet_breaker_state", state="open") == 1)
    assert fwd.metric("resolver_fleet_breaker_opened_total") == 1
    reads = fwd.metric("resolver_fleet_reads_total")
    for name in later:
        assert answer_ip(ask(fwd.port, name)) == ip_of(name)
    assert fwd.metric("resolver_fleet_reads_total") == reads
    assert fwd.metric("resolver_fleet_read_skips_total") == len(later)
    # Thawed: after breaker_reset one miss probes, succeeds, and closes the breaker.
    redis_server.thaw()
    fwd.advance(300)
    serve(fake_upstream, ["after.fleet.example"])
    assert ask(fwd.port, "after.fleet.example").answer
    assert eventually(lambda: fwd.metric("resolver_fleet_breaker_state", state="closed") == 1)


def test_a_frozen_redis_with_the_upstream_blackholed_costs_a_miss_the_upstream_deadline_only(
        node, fake_upstream, redis_server):
    """Nothing anywhere: the client gets SERVFAIL within the upstream deadline, not later."""
    fwd = node(redis_server.url)
    fake_upstream.mode("drop")
    redis_server.freeze()
    started = time.monotonic()
    assert ask(fwd.port, "nothing.fleet.example", timeout=5).rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < UPSTREAM["total_timeout"] + 1.0


def test_starts_and_serves_with_redis_down(node, fake_upstream):
    serve(fake_upstream, names("down", 8))
    fwd = node(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    for name in names("down", 8):
        assert answer_ip(ask(fwd.port, name)) == ip_of(name)
    assert fwd.metric("resolver_fleet_errors_total") >= 1
    assert fwd.metric("resolver_fleet_breaker_state", state="open") == 1
    assert fwd.http("/readyz")[0] == 200


def test_a_value_moved_to_another_key_is_never_served_as_that_names_answer(node, fake_upstream, redis_server):
    """Someone with write access to Redis copies bank's value over www's key: refused, counted."""
    serve(fake_upstream, ["www.fleet.example", "bank-b.fleet.example"])
    a = node(redis_server.url, key_prefix="dns:")
    warm(a, ["www.fleet.example", "bank-b.fleet.example"])
    r = redis_server.client()
    keys = sorted(r.keys("dns:*"))
    assert len(keys) == 2
    www_key = next(k for k in keys if b"www" in k)
    bank_key = next(k for k in keys if b"bank" in k)
    r.set(www_key, r.get(bank_key), px=600_000)
    fake_upstream.mode("drop")
    c = node(redis_server.url, key_prefix="dns:")
    c.advance(TTL + 1)
    msg = ask(c.port, "www.fleet.example", timeout=5)
    assert msg.rcode() == dns.rcode.SERVFAIL, "nothing authentic to serve"
    assert answer_ip(msg) is None
    assert c.metric("resolver_fleet_rejected_values_total", reason="mac") == 1
    # The name whose value was copied is still served, stale, with its own answer.
    msg = ask(c.port, "bank-b.fleet.example", timeout=5)
    assert answer_ip(msg) == ip_of("bank-b.fleet.example") and ede_codes(msg) == [3]


def test_a_value_written_with_another_secret_is_refused(node, fake_upstream, redis_server, tmp_path):
    serve(fake_upstream, ["www.fleet.example"])
    other = tmp_path / "other.key"
    other.write_text("another-fleet-another-secret-000\n")
    a = node(redis_server.url, secret_file=str(other))
    warm(a, ["www.fleet.example"])
    fake_upstream.mode("drop")
    c = node(redis_server.url)
    c.advance(TTL + 1)
    assert ask(c.port, "www.fleet.example", timeout=5).rcode() == dns.rcode.SERVFAIL
    assert c.metric("resolver_fleet_rejected_values_total", reason="mac") == 1


def test_redis_restarted_empty_mid_run_is_survived(node, fake_upstream, redis_server):
    first, second = names("first", 6), names("second", 6)
    serve(fake_upstream, first + second)
    fwd = node(redis_server.url, breaker_failures=2)
    warm(fwd, first)
    redis_server.kill()
    # Redis gone: hits and misses are served; reads and writes fail fast and trip the breaker.
    for name in first + second[:3]:
        assert answer_ip(ask(fwd.port, name)) == ip_of(name)
    assert fwd.metric("resolver_fleet_breaker_state", state="open") == 1
    redis_server.start()  # back, empty, on the same port
    assert redis_server.client().dbsize() == 0
    fwd.advance(10)  # breaker_reset
    for name in second[3:]:
        assert answer_ip(ask(fwd.port, name)) == ip_of(name)
    assert eventually(lambda: redis_server.client().dbsize() >= 2, timeout=5), "writes flow again"
    assert fwd.metric("resolver_fleet_breaker_state", state="closed") == 1


def test_a_full_write_queue_drops_and_counts(node, fake_upstream, redis_server):
    many = names("q", 30)
    serve(fake_upstream, many)
    fwd = node(redis_server.url, write_queue=1)
    redis_server.freeze()  # the writer is stuck on its first batch; the queue (1) fills
    for name in many:
        assert answer_ip(ask(fwd.port, name)) == ip_of(name)
    assert fwd.metric("resolver_fleet_dropped_writes_total") >= 1
    redis_server.thaw()


def test_fleet_off_asks_nothing(start_forwarder, fake_upstream):
    serve(fake_upstream, ["www.fleet.example"])
    fwd = start_forwarder([fake_upstream.address])
    assert ask(fwd.port, "www.fleet.example").answer
    _, text = fwd.http("/metrics")
    assert "\nresolver_fleet_enabled 0.0\n" in text  # exported, and says off
    assert fwd.metric("resolver_fleet_reads_total") == 0 and fwd.app.fleet is None


def test_an_upstream_that_fails_fast_still_gets_the_fleets_stale_answer(node, fake_upstream, redis_server):
    """SERVFAIL from the upstream before the fleet has answered: the read is awaited (and tried
    once more if it found nothing), and the fleet's entry is served stale instead of SERVFAIL."""
    serve(fake_upstream, ["www.fleet.example"])
    a = node(redis_server.url)
    warm(a, ["www.fleet.example"])
    fake_upstream.mode("servfail")
    c = node(redis_server.url)
    c.advance(TTL + 1)
    msg = ask(c.port, "www.fleet.example")
    assert msg.rcode() == dns.rcode.NOERROR and answer_ip(msg) == ip_of("www.fleet.example")
    assert ede_codes(msg) == [3] and ttls(msg) == {30}
    # Held under the failure recheck timer like any entry that failed to refresh: the next
    # query is answered from memory at once, without asking anyone.
    reads = c.metric("resolver_fleet_reads_total")
    assert ede_codes(ask(c.port, "www.fleet.example")) == [3]
    assert c.metric("resolver_fleet_reads_total") == reads


def test_last_known_good_defends_an_answer_a_node_only_knows_from_the_fleet(
        start_forwarder, fake_upstream, redis_server, secret_file):
    """The AWS-style failure (the authority answers empty) reaching a node that never saw the name:
    the fleet's entry is in its cache before the empty answer arrives, so last-known-good keeps it."""
    from resolver.config import LastKnownGoodConfig

    name = "dynamodb.us-east-1.amazonaws.com"
    fake_upstream.answer(name, "A", "192.0.2.10", ttl=60)
    lkg = LastKnownGoodConfig(zones=("amazonaws.com",), max_age=3600.0, mode="enforce")

    def lkg_node():
        return start_forwarder([fake_upstream.address], upstream=UPSTREAM,
                               stale={**STALE, "last_known_good": lkg},
                               fleet={"url": redis_server.url, "secret_file": secret_file})

    a = lkg_node()
    warm(a, [name])
    fake_upstream.mode("empty").delay(0.1)  # NOERROR, no records; a little slower than Redis
    c = lkg_node()
    c.advance(61)
    msg = ask(c.port, name)
    assert msg.rcode() == dns.rcode.NOERROR and answer_ip(msg) == "192.0.2.10"
    assert ede_codes(msg) == [3]
    assert c.metric("resolver_last_known_good_total", mode="enforce") == 1
