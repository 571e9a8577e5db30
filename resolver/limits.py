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


class ClientLimits:
    def __init__(self, config: SecurityConfig):
        self.inflight: dict[str, int] = {}   # client address -> cache misses being resolved
        self.tcp: dict[str, int] = {}        # client address -> open TCP connections
        self.configure(config)

    def configure(self, config: SecurityConfig) -> None:
        self.max_inflight = config.max_inflight_per_client
        self.max_tcp = config.tcp_max_connections_per_client
        self.tcp_read_timeout = config.tcp_read_timeout

    def acquire_inflight(self, host: str) -> bool:
        n = self.inflight.get(host, 0)
        if n >= self.max_inflight:
            return False
        self.inflight[host] = n + 1
        return True

    def release_inflight(self, host: str) -> None:
        n = self.inflight.get(host, 0) - 1
        if n > 0:
            self.inflight[host] = n
        else:
            self.inflight.pop(host, None)

    def acquire_tcp(self, host: str) -> bool:
        n = self.tcp.get(host, 0)
        if n >= self.max_tcp:
            return False
        self.tcp[host] = n + 1
        return True

    def release_tcp(self, host: str) -> None:
        n = self.tcp.get(host, 0) - 1
        if n > 0:
            self.tcp[host] = n
        else:
            self.tcp.pop(host, None)
