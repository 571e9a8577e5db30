"""The fleet cache tier on a Redis Cluster and behind Redis Sentinel (``fleet.mode``), end to end.

Real servers on loopback (tests/support/redis_server.py): a 3-master cluster made by
``redis-cli --cluster create``, and one master watched by one Sentinel.  The same stories
as tests/integration/test_fleet.py for each mode:

* nodes write names behind (on a cluster the keys land in different slots, on different
  masters: reads are an MGET per slot, writes a SET per key, one pipeline per master);
* a node started during an upstream blackhole serves every one of them stale;
* a value moved to another key inside Redis is refused, never served as that name's answer.
"""

from __future__ import annotations

import shutil
import time

import dns.rcode
import pytest
import redis

from tests.support.client import ask, ede_codes, eventually, ttls
from tests.support.redis_server import HAVE_REDIS, HOST, RedisClusterNodes, RedisSentinelSet, free_port

pytestmark = pytest.mark.skipif(not HAVE_REDIS or not shutil.which("redis-cli"),
                                reason="redis-server or redis-cli is not installed (`make test` installs them)")

SECRET = "fleet-test-secret-0123456789abcdef"
TTL = 300
UPSTREAM = {"attempt_timeout": 0.4, "total_timeout": 0.8}  # a blackholed upstream gives up fast
STALE = {"client_timeout": 0.3}


def names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{i}.fleet.example" for i in range(count)]


def ip_of(name: str) -> str:
    """A distinct address per name, so an answer moved to another name is recognisable."""
    return f"192.0.2.{sum(name.encode()) % 250 + 1}"


def answer_ip(msg) -> str | None:
    for rrset in msg.answer:
        for rr in rrset:
            return rr.address
    return None


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory):
    """Three masters, no replicas; shared by this module's tests (each uses its own key prefix)."""
    with RedisClusterNodes(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def redis_sentinel(tmp_path):
    with RedisSentinelSet(tmp_path / "sentinel") as sentinel:
        yield sentinel


@pytest.fixture
def node(start_forwarder, fake_upstream, tmp_path):
    """Factory: a forwarder on the fake upstream with the given ``fleet:`` section (and the shared secret)."""
    secret = tmp_path / "fleet.key"
    secret.write_text(SECRET + "\n")

    def start(**fleet):
        # A read budget a loaded CI machine can keep (a cluster read may open a connection
        # to each master): these tests are about the modes; the 30 ms default's cut-off is
        # tested where a test sets read_budget itself.
        return start_forwarder([fake_upstream.address], upstream=UPSTREAM, stale=STALE,
                               fleet={"secret_file": str(secret), "read_budget": 0.5, **fleet})

    return start


def warm(fwd, upstream, some_names) -> None:
    for name in some_names:
        upstream.answer(name, "A", ip_of(name), ttl=TTL)
        msg = ask(fwd.port, name)
        assert msg.rcode() == dns.rcode.NOERROR and answer_ip(msg) == ip_of(name), name
    wrote = lambda: fwd.metric("resolver_fleet_writes_total") >= len(some_names)  # noqa: E731
    assert eventually(wrote, timeout=5), "written behind to the fleet"


def assert_served_stale(fwd, some_names) -> None:
    """``fwd`` (its clock past every TTL, the upstream blackholed) answers each name stale from the fleet."""
    for name in some_names:
        msg = ask(fwd.port, name, timeout=5)
        assert msg.rcode() == dns.rcode.NOERROR and answer_ip(msg) == ip_of(name), name
        assert ttls(msg) == {30} and ede_codes(msg) == [3], name
    assert fwd.metric("resolver_cache_tier_lookups_total", tier="fleet", result="hit") >= len(some_names)


def label(name: str) -> bytes:
    """The first label of ``name`` as it appears in a cache key (wire form: length, then text)."""
    first = name.split(".")[0].encode()
    return bytes([len(first)]) + first


def move_value(get_from, set_on, source_key: bytes, target_key: bytes) -> None:
    """What someone with write access to Redis can do: copy one key's value over another's."""
    set_on.set(target_key, get_from.get(source_key), px=600_000)


# ------------------------------------------------------------------------------- cluster


def cluster_fleet(cluster, prefix: str) -> dict:
    return {"mode": "cluster", "url": cluster.url, "key_prefix": prefix}


@pytest.mark.slow  # the cluster's start (redis-cli --cluster create) takes 2-7 s
def test_cluster_a_new_node_serves_stale_every_name_written_across_the_masters(
        node, fake_upstream, redis_cluster):
    half_a, half_b = names("ca", 15), names("cb", 15)
    a, b = node(**cluster_fleet(redis_cluster, "c1:")), node(**cluster_fleet(redis_cluster, "c1:"))
    warm(a, fake_upstream, half_a)
    warm(b, fake_upstream, half_b)
    where = redis_cluster.all_keys("c1:*")
    assert len(where) == 30
    assert set(where.values()) == {0, 1, 2}, "the keys are spread over every master"
    fake_upstream.mode("drop")  # the blackhole
    c = node(**cluster_fleet(redis_cluster, "c1:"))
    c.advance(TTL + 1)
    assert_served_stale(c, half_a + half_b)
    assert c.metric("resolver_fleet_reads_total") >= 30 and c.metric("resolver_fleet_errors_total") == 0
    assert ask(c.port, "never.fleet.example", timeout=5).rcode() == dns.rcode.SERVFAIL


@pytest.mark.slow  # the cluster's start (redis-cli --cluster create) takes 2-7 s
def test_cluster_a_value_moved_to_a_key_on_another_master_is_refused(node, fake_upstream, redis_cluster):
    a = node(**cluster_fleet(redis_cluster, "c2:"))
    warm(a, fake_upstream, names("m", 12))
    where = redis_cluster.all_keys("c2:*")
    www_key = next(k for k in where if label("m0.fleet.example") in k)
    # a key held by another master than www's: the copy crosses nodes, as an attacker's could
    bank_key = next(k for k, i in where.items() if i != where[www_key])
    bank_name = next(n for n in names("m", 12) if label(n) in bank_key)
    move_value(redis_cluster.client(where[bank_key]), redis_cluster.client(where[www_key]), bank_key, www_key)
    fake_upstream.mode("drop")
    c = node(**cluster_fleet(redis_cluster, "c2:"))
    c.advance(TTL + 1)
    msg = ask(c.port, "m0.fleet.example", timeout=5)
    assert msg.rcode() == dns.rcode.SERVFAIL and answer_ip(msg) is None, "nothing authentic to serve"
    assert c.metric("resolver_fleet_rejected_values_total", reason="mac") == 1
    assert_served_stale(c, [bank_name])  # the copied name keeps its own answer


# ------------------------------------------------------------------------------ sentinel


def sentinel_fleet(sentinel, **more) -> dict:
    # (forwarder_config takes parsed values: fleet.sentinels ["127.0.0.1:P"] parses to ((host, port),))
    return {"mode": "sentinel", "sentinels": ((HOST, sentinel.port),), "sentinel_service": sentinel.service,
            **more}


def test_sentinel_a_new_node_serves_stale_every_name_written_to_the_master(node, fake_upstream, redis_sentinel):
    """The master's address comes from the Sentinel alone (no url); the Lua SET_MANY runs on it."""
    half_a, half_b = names("sa", 10), names("sb", 10)
    a, b = node(**sentinel_fleet(redis_sentinel)), node(**sentinel_fleet(redis_sentinel))
    warm(a, fake_upstream, half_a)
    warm(b, fake_upstream, half_b)
    assert redis_sentinel.master.client().dbsize() == 20
    fake_upstream.mode("drop")
    c = node(**sentinel_fleet(redis_sentinel))
    c.advance(TTL + 1)
    assert_served_stale(c, half_a + half_b)
    assert ask(c.port, "never.fleet.example", timeout=5).rcode() == dns.rcode.SERVFAIL


def test_sentinel_url_gives_the_masters_database(node, fake_upstream, redis_sentinel):
    """In sentinel mode url carries only what the Sentinel cannot tell: here the database."""
    a = node(**sentinel_fleet(redis_sentinel, url="redis:///3"))
    warm(a, fake_upstream, ["db.fleet.example"])
    port = redis_sentinel.master.port
    assert redis.Redis(host=HOST, port=port, db=3).dbsize() == 1
    assert redis.Redis(host=HOST, port=port, db=0).dbsize() == 0


def test_sentinel_a_value_moved_to_another_key_is_refused(node, fake_upstream, redis_sentinel):
    a = node(**sentinel_fleet(redis_sentinel, key_prefix="dns:"))
    warm(a, fake_upstream, ["www.fleet.example", "bank.fleet.example"])
    r = redis_sentinel.master.client()
    keys = sorted(r.keys("dns:*"))
    www_key = next(k for k in keys if b"www" in k)
    bank_key = next(k for k in keys if b"bank" in k)
    move_value(r, r, bank_key, www_key)
    fake_upstream.mode("drop")
    c = node(**sentinel_fleet(redis_sentinel, key_prefix="dns:"))
    c.advance(TTL + 1)
    msg = ask(c.port, "www.fleet.example", timeout=5)
    assert msg.rcode() == dns.rcode.SERVFAIL and answer_ip(msg) is None
    assert c.metric("resolver_fleet_rejected_values_total", reason="mac") == 1
    assert_served_stale(c, ["bank.fleet.example"])


def test_cluster_mode_starts_and_serves_with_the_seed_node_down(node, fake_upstream):
    """No node to learn the slot map from: misses go upstream, the failure is counted (the cluster
    client's own exceptions are not RedisErrors), the breaker opens, the forwarder is ready."""
    fwd = node(mode="cluster", url=f"redis://{HOST}:{free_port()}")  # nothing listens there
    for name in names("down", 6):
        fake_upstream.answer(name, "A", ip_of(name), ttl=TTL)
        assert answer_ip(ask(fwd.port, name)) == ip_of(name)
    assert eventually(lambda: fwd.metric("resolver_fleet_breaker_state", state="open") == 1)
    assert fwd.metric("resolver_fleet_errors_total") >= 1
    assert fwd.http("/readyz")[0] == 200


@pytest.mark.slow  # the cluster's start (redis-cli --cluster create) takes 2-7 s
def test_cluster_a_frozen_master_costs_a_miss_at_most_the_budget(node, fake_upstream, redis_cluster):
    """One master SIGSTOPped: hits never ask; a miss is answered by the upstream, its read cut at
    the budget; then the breaker stops asking."""
    cached, misses = names("fz", 10), names("fm", 8)
    fwd = node(**cluster_fleet(redis_cluster, "c3:"), read_budget=0.03, breaker_failures=3)
    warm(fwd, fake_upstream, cached)
    for name in misses:
        fake_upstream.answer(name, "A", ip_of(name), ttl=TTL)
    reads = fwd.metric("resolver_fleet_reads_total")
    frozen = redis_cluster.nodes[1]
    frozen.freeze()
    try:
        for name in cached:
            assert answer_ip(ask(fwd.port, name)) == ip_of(name)
        assert fwd.metric("resolver_fleet_reads_total") == reads, "a hit never reaches the fleet"
        for name in misses:
            started = time.monotonic()
            assert answer_ip(ask(fwd.port, name)) == ip_of(name)
            assert time.monotonic() - started < 0.5  # the upstream's answer, not a wait on the frozen master
        assert eventually(lambda: fwd.metric("resolver_fleet_breaker_state", state="open") == 1)
        count = fwd.metric("resolver_fleet_read_duration_seconds_count")
        assert count >= 1 and fwd.metric("resolver_fleet_read_duration_seconds_bucket", le="0.25") == count
    finally:
        frozen.thaw()


def test_sentinel_mode_serves_when_the_sentinels_know_no_such_master(node, fake_upstream, redis_sentinel):
    """A wrong sentinel_service (or every Sentinel unsure of the master): each read fails fast and
    is counted, the breaker opens, and misses are answered by the upstream as without the tier."""
    fwd = node(**{**sentinel_fleet(redis_sentinel), "sentinel_service": "no-such-master"})
    for name in names("nomaster", 6):
        fake_upstream.answer(name, "A", ip_of(name), ttl=TTL)
        assert answer_ip(ask(fwd.port, name)) == ip_of(name)
    assert eventually(lambda: fwd.metric("resolver_fleet_breaker_state", state="open") == 1)
    assert fwd.metric("resolver_fleet_errors_total") >= 1
    assert redis_sentinel.master.client().dbsize() == 0


@pytest.mark.slow  # the Sentinel needs ~5 s to see the replica, ~2 s to fail over
def test_sentinel_the_tier_follows_a_failover_to_the_new_master(node, fake_upstream, tmp_path):
    """The master is killed and the Sentinel promotes its replica: names written before (and
    replicated) and after (to the new master, which redis-py asks the Sentinel for) are all
    served stale by a node that never saw them."""
    before, after = names("pre", 6), names("post", 6)
    with RedisSentinelSet(tmp_path / "failover", replica=True) as sentinel:
        a = node(**sentinel_fleet(sentinel))
        warm(a, fake_upstream, before)
        promoted = sentinel.replica.client()
        assert eventually(lambda: len(written_keys(promoted, before)) == len(before)), "replicated"
        assert sentinel.lose_master() == sentinel.replica.port
        warm(a, fake_upstream, after)
        assert eventually(lambda: len(written_keys(promoted, after)) == len(after)), "written to the new master"
        fake_upstream.mode("drop")
        c = node(**sentinel_fleet(sentinel))
        c.advance(TTL + 60)  # past every TTL: A's clock has flowed for the seconds the failover took
        assert_served_stale(c, before + after)


def written_keys(r, some_names) -> list[bytes]:
    keys = r.keys("resolver:*")
    return [k for k in keys if any(label(n) in k for n in some_names)]
