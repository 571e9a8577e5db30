"""Per-client caps: how much of the forwarder one client address may hold at once.

``server.max_inflight`` and ``server.tcp_max_connections`` bound the whole process;
these bound one address's share of them, so a single busy or hostile client (a
flood of random names that all miss the cache, or hundreds of idle TCP
connections) cannot starve everyone else.  Counts are kept only for addresses
with something open and are deleted at zero, so the tables are bounded by the
global caps themselves.

Sans-IO: the listeners call acquire/release, and count refusals in ``Stats``.
"""

from __future__ import annotations

from .config import SecurityConfig


class _PerClient:
    """Open things per client address, each address capped at ``limit``."""

    __slots__ = ("counts", "limit")

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.limit = 1

    def acquire(self, host: str) -> bool:
        n = self.counts.get(host, 0)
        if n >= self.limit:
            return False
        self.counts[host] = n + 1
        return True

    def release(self, host: str) -> None:
        n = self.counts.get(host, 0) - 1
        if n > 0:
            self.counts[host] = n
        else:
            self.counts.pop(host, None)


class ClientLimits:
    def __init__(self, config: SecurityConfig):
        self._inflight = _PerClient()  # cache misses being resolved
        self._tcp = _PerClient()       # open TCP connections
        self.inflight = self._inflight.counts
        self.tcp = self._tcp.counts
        self.acquire_inflight = self._inflight.acquire
        self.release_inflight = self._inflight.release
        self.acquire_tcp = self._tcp.acquire
        self.release_tcp = self._tcp.release
        self.configure(config)

    def configure(self, config: SecurityConfig) -> None:
        self._inflight.limit = config.max_inflight_per_client
        self._tcp.limit = config.tcp_max_connections_per_client
        self.tcp_read_timeout = config.tcp_read_timeout
