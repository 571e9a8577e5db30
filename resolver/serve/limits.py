"""Per-client caps: how much upstream work one client address may cause at once.

``server.max_inflight`` and ``server.tcp_max_connections`` bound the whole process;
these bound one address's share of them, so a single busy or hostile client (a
flood of random names that all miss the cache, or hundreds of idle TCP
connections) cannot starve everyone else.  Counts are kept only for addresses
with something open and are deleted at zero, so the tables are bounded by the
global caps themselves.

What is counted is what costs the upstreams something: a query that *starts* an
upstream fetch holds one unit until that fetch ends.  A query that joins a fetch
already in flight, or is answered stale, costs no upstream work and is not
counted (a sidecar's whole pod is one client address, and during an outage
hundreds of its queries wait on the same few names).

Clients in ``security.client_limits_exempt`` (default: loopback) share only the
global caps: a sidecar's pod, or the host's own stub resolver, is one address and
no stranger.  Node-local deployments see per-pod addresses and keep the caps.

Sans-IO apart from the rate-limited log line: the listeners and the pipeline call
acquire/release, and count what a cap refused in ``Stats``.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Callable

from ..config import SecurityConfig

log = logging.getLogger("resolver.limits")

MEMO_MAX = 16_384  # exemption verdicts remembered per address (as acl.MEMO_MAX)
LOG_INTERVAL = 10.0  # seconds: at most one "cap reached" line per limit per interval


class _PerClient:
    """Open things per client address, each address capped at ``limit``."""

    __slots__ = ("counts", "limit", "exempt")

    def __init__(self, exempt: Callable[[str], bool]):
        self.counts: dict[str, int] = {}
        self.limit = 1
        self.exempt = exempt

    def acquire(self, host: str) -> bool:
        if self.exempt(host):  # shares only the global cap: nothing to count
            return True
        n = self.counts.get(host, 0)
        if n >= self.limit:
            return False
        self.counts[host] = n + 1
        return True

    def release(self, host: str) -> None:
        # An exempt host has no entry: the pop is a no-op (and so is an unmatched release).
        n = self.counts.get(host, 0) - 1
        if n > 0:
            self.counts[host] = n
        else:
            self.counts.pop(host, None)

    def at_limit(self, host: str) -> bool:
        """Would ``acquire(host)`` fail now?"""
        return not self.exempt(host) and self.counts.get(host, 0) >= self.limit


class CapLog:
    """One warning line per limit per ``interval`` seconds, with how many queries it hit.

    A cap that bites is worth an operator's attention, but a flood must not turn
    into a log flood: the first hit logs at once, later ones are counted and
    summarised in the next line an interval later.
    """

    def __init__(self, now: Callable[[], float], interval: float = LOG_INTERVAL):
        self.now = now
        self.interval = interval
        self.pending: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def note(self, limit: str, client: str | None, answer: str) -> bool:
        """Count one hit of ``limit``; returns True if a line was logged."""
        self.pending[limit] = self.pending.get(limit, 0) + 1
        now = self.now()
        last = self.last.get(limit)
        if last is not None and now - last < self.interval:
            return False
        count = self.pending.pop(limit)
        self.last[limit] = now
        since = "" if last is None else f" in the last {now - last:.0f}s"
        log.warning("%s reached: %d queries answered without new upstream work%s (latest from %s, "
                    "answered %s)", limit, count, since, client or "?", answer,
                    extra={"event": "limit_reached", "limit": limit})
        return True


class ClientLimits:
    def __init__(self, config: SecurityConfig, now: Callable[[], float] | None = None):
        self.exempt_memo: dict[str, bool] = {}
        self._inflight = _PerClient(self.exempt)  # upstream fetches started, by client
        self._tcp = _PerClient(self.exempt)       # open TCP connections
        self.inflight = self._inflight.counts
        self.tcp = self._tcp.counts
        self.acquire_inflight = self._inflight.acquire
        self.release_inflight = self._inflight.release
        self.acquire_tcp = self._tcp.acquire
        self.release_tcp = self._tcp.release
        self.tcp_at_limit = self._tcp.at_limit
        # The clock paces the "cap reached" log line; without one, only the first hit is logged.
        self.cap_log = CapLog(now or (lambda: 0.0))
        self.configure(config)

    def configure(self, config: SecurityConfig) -> None:
        self._inflight.limit = config.max_inflight_per_client
        self._tcp.limit = config.tcp_max_connections_per_client
        self.tcp_read_timeout = config.tcp_read_timeout
        self.exempt_networks = tuple(ipaddress.ip_network(n) for n in config.client_limits_exempt)
        self.exempt_memo.clear()

    def exempt(self, host: str) -> bool:
        """Is ``host`` in ``security.client_limits_exempt`` (memoised per address)?

        IPv4-mapped IPv6 addresses (dual-stack sockets) are judged as the IPv4
        address they carry, as the allow-list does.
        """
        verdict = self.exempt_memo.get(host)
        if verdict is None:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                verdict = False
            else:
                if ip.version == 6 and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                verdict = any(ip in net for net in self.exempt_networks if net.version == ip.version)
            if len(self.exempt_memo) >= MEMO_MAX:
                self.exempt_memo.clear()
            self.exempt_memo[host] = verdict
        return verdict
