"""UDP and TCP listeners: bytes in, bytes out.

The UDP callback answers cache hits synchronously (``Pipeline.answer_fast``) and
hands everything else to a task, bounded by ``max_inflight`` so a flood cannot grow
memory without limit: past it, a query is answered at once from what the cache
holds (stale) or with SERVFAIL (``Pipeline.answer_limited``) — counted, never
dropped in silence.  TCP follows RFC 7766: length-prefixed messages, several
queries pipelined on one connection and answered as they complete, an idle
timeout, and a cap on open connections that closes the least recently active
idle connection to make room for a new one (§6.2.3) before it refuses anyone.

Sockets are made here rather than by asyncio: an IPv6 wildcard listener is
dual-stack for TCP as well as UDP (asyncio sets IPV6_V6ONLY on TCP servers), and
every socket joins a SO_REUSEPORT group so a successor can take over
(``handover``); that a port is not already someone else's is checked before
binding (``handover.refuse_if_bound``).

This is the only place with a broad ``except`` per query: a bug becomes SERVFAIL
plus a log line with the traceback, never a dead listener.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from .. import wire
from ..config import Address, ServerConfig
from ..eventloop import running_loop
from ..stats import Stats
from . import batch, handover
from .acl import AccessControl
from .limits import ClientLimits
from .pipeline import Pipeline
from .ratelimit import SLIP, RateLimiter, slip_reply

log = logging.getLogger("resolver.server")

TCP_LINGER = 0.3  # seconds open TCP connections get, at shutdown, after in-flight work is done
# Replies queued for a TCP client that is not reading them; past this the
# connection is closed (bounded memory however many queries it pipelines).
_TCP_MAX_UNSENT = 256 * 1024


def listen_socket(host: str, port: int, kind: int) -> socket.socket:
    """A non-blocking socket bound to (host, port), in a SO_REUSEPORT group.

    An IPv6 socket is made dual-stack explicitly (IPV6_V6ONLY=0, RFC 3493 §5.3),
    so a ``[::]`` listener takes IPv4 clients on TCP as on UDP — an IPv4 client's
    TC=1 fallback (RFC 7766 §5) must reach the same listener — whatever the
    host's ``net.ipv6.bindv6only`` says.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if kind == socket.SOCK_STREAM:  # (TIME_WAIT leftovers of a predecessor must not block us)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        proto = "TCP" if kind == socket.SOCK_STREAM else "UDP"
        raise OSError(exc.errno, f"cannot bind {shown} ({proto}): {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock


class _TcpConn:
    """One client TCP connection, as the connection cap sees it."""

    __slots__ = ("writer", "host", "pending", "reading", "last", "evicted", "gone")

    def __init__(self, writer: asyncio.StreamWriter, host: str, now: float):
        self.writer = writer
        self.host = host
        self.pending: set[asyncio.Task] = set()  # queries being answered
        self.reading = False  # a message has started arriving
        self.last = now  # loop time of the last query: least recently active goes first
        self.evicted = False  # closed for a new connection; its slot is already given back
        self.gone = False  # the client closed its side: answers still pending cannot reach it

    @property
    def idle(self) -> bool:
        return not self.evicted and (self.gone or (not self.pending and not self.reading))


def _internal_error_reply(data: bytes) -> bytes | None:
    if len(data) < 12 or data[2] & 0x80:
        return None
    return wire.error_reply(data, wire.SERVFAIL)


class Listeners:
    """All listening sockets plus the tasks answering on them."""

    def __init__(self, pipeline: Pipeline, config: ServerConfig, stats: Stats,
                 acl: AccessControl, limits: ClientLimits, rrl: RateLimiter):
        # The admission guards come from the composition root, built from the
        # ``security`` section: no defaults here that a caller could forget to override.
        self.pipeline = pipeline
        self.config = config
        self.stats = stats
        self.acl = acl
        self.limits = limits
        self.rrl = rrl
        self.udp_transports: list[asyncio.DatagramTransport] = []
        self.tcp_servers: list[asyncio.base_events.Server] = []
        self.tasks: set[asyncio.Task] = set()
        self.tcp_writers: dict[asyncio.StreamWriter, _TcpConn] = {}  # open connections, oldest first
        self.bound: list[tuple[str, int]] = []  # actual (host, port) per listen address, after binding
        self.draining = False
        self.group_size = 1  # our sockets per reuseport group (workers): see handover.steer_away
        self.drained_datagrams = 0  # read from receive buffers at close (handover)
        self.drained_connections = 0  # taken from accept queues at close (handover)
        self.hit_loop = batch.PYTHON  # UDP hit loop in use (server.udp_accelerator; batch.py)

    async def start(self, addresses: tuple[Address, ...]) -> None:
        loop = running_loop()
        # Rate limiting costs nothing when off: the plain protocol has no check at all.
        protocol = _RateLimitedUdpProtocol if self.rrl.enabled else _UdpProtocol
        self.hit_loop, why_not = batch.choose(self.config.udp_accelerator)
        log.info("UDP cache hits: %s hit loop%s", self.hit_loop, f" ({why_not})" if why_not else "",
                 extra={"event": "udp_hit_loop", "impl": self.hit_loop})
        for addr in addresses:
            for attempt in range(20 if addr.port == 0 else 1):
                sock = listen_socket(addr.host, addr.port, socket.SOCK_DGRAM)
                if self.hit_loop == batch.NATIVE:  # recvmmsg/sendmmsg, hits in C, the rest to ``protocol``
                    transport = batch.BatchTransport(loop, sock, protocol(self), self.pipeline.clock.monotonic,
                                                     hits=not self.rrl.enabled)
                else:
                    transport, _ = await loop.create_datagram_endpoint(lambda: protocol(self), sock=sock)
                port = transport.get_extra_info("sockname")[1]
                # The TCP listener takes the port UDP got, so "port 0" tests get one port for both;
                # that TCP port may be in use (say, by an outgoing connection): then try another.
                try:
                    server = await asyncio.start_server(
                        self._tcp_client, sock=listen_socket(addr.host, port, socket.SOCK_STREAM), backlog=1024)
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

    def reconfigure(self, config: ServerConfig) -> None:
        """Apply reloaded server settings, and re-point the UDP protocols at the
        pipeline's current hit path (``logging.queries`` swaps it; Pipeline.configure,
        which runs first, may also have changed the FastPath's OPT records): each
        protocol keeps the method in an attribute so a datagram costs no extra lookup."""
        self.config = config
        fast = self.pipeline.answer_fast
        for transport in self.udp_transports:
            protocol = transport.get_protocol()
            if isinstance(protocol, _UdpProtocol):
                protocol.fast = fast
            if isinstance(transport, batch.BatchTransport):  # the native loop reads it once, not per wake-up
                transport.refresh()

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
    def spawn(self, coro) -> asyncio.Task | None:
        """Run ``coro`` as a task (the caller checked ``full``); None while shutting down.

        No per-client count here: a client's share is of upstream work, which the
        pipeline charges when a query starts a fetch (``Refresher.fetch``).
        """
        if self.draining:  # a successor (or the client's retry) takes new work
            coro.close()
            self.stats.dropped_overload += 1
            return None
        task = running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def full(self) -> bool:
        """``server.max_inflight`` reached: answer from what we have (``Pipeline.answer_limited``)."""
        return len(self.tasks) >= self.config.max_inflight

    def udp_miss(self, transport, data: bytes, addr) -> None:
        """A datagram the hit path did not answer: a task, or at the global cap an answer at once."""
        if self.full() and not self.draining:
            try:
                reply = self.pipeline.answer_limited(data, False, addr[0]).reply
            except Exception:
                self.stats.internal_errors += 1
                log.exception("internal error answering a UDP query over max_inflight")
                reply = _internal_error_reply(data)
            if reply is not None:
                transport.sendto(reply, addr)
            return
        self.spawn(self.udp_slow(transport, data, addr))

    def refuse_udp(self, transport, data: bytes, addr) -> None:
        """A datagram from a client outside ``security.allow``: REFUSED or silence."""
        self.stats.acl_refused_udp += 1
        reply = self.acl.refusal(data)
        if reply is not None:
            transport.sendto(reply, addr)

    async def udp_slow(self, transport, data: bytes, addr) -> None:
        try:
            reply = (await self.pipeline.resolve(data, False, addr[0])).reply
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
        # Over a cap, the least recently active idle connection makes room (RFC 7766
        # §6.2.3: a server may close idle connections, and should when short of
        # them): an application's pool of idle connections must not lock out its
        # next connection.  Only if none is idle is the new one refused.
        if len(self.tcp_writers) >= self.config.tcp_max_connections and not self._close_idle(
                None, "tcp_max_connections"):
            self.stats.tcp_refused += 1
            writer.transport.abort()
            return
        if self.limits.tcp_at_limit(host) and not self._close_idle(host, "tcp_max_connections_per_client"):
            self.stats.tcp_refused_client_limit += 1
            writer.transport.abort()
            return
        self.limits.acquire_tcp(host)  # (room was made above)
        self.stats.tcp_connections += 1
        loop = running_loop()
        conn = self.tcp_writers[writer] = _TcpConn(writer, host, loop.time())
        pending = conn.pending
        idle = self.config.tcp_idle_timeout
        read_timeout = self.limits.tcp_read_timeout
        try:
            while True:
                started = False
                conn.reading = False
                try:
                    async with asyncio.timeout(idle) as timer:
                        header = await reader.readexactly(wire.PREFIX_LEN)
                        # The message has started: the rest must come promptly, so a
                        # client trickling bytes cannot hold a slot for idle × messages.
                        started = conn.reading = True
                        timer.reschedule(loop.time() + read_timeout)
                        data = await reader.readexactly(wire.frame_length(header))
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as e:
                    if started and isinstance(e, TimeoutError):
                        self.stats.tcp_closed_slow += 1
                    conn.gone = not isinstance(e, TimeoutError)
                    break  # idle, slow or gone client: RFC 7766 §6.2.3 lets us close
                if conn.evicted:
                    break  # closed for a newer connection while this message arrived
                conn.last = loop.time()
                self.stats.queries_tcp += 1
                if writer.transport.get_write_buffer_size() > _TCP_MAX_UNSENT:
                    self.stats.tcp_closed_slow += 1
                    break  # the client sends but does not read: bound what we buffer for it
                if not allowed:  # outside security.allow: REFUSED per query, no work done
                    reply = self.acl.refusal(data)
                    if reply is not None:
                        writer.write(wire.frame(reply))
                    continue
                try:
                    reply = self.pipeline.answer_fast(data, True)
                except Exception:  # as on UDP: the hit path must not take the connection down
                    self.stats.internal_errors += 1
                    log.exception("internal error in the cache hit path (TCP)")
                    reply = None
                if reply is not None:
                    writer.write(wire.frame(reply))
                    continue
                # Pipelined queries are answered out of order, as each completes (RFC 7766 §6.2.1.1).
                if self.draining:
                    # Shutting down: no new upstream work on TCP; close now (RFC 7766
                    # §6.2.3) rather than leave the client waiting out the grace period.
                    # It retries on a new connection, which reaches the successor.
                    break
                if self.full():  # server.max_inflight: answered at once, never left hanging
                    try:
                        reply = self.pipeline.answer_limited(data, True, host).reply
                    except Exception:
                        self.stats.internal_errors += 1
                        log.exception("internal error answering a TCP query over max_inflight")
                        reply = _internal_error_reply(data)
                    if reply is not None:
                        writer.write(wire.frame(reply))
                    continue
                task = self.spawn(self._tcp_answer(writer, data, host))
                if task is not None:
                    pending.add(task)
                    task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(set(pending), timeout=self.config.shutdown_grace)
        finally:
            if not conn.evicted:
                del self.tcp_writers[writer]
                self.limits.release_tcp(host)
            writer.transport.close()

    def _close_idle(self, host: str | None, limit: str) -> bool:
        """Close the least recently active idle connection (of ``host``, if given).

        Its slot is given back at once, for the connection being accepted; the
        close itself is graceful (replies already written are flushed, then FIN),
        and the client reconnects when it next needs one (RFC 7766 §6.2.3).
        Returns False if every candidate has a query pending or arriving.
        """
        oldest = None
        for conn in self.tcp_writers.values():
            if conn.idle and (host is None or conn.host == host) and (oldest is None or conn.last < oldest.last):
                oldest = conn
        if oldest is None:
            return False
        oldest.evicted = True
        del self.tcp_writers[oldest.writer]
        self.limits.release_tcp(oldest.host)
        oldest.writer.transport.close()
        self.stats.tcp_idle_closed[limit] += 1
        return True

    async def _tcp_answer(self, writer: asyncio.StreamWriter, data: bytes, host: str) -> None:
        try:
            reply = (await self.pipeline.resolve(data, True, host)).reply
        except Exception:
            self.stats.internal_errors += 1
            log.exception("internal error answering a TCP query")
            reply = _internal_error_reply(data)
        if reply is None:
            return
        if not writer.is_closing():
            writer.write(wire.frame(reply))


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, listeners: Listeners):
        self.listeners = listeners
        self.fast = listeners.pipeline.answer_fast  # re-pointed on reload (Listeners.reconfigure)
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
        self.listeners.udp_miss(self.transport, data, addr)

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
