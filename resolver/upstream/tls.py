"""A DNS-over-TLS upstream (RFC 7858): one reused, pipelined TLS connection.

A TLS handshake costs a few round trips, so one connection is kept open and
every query goes over it (RFC 7858 §3.4, RFC 7766 §6.2.1.1: pipelined, answers
matched by ID, in any order).  A reader task routes each reply to its waiter by
ID and checks it matches the question (as the UDP path does); anything else is
ignored and counted.  When the server closes the connection (idle timeout, RFC
7766 §6.2.3) the next query opens a new one; a query that was sent on a reused
connection that then closed is retried once on a fresh one, within its deadline.

Certificates are verified (RFC 8310 strict privacy): against the system store or
``upstream.tls_ca_file``, for the ``#server-name`` given in the upstream URL, or
else for the IP address.  Same interface and typed errors as ``upstream.Upstream``.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl

from .. import wire
from ..clock import SYSTEM_CLOCK, Clock, timeout_at
from ..config import UpstreamAddress
from ..errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnreachable
from ..wire import scrub as antispoof


def client_context(ca_file: str = "") -> ssl.SSLContext:
    """TLS 1.2+ with certificate and name verification."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class _Closed(Exception):
    """The connection ended before our reply came (retry on a fresh one)."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, owner: "TlsUpstream"):
        self.reader = reader
        self.writer = writer
        self.owner = owner
        self.pending: dict[int, tuple[asyncio.Future, bytes]] = {}
        self.closed = False
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                size = wire.frame_length(await self.reader.readexactly(wire.PREFIX_LEN))
                reply = await self.reader.readexactly(size)
                waiter = self.pending.get(int.from_bytes(reply[:2], "big")) if len(reply) >= 2 else None
                if waiter is None:
                    self.owner.mismatched += 1
                    continue
                future, question = waiter
                try:
                    wire.check_reply_matches(reply, int.from_bytes(reply[:2], "big"), question)
                except UpstreamBadResponse:
                    self.owner.mismatched += 1
                    continue
                if not future.done():
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, OSError, ssl.SSLError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.transport.abort()
        for future, _ in self.pending.values():
            if not future.done():
                future.set_exception(_Closed())
        if self.task is not asyncio.current_task():
            self.task.cancel()


class TlsUpstream:
    """One DoT upstream; ``exchange(question, cd, do, deadline)`` like ``Upstream``."""

    udp = False  # one exchange per query: TCP retransmits by itself, the pool never re-sends

    def __init__(self, address: UpstreamAddress, udp_size: int, context: ssl.SSLContext,
                 clock: Clock = SYSTEM_CLOCK):
        self.address = address
        self.clock = clock  # the deadlines passed in are on this clock
        self.label = address.label
        self.udp_size = udp_size
        self.context = context
        self.server_name = address.server_name or address.host
        self.mismatched = 0
        self.scrubbed = 0  # records removed from replies as unrelated to the question
        self.connections = 0  # connections opened (each one TLS handshake)
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connection(self) -> tuple[_Connection, bool]:
        """(an open connection, whether it is new)."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._conn is not None and not self._conn.closed:
                return self._conn, False
            try:
                reader, writer = await asyncio.open_connection(
                    self.address.host, self.address.port, ssl=self.context, server_hostname=self.server_name)
            except ssl.SSLCertVerificationError as e:
                raise UpstreamBadResponse(f"{self.label}: TLS certificate not accepted: {e.verify_message}") from None
            except (OSError, ssl.SSLError) as e:
                raise UpstreamUnreachable(f"TLS to {self.label}: {e}") from None
            self.connections += 1
            self._conn = _Connection(reader, writer, self)
            return self._conn, True

    async def exchange(self, question: bytes, cd: bool, do: bool, deadline: float) -> bytes:
        if self.clock.monotonic() >= deadline:
            raise UpstreamTimeout("no time left")
        try:
            async with timeout_at(self.clock, deadline):
                for _ in range(2):
                    conn, fresh = await self._connection()
                    try:
                        reply, removed = antispoof.scrub(await self._send(conn, question, cd, do), question)
                        self.scrubbed += removed
                        return reply
                    except _Closed:
                        if fresh:
                            break
                        # A reused connection was closed under us (idle timeout): once more.
        except TimeoutError:
            raise UpstreamTimeout(f"no TLS reply from {self.label}") from None
        raise UpstreamUnreachable(f"{self.label} closed the TLS connection")

    async def _send(self, conn: _Connection, question: bytes, cd: bool, do: bool) -> bytes:
        qid = secrets.randbits(16)
        while qid in conn.pending:
            qid = secrets.randbits(16)
        query = wire.build_upstream_query(qid, question, cd, do, self.udp_size)
        if conn.closed:
            raise _Closed()
        future = asyncio.get_running_loop().create_future()
        conn.pending[qid] = (future, question)
        try:
            conn.writer.write(wire.frame(query))
            return await future
        finally:
            conn.pending.pop(qid, None)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
