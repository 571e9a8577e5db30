"""UDP and TCP listeners: bytes in, bytes out.

The UDP callback answers cache hits synchronously (``Pipeline.answer_fast``) and
hands everything else to a task, bounded by ``max_inflight``: past it, queries are
dropped and counted (the client retries), so a flood cannot grow memory without
limit.  TCP follows RFC 7766: length-prefixed messages, several queries pipelined
on one connection and answered as they complete, an idle timeout, and a cap on
open connections.

This is the only place with a broad ``except`` per query: a bug becomes SERVFAIL
plus a log line with the traceback, never a dead listener.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

from . import handover, wire
from .acl import AccessControl
from .config import Address, SecurityConfig, ServerConfig
from .eventloop import running_loop
from .limits import ClientLimits
from .pipeline import Pipeline
from .ratelimit import SLIP, RateLimiter, slip_reply
from .stats import Stats

log = logging.getLogger("resolver.server")

TCP_LINGER = 0.3  # seconds open TCP connections get, at shutdown, after in-flight work is done
# Replies queued for a TCP client that is not reading them; past this the
# connection is closed (bounded memory however many queries it pipelines).
_TCP_MAX_UNSENT = 256 * 1024


def _internal_error_reply(data: bytes) -> bytes | None:
    if len(data) < 12 or data[2] & 0x80:
        return None
    return wire.error_reply(data, wire.SERVFAIL)


class Listeners:
    """All listening sockets plus the tasks answering on them."""

    def __init__(self, pipeline: Pipeline, config: ServerConfig, stats: Stats,
                 acl: AccessControl | None = None, limits: ClientLimits | None = None,
                 rrl: RateLimiter | None = None):
        self.pipeline = pipeline
        self.config = config
        self.stats = stats
        self.acl = acl or AccessControl(SecurityConfig())
        self.limits = limits or ClientLimits(SecurityConfig())
        self.rrl = rrl or RateLimiter(SecurityConfig())
        self.udp_transports: list[asyncio.DatagramTransport] = []
        self.tcp_servers: list[asyncio.base_events.Server] = []
        self.tasks: set[asyncio.Task] = set()
        self.tcp_writers: set[asyncio.StreamWriter] = set()
        self.bound: list[tuple[str, int]] = []  # actual (host, port) per listen address, after binding
        self.draining = False
        self.group_size = 1  # our sockets per reuseport group (workers): see handover.steer_away
        self.drained_datagrams = 0  # read from receive buffers at close (handover)
        self.drained_connections = 0  # taken from accept queues at close (handover)

    async def start(self, addresses: tuple[Address, ...]) -> None:
        loop = running_loop()
        # Rate limiting costs nothing when off: the plain protocol has no check at all.
        protocol = _RateLimitedUdpProtocol if self.rrl.enabled else _UdpProtocol
        for addr in addresses:
            family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
            for attempt in range(20 if addr.port == 0 else 1):
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: protocol(self), local_addr=(addr.host, addr.port), family=family,
                    reuse_port=True)
                port = transport.get_extra_info("sockname")[1]
                # The TCP listener takes the port UDP got, so "port 0" tests get one port for both;
                # that TCP port may be in use (say, by an outgoing connection): then try another.
                try:
                    server = await asyncio.start_server(
                        self._tcp_client, host=addr.host, port=port, family=family, reuse_port=True,
                        backlog=1024)
                    break
                except OSError:
                    transport.close()
                    if addr.port != 0 or attempt == 19:
                        raise
            self.udp_transports.append(transport)
            self.tcp_servers.append(server)
            self.bound.append((addr.host, port))
            log.info("listening on %s port %d (UDP and TCP)", addr.host, port)
        self.unsteer()

    def unsteer(self) -> None:
        """Drop a predecessor's steering program from our groups (see handover.unsteer)."""
        if self.draining:
            return
        for transport in self.udp_transports:
            handover.unsteer(transport.get_extra_info("socket").fileno())
        for server in self.tcp_servers:
            for sock in server.sockets:
                handover.unsteer(sock.fileno())

    def close(self) -> None:
        """Stop taking new work; in-flight queries go on.

        First new packets are steered to a successor, if one shares our ports
        (``handover``); then what the kernel already queued for us is taken and
        answered — the TCP accept queue and the UDP receive buffer — because
        closing would discard it.  TCP listeners then close.  UDP sockets stay
        open until ``drain`` ends, because a reply must leave from the socket the
        query came in on; while draining they still answer what reaches them —
        with a successor that is only what the kernel's own reshuffling sends when a
        sibling worker's socket closes first — until the grace period ends.  TCP
        connections that ask for new upstream work are closed instead.
        """
        if self.draining:  # already closed
            return
        for transport in self.udp_transports:
            handover.steer_away(transport.get_extra_info("socket").fileno(), self.group_size)
        for server in self.tcp_servers:
            for sock in server.sockets:
                handover.steer_away(sock.fileno(), self.group_size)
        loop = running_loop()
        for server in self.tcp_servers:
            for sock in server.sockets:
                for conn in handover.accept_queued(sock.fileno()):
                    self.drained_connections += 1
                    loop.create_task(self._tcp_adopt(conn))
        for transport in self.udp_transports:
            self._drain_udp_queue(transport, resolve_misses=True)
        self.draining = True
        for server in self.tcp_servers:
            server.close()

    def _drain_udp_queue(self, transport, resolve_misses: bool) -> None:
        """Answer the datagrams waiting in ``transport``'s receive buffer (see close)."""
        protocol = transport.get_protocol()
        for data, addr in handover.read_queued_datagrams(transport.get_extra_info("socket").fileno()):
            self.drained_datagrams += 1
            if resolve_misses:
                protocol.datagram_received(data, addr)
                continue
            self.stats.queries_udp += 1
            reply = self.pipeline.answer_fast(data, False)
            if reply is not None:
                transport.sendto(reply, addr)
            else:
                self.stats.dropped_overload += 1

    async def _tcp_adopt(self, conn: socket.socket) -> None:
        """Serve a connection taken from the accept queue at close (background task boundary)."""
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
            await self._tcp_client(reader, writer)
        except Exception:
            log.exception("cannot serve a connection adopted from the accept queue")
            conn.close()

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for in-flight queries, then cancel the rest."""
        loop = running_loop()
        end = loop.time() + grace
        while self.tasks and loop.time() < end:  # tasks may still be added (UDP, see close)
            await asyncio.wait(set(self.tasks), timeout=end - loop.time())
        pending = list(self.tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self.tcp_writers:
            # Connections adopted from the accept queue have had little time to send
            # their query: let them be answered before the connections are cut.
            await asyncio.sleep(max(0.0, min(TCP_LINGER, end - loop.time())))
        for writer in list(self.tcp_writers):
            writer.transport.abort()
        for transport in self.udp_transports:
            if not transport.is_closing():
                self._drain_udp_queue(transport, resolve_misses=False)  # last look: hits only
            transport.close()

    # ------------------------------------------------------------------- UDP
    def spawn(self, coro, host: str | None = None) -> asyncio.Task | None:
        """Run ``coro`` as a task, within the global cap and, given the client ``host``, its share."""
        if self.draining or len(self.tasks) >= self.config.max_inflight:
            coro.close()
            self.stats.dropped_overload += 1
            return None
        if host is not None and not self.limits.acquire_inflight(host):  # over this client's share
            coro.close()
            self.stats.dropped_client_limit += 1
            return None
        task = running_loop().create_task(coro)
        self.tasks.add(task)
        if host is None:
            task.add_done_callback(self.tasks.discard)
        else:
            task.add_done_callback(lambda t: (self.tasks.discard(t), self.limits.release_inflight(host)))
        return task

    def refuse_udp(self, transport, data: bytes, addr) -> None:
        """A datagram from a client outside ``security.allow``: REFUSED or silence."""
        self.stats.acl_refused_udp += 1
        reply = self.acl.refusal(data)
        if reply is not None:
            transport.sendto(reply, addr)

    async def udp_slow(self, transport, data: bytes, addr) -> None:
        try:
            reply = await self.pipeline.resolve(data, False)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("internal error answering a UDP query from %s", addr[0])
            reply = _internal_error_reply(data)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    def rate_limited(self, transport, data: bytes, addr, verdict: int) -> None:
        """A UDP client over security.rate_limit: an empty TC=1 reply (slip) or nothing."""
        self.stats.queries_udp += 1
        if verdict == SLIP:
            self.stats.rate_limited_slipped += 1
            reply = slip_reply(data)
            if reply is not None:
                transport.sendto(reply, addr)
        else:
            self.stats.rate_limited_dropped += 1

    # ------------------------------------------------------------------- TCP
    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = peer[0] if peer else ""
        allowed = self.acl.admits(host)
        if not allowed:
            self.stats.acl_refused_tcp += 1
            if self.acl.drop:
                writer.transport.abort()
                return
        if len(self.tcp_writers) >= self.config.tcp_max_connections:
            self.stats.tcp_refused += 1
            writer.transport.abort()
            return
        if not self.limits.acquire_tcp(host):  # over this client's share of the slots
            self.stats.tcp_refused_client_limit += 1
            writer.transport.abort()
            return
        self.stats.tcp_connections += 1
        self.tcp_writers.add(writer)
        pending: set[asyncio.Task] = set()
        idle = self.config.tcp_idle_timeout
        read_timeout = self.limits.tcp_read_timeout
        loop = running_loop()
        try:
            while True:
                started = False
                try:
                    async with asyncio.timeout(idle) as timer:
                        header = await reader.readexactly(2)
                        # The message has started: the rest must come promptly, so a
                        # client trickling bytes cannot hold a slot for idle × messages.
                        started = True
                        timer.reschedule(loop.time() + read_timeout)
                        size = struct.unpack(">H", header)[0]
                        data = await reader.readexactly(size)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
                    if started and isinstance(e, TimeoutError):
                        self.stats.tcp_closed_slow += 1
                    break  # idle, slow or gone client: RFC 7766 §6.2.3 lets us close
                self.stats.queries_tcp += 1
                if writer.transport.get_write_buffer_size() > _TCP_MAX_UNSENT:
                    self.stats.tcp_closed_slow += 1
                    break  # the client sends but does not read: bound what we buffer for it
                if not allowed:  # outside security.allow: REFUSED per query, no work done
                    reply = self.acl.refusal(data)
                    if reply is not None:
                        writer.write(struct.pack(">H", len(reply)) + reply)
                    continue
                try:
                    reply = self.pipeline.answer_fast(data, True)
                except Exception:  # as on UDP: the hit path must not take the connection down
                    self.stats.internal_errors += 1
                    log.exception("internal error in the cache hit path (TCP)")
                    reply = None
                if reply is not None:
                    writer.write(struct.pack(">H", len(reply)) + reply)
                    continue
                # Pipelined queries are answered out of order, as each completes (RFC 7766 §6.2.1.1).
                if self.draining:
                    # Shutting down: no new upstream work on TCP; close now (RFC 7766
                    # §6.2.3) rather than leave the client waiting out the grace period.
                    # It retries on a new connection, which reaches the successor.
                    break
                task = self.spawn(self._tcp_answer(writer, data), host)
                if task is not None:
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(set(pending), timeout=self.config.shutdown_grace)
        finally:
            self.tcp_writers.discard(writer)
            self.limits.release_tcp(host)
            writer.transport.close()

    async def _tcp_answer(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        try:
            reply = await self.pipeline.resolve(data, True)
        except Exception:
            self.stats.internal_errors += 1
            log.exception("internal error answering a TCP query")
            reply = _internal_error_reply(data)
        if reply is None:
            return
        if not writer.is_closing():
            writer.write(struct.pack(">H", len(reply)) + reply)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, listeners: Listeners):
        self.listeners = listeners
        self.fast = listeners.pipeline.answer_fast
        self.stats = listeners.stats
        self.allowed = listeners.acl.allowed  # memo of admitted addresses: one lookup per datagram
        self.admits = listeners.acl.admits
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.stats.queries_udp += 1
        if addr[0] not in self.allowed and not self.admits(addr[0]):
            self.listeners.refuse_udp(self.transport, data, addr)
            return
        try:
            reply = self.fast(data, False)
        except Exception:  # the hit path must never take the listener down
            self.stats.internal_errors += 1
            log.exception("internal error in the cache hit path")
            reply = None
        if reply is not None:
            self.transport.sendto(reply, addr)
            return
        self.listeners.spawn(self.listeners.udp_slow(self.transport, data, addr), addr[0])

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (client went away); nothing to do.
        log.debug("UDP listener error: %s", exc)


class _RateLimitedUdpProtocol(_UdpProtocol):
    """The UDP listener with per-client response rate limiting (security.rate_limit > 0).

    The limit comes first, so REFUSED answers to strangers are limited too: they
    are responses a forged source could aim at a victim like any other.
    """

    def __init__(self, listeners: Listeners):
        super().__init__(listeners)
        self.check = listeners.rrl.check
        self.now = listeners.pipeline.clock.monotonic

    def datagram_received(self, data: bytes, addr) -> None:
        verdict = self.check(addr[0], self.now())
        if verdict:
            self.listeners.rate_limited(self.transport, data, addr, verdict)
            return
        super().datagram_received(data, addr)
