"""Access control: which client addresses may query, and what the others get.

A forwarder that answers anyone is an open resolver: a tool for reflection and
amplification attacks (RFC 5358 §4 asks resolvers to answer only their intended
clients).  So the listeners ask ``admits(host)`` for every datagram and every TCP
connection.  That check sits on the cache-hit path, so it costs one set lookup:
verdicts are memoised per source address on first sight (a parse of the address
and a walk over the networks happens once per address), in two bounded sets that
are emptied when full and on reconfiguration.

Refused clients get REFUSED (RFC 1035 §4.1.1: "the name server refuses to perform
the specified operation for policy reasons") or, with ``refused_action: drop``,
nothing.  A REFUSED reply is the client's header and question with no records, so
it is never larger than the query: no amplification, even for spoofed sources.
Anything we cannot parse as a query is dropped rather than answered.

Sans-IO: values in, values out; the listeners do the sending, and count in ``Stats``.
"""

from __future__ import annotations

import ipaddress

from .. import wire
from ..config import SecurityConfig
from ..errors import DropQuery, FormatError

# Bounds the memo: a flood from many (possibly spoofed) sources costs at most this
# many remembered addresses per verdict before the set is emptied and refilled.
MEMO_MAX = 16_384


class AccessControl:
    """The allow-list and its per-address memo."""

    def __init__(self, config: SecurityConfig):
        # The listeners keep references to these two sets: they are cleared in
        # place, never replaced, so a reconfiguration reaches them.
        self.allowed: set[str] = set()
        self.denied: set[str] = set()
        self.configure(config)

    def configure(self, config: SecurityConfig) -> None:
        """Apply (new) settings; called at start and on reload.  Forgets every verdict."""
        self.networks = tuple(ipaddress.ip_network(n) for n in config.allow)
        self.drop = config.refused_action == "drop"
        self.allowed.clear()
        self.denied.clear()

    def admits(self, host: str) -> bool:
        """Is a client at ``host`` (a socket address string) allowed to query?"""
        if host in self.allowed:
            return True
        if host in self.denied:
            return False
        ok = self.matches(host)
        memo = self.allowed if ok else self.denied
        if len(memo) >= MEMO_MAX:
            memo.clear()
        memo.add(host)
        return ok

    def matches(self, host: str) -> bool:
        """The uncached verdict: is ``host`` inside one of the allowed networks?

        IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, seen on dual-stack
        sockets) are judged as the IPv4 address they carry, so they cannot slip
        past an IPv4 allow-list or be refused by one.  Anything unparsable is refused.
        """
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks if net.version == ip.version)

    def refusal(self, data: bytes) -> bytes | None:
        """The reply for a query from a client that is not allowed; None = send nothing.

        Only a well-formed query is answered, and only with REFUSED: header and
        question echoed (plus an OPT if the query had one), so the reply is never
        larger than the query.
        """
        if self.drop:
            return None
        try:
            q = wire.parse_query(data)
        except (DropQuery, FormatError):
            return None
        return wire.error_reply(data, wire.REFUSED, q.qend, edns=q.edns, udp_size=512)
