"""One upstream server: ``exchange(question, …, deadline)`` → validated reply bytes.

Knows nothing of the cache or of other upstreams.  Every query gets a fresh random
ID and a fresh socket (so a fresh random source port: RFC 5452 §9.2), replies are
accepted only from the queried address (a connected UDP socket lets the kernel
drop the rest) with the right ID and question; anything else is ignored and
counted while we keep waiting, as dnspython's ``_matches_destination`` does.
With ``security.upstream_0x20`` the question's letters go out in random case and
must come back exactly so; accepted replies are scrubbed of records unrelated to
the question before anyone caches them (resolver/wire/scrub.py).
UDP replies with TC=1 are retried over TCP (RFC 7766 §5); ``tcp://`` upstreams use
TCP only.  For UDP the pieces are public (``send_udp``, ``receive``, ``tcp_retry``, ``scrub``):
the pool sends, times each datagram against the upstream's adaptive timeout and
retransmits while earlier sockets keep listening (upstream/pool.py).  Failures are typed (errors.Upstream*) and carry a fixed metric label.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import os
import socket
from typing import Awaitable

from .. import wire
from ..clock import SYSTEM_CLOCK, Clock, timeout_at
from ..config import UpstreamAddress
from ..errors import UpstreamBadResponse, UpstreamError, UpstreamTimeout, UpstreamUnreachable
from ..eventloop import running_loop
from ..wire import scrub as antispoof


class _QueryIds:
    """Random 16-bit query IDs from the OS CSPRNG, read 4 KiB at a time.

    One ``getrandom`` call per 2,048 upstream queries instead of one per query
    (``secrets.randbits`` cost ~2% of the miss path's CPU); the IDs are exactly as
    unpredictable.  A forked worker starts with a fresh buffer, so no two
    processes ever hand out the same sequence.
    """

    def __init__(self):
        self._ids = iter(())
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._ids = iter(())

    def __call__(self) -> int:
        for qid in self._ids:
            return qid
        self._ids = iter(memoryview(os.urandom(4096)).cast("H"))
        return next(self._ids)


query_id = _QueryIds()

# send() errors that mean "this datagram was dropped here", not "no route": an
# nftables/iptables OUTPUT drop gives EPERM, a full device queue ENOBUFS/EAGAIN.
_DATAGRAM_LOST = frozenset((errno.EPERM, errno.ENOBUFS, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR))

# The C socket type without the Python wrapper of ``socket.socket`` (whose
# __init__/close are Python code): one of these is opened per upstream query.
_UDP_NONBLOCK = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK


class _Expiry:
    """A deadline that cancels the task waiting for a reply (``asyncio.timeout``'s
    mechanism: the task is told apart from an outside cancellation by ``fired``)."""

    __slots__ = ("task", "fired")

    def __init__(self, task: asyncio.Task):
        self.task = task
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        self.task.cancel()


# Rcodes a server may send with an empty question section (FORMERR, SERVFAIL, NOTIMP,
# REFUSED), as dnspython's ``Message.is_response`` allows.
_ERROR_RCODES = frozenset((wire.FORMERR, wire.SERVFAIL, wire.NOTIMP, wire.REFUSED))


def _error_without_question(reply: bytes, qid: int) -> bool:
    """An error reply with our ID and no question (servers send FORMERR for a query
    they cannot parse so).  Accepting it costs nothing in safety — it carries no
    records to cache, and a forger needs our ID and port as for any reply — and
    ignoring it would turn the server's "your question is bad" into a timeout, that
    is into a failure of the upstream."""
    return (len(reply) >= 12 and reply[0] << 8 | reply[1] == qid and reply[2] & 0x80
            and reply[4:6] == b"\x00\x00" and (reply[3] & 0x0F) in _ERROR_RCODES)


# One query datagram in flight, as a plain tuple (no Python-level constructor on the
# miss path): (its socket — its own source port —, the ID, the question as sent
# (0x20 case), the clock time it went out: the RTT sample is taken from it).
UdpSend = tuple


class Upstream:
    """A single upstream resolver address and how to talk to it."""

    def __init__(self, address: UpstreamAddress, udp_size: int = 1232, case_0x20: bool = False,
                 clock: Clock = SYSTEM_CLOCK):
        self.address = address
        self.clock = clock  # the deadlines passed in are on this clock
        self.label = address.label
        self.udp_size = udp_size
        self.case_0x20 = case_0x20
        self.family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        self.sockaddr = (address.host, address.port)
        # Single datagrams: the pool times each send and may retransmit (a fresh ID
        # and socket each time); over TCP the transport retransmits by itself.
        self.udp = address.transport == "udp"
        self.mismatched = 0  # replies dropped for wrong ID/question: spoofing attempts or late replies
        self.scrubbed = 0  # records removed from replies as unrelated to the question

    def matches(self, reply: bytes, qid: int, sent: bytes) -> bool:
        """Is ``reply`` the answer to the query we sent (ID, question, 0x20 case)?  Counts misses."""
        try:
            wire.check_reply_matches(reply, qid, sent)
        except UpstreamBadResponse:
            if _error_without_question(reply, qid):
                return True
            self.mismatched += 1
            return False
        if self.case_0x20 and not antispoof.case_matches(reply, sent):
            self.mismatched += 1
            return False
        return True

    def exchange(self, question: bytes, cd: bool, do: bool, deadline: float) -> Awaitable[bytes]:
        """Send the question, return the matching reply; raise UpstreamError subclasses.

        ``deadline`` is absolute, on the upstream's clock (``clock.py``): every wait is bounded by it.
        A plain function returning the transport's coroutine, so the miss path
        pays for one coroutine frame here, not two.
        """
        if self.address.transport == "udp":
            return self._udp(question, cd, do, deadline)
        return self._tcp_only(question, cd, do, deadline)

    async def _tcp_only(self, question: bytes, cd: bool, do: bool, deadline: float) -> bytes:
        loop = running_loop()
        if self.clock.monotonic() >= deadline:
            raise UpstreamTimeout("no time left")
        return self.scrub(await self._tcp(loop, question, cd, do, deadline), question)

    def scrub(self, reply: bytes, question: bytes) -> bytes:
        reply, removed = antispoof.scrub(reply, question)
        self.scrubbed += removed
        return reply

    def _query(self, question: bytes, cd: bool, do: bool) -> tuple[int, bytes, bytes]:
        """(ID, the question as sent — case randomised with 0x20 on —, the query bytes)."""
        qid = query_id()
        if self.case_0x20:
            question = antispoof.randomize_case(question)
        return qid, question, wire.build_upstream_query(qid, question, cd, do, self.udp_size)

    # -- UDP, one datagram at a time (the pool decides when to send another) ----
    def send_udp(self, question: bytes, cd: bool, do: bool, now: float) -> UdpSend:
        """Send one query datagram on a socket of its own (a fresh random source port
        and ID: RFC 5452 §9.2), without waiting.  ``connect`` makes the kernel drop
        datagrams from any other source and report ICMP errors."""
        qid, sent, query = self._query(question, cd, do)
        try:
            sock = _socket.socket(self.family, _UDP_NONBLOCK)
        except OSError as e:
            raise UpstreamUnreachable(f"cannot open UDP socket: {e}") from None
        try:
            sock.connect(self.sockaddr)
        except OSError as e:
            sock.close()
            raise UpstreamUnreachable(f"UDP to {self.label}: {e}") from None
        try:
            sock.send(query)
        except OSError as e:
            if e.errno not in _DATAGRAM_LOST:
                sock.close()
                raise UpstreamUnreachable(f"UDP to {self.label}: {e}") from None
            # Dropped on the way out (a local firewall's drop rule, a full queue): a
            # lost datagram like any other, so the RTO timer sends it again.
        return sock, qid, sent, now

    async def receive(self, loop, send: UdpSend) -> bytes:
        """The reply to ``send`` as received (not scrubbed, TC not handled); waits until
        cancelled.  Anything that does not match is ignored and counted.

        A plain non-blocking C socket read with ``loop.sock_recv`` rather than a
        transport/protocol pair (~20% less CPU per query) or ``add_reader`` (whose
        check for a transport on the fd costs a KeyError in uvloop): bench/README.md.
        The caller closes the socket.
        """
        matches = self.matches
        sock, qid, sent, _started = send
        try:
            while True:
                reply = await loop.sock_recv(sock, 65535)
                if matches(reply, qid, sent):
                    return reply
        except OSError as e:  # ICMP port/host unreachable on a connected socket
            raise UpstreamUnreachable(f"{type(e).__name__}: {e}") from None

    def tcp_retry(self, question: bytes, cd: bool, do: bool, deadline: float) -> Awaitable[bytes]:
        """The question again over TCP, after a UDP reply with TC=1 (RFC 7766 §5)."""
        return self._tcp(running_loop(), question, cd, do, deadline)

    async def _udp(self, question: bytes, cd: bool, do: bool, deadline: float) -> bytes:
        """One datagram, waited for until ``deadline`` (health probes, direct use);
        the pool's exchanges retransmit by their own timers instead.

        The deadline is a timer handle that cancels this task, as ``asyncio.timeout``
        does, without its context-manager cost.
        """
        loop = running_loop()
        now = self.clock.monotonic()
        if now >= deadline:
            raise UpstreamTimeout("no time left")
        send = self.send_udp(question, cd, do, now)
        task = asyncio.current_task(loop)
        expired = _Expiry(task)
        timer = self.clock.call_at(deadline, expired.fire)
        try:
            reply = await self.receive(loop, send)
        except asyncio.CancelledError:
            if expired.fired and task.uncancel() == 0:
                raise UpstreamTimeout(f"no UDP reply from {self.label}") from None
            raise
        finally:
            timer.cancel()
            send[0].close()
        if reply[2] & 0x02:  # TC=1: the answer did not fit; ask again over TCP
            reply = await self.tcp_retry(question, cd, do, deadline)
        return self.scrub(reply, question)

    async def _tcp(self, loop, question, cd, do, deadline) -> bytes:
        qid, sent, query = self._query(question, cd, do)
        writer = None
        try:
            async with timeout_at(self.clock, deadline):
                try:
                    reader, writer = await asyncio.open_connection(self.address.host, self.address.port)
                    writer.write(wire.frame(query))
                    while True:
                        size = wire.frame_length(await reader.readexactly(wire.PREFIX_LEN))
                        reply = await reader.readexactly(size)
                        if not self.matches(reply, qid, sent):
                            continue
                        return reply
                except asyncio.IncompleteReadError:
                    raise UpstreamUnreachable(f"{self.label} closed the TCP connection") from None
                except OSError as e:
                    raise UpstreamUnreachable(f"TCP to {self.label}: {e}") from None
        except TimeoutError:
            raise UpstreamTimeout(f"no TCP reply from {self.label}") from None
        finally:
            if writer is not None:
                writer.transport.abort()


__all__ = ["UdpSend", "Upstream", "UpstreamError"]
