"""Per-client caps (resolver/limits.py): counts per address, tables empty at rest."""

from resolver.config import SecurityConfig
from resolver.limits import ClientLimits


def test_inflight_cap_per_client():
    limits = ClientLimits(SecurityConfig(max_inflight_per_client=3))
    assert all(limits.acquire_inflight("192.0.2.1") for _ in range(3))
    assert not limits.acquire_inflight("192.0.2.1")
    assert limits.acquire_inflight("192.0.2.2")  # another client is not affected
    limits.release_inflight("192.0.2.1")
    assert limits.acquire_inflight("192.0.2.1")


def test_tcp_cap_per_client():
    limits = ClientLimits(SecurityConfig(tcp_max_connections_per_client=2))
    assert limits.acquire_tcp("::1") and limits.acquire_tcp("::1")
    assert not limits.acquire_tcp("::1")
    limits.release_tcp("::1")
    assert limits.acquire_tcp("::1")


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
