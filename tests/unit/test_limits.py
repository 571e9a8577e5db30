"""Per-client caps (resolver/serve/limits.py): counts per address, tables empty at rest."""

from resolver.config import SecurityConfig
from resolver.serve.limits import ClientLimits


def test_inflight_cap_per_client():
    limits = ClientLimits(SecurityConfig(max_inflight_per_client=3))
    assert all(limits.acquire_inflight("192.0.2.1") for _ in range(3))
    assert not limits.acquire_inflight("192.0.2.1")
    assert limits.acquire_inflight("192.0.2.2")  # another client is not affected
    limits.release_inflight("192.0.2.1")
    assert limits.acquire_inflight("192.0.2.1")


def test_tcp_cap_per_client():
    limits = ClientLimits(SecurityConfig(tcp_max_connections_per_client=2))
    assert limits.acquire_tcp("2001:db8::1") and limits.acquire_tcp("2001:db8::1")
    assert not limits.acquire_tcp("2001:db8::1")
    limits.release_tcp("2001:db8::1")
    assert limits.acquire_tcp("2001:db8::1")


def test_tables_are_empty_when_nothing_is_open():
    """Memory is bounded by what is open, not by how many addresses were ever seen."""
    limits = ClientLimits(SecurityConfig())
    for i in range(10_000):
        host = f"10.0.{i // 256}.{i % 256}"
        assert limits.acquire_inflight(host) and limits.acquire_tcp(host)
        limits.release_inflight(host)
        limits.release_tcp(host)
    assert limits.inflight == {} and limits.tcp == {}
    limits.release_inflight("never-seen")  # an unmatched release does not go negative
    assert limits.inflight == {}


def test_loopback_is_exempt_by_default():
    """A sidecar's whole pod is one loopback address: it shares only the global caps."""
    limits = ClientLimits(SecurityConfig(max_inflight_per_client=1, tcp_max_connections_per_client=1))
    for host in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
        assert all(limits.acquire_inflight(host) for _ in range(5)), host
        assert all(limits.acquire_tcp(host) for _ in range(5)) and not limits.tcp_at_limit(host), host
    assert limits.inflight == {} and limits.tcp == {}  # nothing counted for them
    assert limits.acquire_inflight("10.0.0.1") and not limits.acquire_inflight("10.0.0.1")
    assert limits.acquire_inflight("::ffff:10.0.0.2") and not limits.acquire_inflight("::ffff:10.0.0.2")


def test_exempt_list_is_configurable_and_may_be_empty():
    limits = ClientLimits(SecurityConfig(max_inflight_per_client=1, client_limits_exempt=()))
    assert limits.acquire_inflight("127.0.0.1") and not limits.acquire_inflight("127.0.0.1")
    limits.configure(SecurityConfig(max_inflight_per_client=1, client_limits_exempt=("10.1.0.0/16",)))
    assert all(limits.acquire_inflight("10.1.2.3") for _ in range(3))
    assert not limits.acquire_inflight("127.0.0.1")  # still holds its one (not exempt any more)


def test_cap_log_is_rate_limited(caplog):
    now = [0.0]
    limits = ClientLimits(SecurityConfig(), lambda: now[0])
    logged = [limits.cap_log.note("max_inflight_per_client", "192.0.2.1", "stale") for _ in range(50)]
    assert logged == [True] + [False] * 49
    now[0] = 10.0
    assert limits.cap_log.note("max_inflight_per_client", "192.0.2.1", "servfail")
    lines = [r.getMessage() for r in caplog.records if r.name == "resolver.limits"]
    assert len(lines) == 2 and "50 queries" in lines[1] and "in the last 10s" in lines[1]
    assert limits.cap_log.note("max_inflight", None, "servfail")  # each limit has its own pace
