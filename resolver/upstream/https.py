"""A DNS-over-HTTPS upstream (RFC 8484): one HTTP/2 connection, many streams.

Queries are POSTed as ``application/dns-message`` (RFC 8484 §4.1) with DNS ID 0,
as §4.1 recommends for HTTP caches (the stream, not the ID, matches a reply to its
query); the reply is checked against the question as on every other transport and
handed back with a fresh random ID in place of the 0, so callers see what the UDP,
TCP and TLS upstreams give them.  HTTP/2 (RFC 8484 §5.2: the minimum recommended
version) is spoken with the sans-IO ``h2`` library: this module only moves bytes
between it and an asyncio TLS transport, and turns its events into replies.

One connection is kept open and every query is a stream on it, as many at once as
the server's SETTINGS_MAX_CONCURRENT_STREAMS allows (RFC 9113 §5.1.2); more wait
for a slot within their deadline.  After a GOAWAY (RFC 9113 §6.8) the next query
opens a new connection, and the queries in flight are sent again on it (h2 reads
nothing after a GOAWAY, and a DNS query is idempotent), as is a stream refused with
REFUSED_STREAM.  When the connection closes (an idle timeout), the next query opens
a new one; a query that was sent on a reused connection that then closed is
retried once, within its deadline, as the DoT upstream does.  A connection that let a query's deadline pass
without sending a single byte meanwhile is presumed dead (a blackhole keeps a TCP
connection "open" forever) and closed, so the next query reconnects.

Certificates are always verified (RFC 8310 strict privacy), against the system
store or ``upstream.tls_ca_file``, for the ``#server-name`` of the upstream URL or
else for its IP address; a failure is a failure of this upstream for this query,
never a reason to connect unverified.  The address is pinned (no bootstrap lookup).

Everything the server can get wrong — an HTTP status other than 200, another
content type, a body that is no reply to our question, RST_STREAM, a protocol
error, the connection closing mid-stream — fails the query with a typed
``UpstreamError`` (``bad_response`` or ``unreachable``), which the pool counts
against this upstream like any other transport's failure.  HTTP caching headers
are ignored: the answer's TTLs are the DNS message's (RFC 8484 §5.1 lets a DoH
client that is a DNS cache do so).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from .. import wire
from ..clock import SYSTEM_CLOCK, Clock, timeout_at
from ..config import UpstreamAddress
from ..errors import UpstreamBadResponse, UpstreamError, UpstreamTimeout, UpstreamUnreachable
from ..wire import scrub as antispoof
from . import tls as dot
from .plain import _error_without_question, query_id

CONTENT_TYPE = b"application/dns-message"
# A DNS message is at most 65535 bytes (RFC 1035 §4.2.2's length prefix); a longer
# body is not a DNS reply, and this bounds what one stream may make us buffer.
MAX_BODY = 65535
# Sends of one query at most: a GOAWAY or a closed reused connection is retried on a
# new one (within the deadline), but a server that sends GOAWAY at once, every time,
# is a failure, not a loop.
_ATTEMPTS = 3

# h2's header checks cost a quarter of a query's CPU (measured: ~190 → ~130 µs per query
# against a dnsdist that answers itself, 100 streams in flight).  Our own request headers are
# fixed and well-formed.  The server's are not checked for RFC 9113 §8.2's form either: we
# read only :status and content-type, compare them byte for byte, and accept nothing but a
# body that is a DNS reply to our question, from a server whose certificate we verified.
_H2_CONFIG = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                       validate_outbound_headers=False, normalize_outbound_headers=False,
                                       validate_inbound_headers=False)


def client_context(ca_file: str = "") -> ssl.SSLContext:
    """The DoT context (TLS 1.2+, certificate and name verified), offering only
    HTTP/2 by ALPN (RFC 7301; RFC 9113 §3.2: "h2" over TLS)."""
    context = dot.client_context(ca_file)
    context.set_alpn_protocols(["h2"])
    return context


class _Closed(Exception):
    """The connection ended before our reply came: retry once if it was a reused one."""


class _NotProcessed(_Closed):
    """The server did not act on the stream (GOAWAY, REFUSED_STREAM) or it never went
    out: sending it again is safe (RFC 9113 §8.7) however fresh the connection was."""


class _Stream:
    """One query in flight: its waiter and what has come back so far."""

    __slots__ = ("future", "status", "content_type", "body", "size")

    def __init__(self, future: asyncio.Future):
        self.future = future
        self.status = b""
        self.content_type = b""
        self.body: list[bytes] = []
        self.size = 0


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: the h2 state machine fed from, and flushed to, a transport."""

    def __init__(self, owner: "HttpsUpstream"):
        self.owner = owner
        self.label = owner.label
        self.h2 = h2.connection.H2Connection(config=_H2_CONFIG)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.closed = False
        self.accepting = True  # False after a GOAWAY: no new streams on this connection
        # Clock time the server last answered any stream (dead-connection check).  Not
        # any bytes: a server whose streams hang may still acknowledge SETTINGS and DATA.
        self.last_progress = 0.0
        self._window_waiters: list[asyncio.Future] = []  # woken when a flow-control window opens
        # Queries waiting for a stream slot, first come first served: one is woken per
        # slot freed (waking all of them for one slot would cost O(n²) wake-ups).
        self._slot_waiters: deque[asyncio.Future] = deque()
        self._flush_pending = False  # a flush is scheduled for the end of this loop iteration

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.h2.initiate_connection()
        # We never want pushed responses (RFC 9113 §8.4): a DoH server has nothing to push.
        self.h2.update_settings({h2.settings.SettingCodes.ENABLE_PUSH: 0})
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:  # after a GOAWAY or a protocol error: nothing more is read
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            if self.h2.state_machine.state is h2.connection.ConnectionState.CLOSED:
                # A GOAWAY, then more frames in the same read: h2 refuses those, and the
                # GOAWAY's event is lost with the exception.
                self._goaway()
                return
            # The server broke HTTP/2: nothing more on this connection can be trusted.
            self._fail_all(UpstreamBadResponse(f"{self.label}: HTTP/2 protocol error: {e}"))
            self.close()
            return
        for event in events:
            self._handle(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail_all(_Closed())
        self._wake_all()

    # -- events ---------------------------------------------------------------------------
    def _handle(self, event) -> None:
        if isinstance(event, (h2.events.ResponseReceived, h2.events.DataReceived, h2.events.StreamEnded,
                              h2.events.StreamReset)):
            self.last_progress = self.owner.clock.monotonic()
        if isinstance(event, h2.events.DataReceived):
            # Give the window back at once (connection and stream, RFC 9113 §6.9): bodies
            # are small and bounded by MAX_BODY, so buffering them is the bound.
            if event.flow_controlled_length:
                try:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                except h2.exceptions.StreamClosedError:
                    pass
            stream = self.streams.get(event.stream_id)
            if stream is None:
                return
            stream.size += len(event.data)
            if stream.size > MAX_BODY:
                self._finish(event.stream_id, UpstreamBadResponse(
                    f"{self.label}: HTTP body longer than {MAX_BODY} bytes"), reset=True)
                return
            stream.body.append(event.data)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                return
            for name, value in event.headers:
                if name == b":status":
                    stream.status = value
                elif name == b"content-type":
                    stream.content_type = value
            if stream.status != b"200":
                # RFC 8484 §4.2.1: only a successful HTTP response carries a DNS answer.
                self._finish(event.stream_id, UpstreamBadResponse(
                    f"{self.label}: HTTP status {stream.status.decode('ascii', 'replace')}"), reset=True)
            elif stream.content_type.split(b";")[0].strip().lower() != CONTENT_TYPE:
                self._finish(event.stream_id, UpstreamBadResponse(
                    f"{self.label}: content type {stream.content_type[:60]!r}, not {CONTENT_TYPE.decode()}"),
                    reset=True)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._finish(event.stream_id, b"".join(stream.body))
        elif isinstance(event, h2.events.StreamReset):
            if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:
                # RFC 9113 §8.7: the server did not process it, so it may be sent again.
                self._finish(event.stream_id, _NotProcessed())
            else:
                self._finish(event.stream_id, UpstreamBadResponse(
                    f"{self.label}: stream reset by the server ({_code_name(event.error_code)})"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway()
        elif isinstance(event, h2.events.WindowUpdated):
            self._window_opened()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._wake_all()  # a new MAX_CONCURRENT_STREAMS or INITIAL_WINDOW_SIZE: everyone re-checks

    def _goaway(self) -> None:
        """GOAWAY (RFC 9113 §6.8): no new streams.  Those above its last_stream_id were
        not processed; those at or below it would still be answered, but h2 (4.x)
        moves the connection to CLOSED and refuses every later frame.  So every stream
        in flight is sent again on a new connection: a DNS query is idempotent, and
        the server's duplicate work is all it costs."""
        self.accepting = False
        for stream_id in list(self.streams):
            self._finish(stream_id, _NotProcessed())
        self.close()

    def _finish(self, stream_id: int, result, reset: bool = False) -> None:
        """Settle a stream's waiter with a reply or an exception; forget the stream."""
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if reset:
            self._reset(stream_id)
        if not stream.future.done():
            if isinstance(result, BaseException):
                stream.future.set_exception(result)
            else:
                stream.future.set_result(result)
        self._slot_freed()
        if not self.accepting and not self.streams:
            self.close()

    def _reset(self, stream_id: int) -> None:
        try:
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.ProtocolError:  # already closed on either side
            pass

    def _fail_all(self, error: BaseException) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if not stream.future.done():
                stream.future.set_exception(error)

    def _flush(self) -> None:
        self._flush_pending = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def _flush_soon(self) -> None:
        """Write once the queries started in this loop iteration have all added their
        frames: one TLS record and one send for many streams, not one each (a TLS
        write per query was a third of a query's CPU)."""
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _slot_freed(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _window_opened(self) -> None:
        waiters, self._window_waiters = self._window_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _wake_all(self) -> None:
        waiters, self._slot_waiters = self._slot_waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._window_opened()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.accepting = False
        if self.transport is not None:
            try:
                self.h2.close_connection()
                self._flush_final()
            except h2.exceptions.ProtocolError:
                pass
            self.transport.abort()
        self._fail_all(_Closed())
        self._wake_all()

    def _flush_final(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    # -- one query --------------------------------------------------------------------------
    async def request(self, body: bytes) -> bytes:
        """POST ``body``; the response body of a 200 ``application/dns-message`` reply."""
        h2conn = self.h2
        waited = False
        while True:
            if self.closed or not self.accepting:
                raise _NotProcessed()
            # Streams we reset still count until h2 sees them closed; ours are the open ones.
            if len(self.streams) < h2conn.remote_settings.max_concurrent_streams:
                break
            if not waited:
                waited = True
                self.owner.stream_waits += 1
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter  # one slot freed (a stream ended), or the limit changed
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._slot_freed()  # pass the slot we were given on
                raise
        stream_id = h2conn.get_next_available_stream_id()
        future = asyncio.get_running_loop().create_future()
        self.streams[stream_id] = _Stream(future)
        try:
            try:
                h2conn.send_headers(stream_id, self.owner.headers(len(body)))
                sent = 0
                while sent < len(body):
                    # Flow control (RFC 9113 §6.9): a query fits the default 64 KiB window,
                    # but a server may announce a smaller one.
                    room = min(h2conn.local_flow_control_window(stream_id), h2conn.max_outbound_frame_size)
                    if room <= 0:
                        self._flush()
                        # A future of its own: a cancelled waiter must not cancel the others'.
                        waiter = asyncio.get_running_loop().create_future()
                        self._window_waiters.append(waiter)
                        await waiter
                        if stream_id not in self.streams:
                            break  # settled meanwhile (reset, GOAWAY, close): the future says how
                        continue
                    chunk = body[sent:sent + room]
                    sent += len(chunk)
                    h2conn.send_data(stream_id, chunk, end_stream=sent == len(body))
            except h2.exceptions.ProtocolError:
                # The connection or stream closed under us (a GOAWAY being processed), or
                # h2 still counts a stream we settled: nothing was processed, so the
                # query is sent again (exchange's retry).
                self._finish(stream_id, _NotProcessed())
            self._flush_soon()
            self.owner.streams += 1
            return await future
        except asyncio.CancelledError:
            if stream_id in self.streams:  # given up (deadline or another upstream won): stop it
                self.streams.pop(stream_id, None)
                self._reset(stream_id)
                self._flush_soon()
                self._slot_freed()
            raise


def _code_name(code) -> str:
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)


class HttpsUpstream:
    """One DoH upstream; ``exchange(question, cd, do, deadline)`` like ``Upstream``."""

    udp = False  # one exchange per query: TCP retransmits by itself, the pool never re-sends

    def __init__(self, address: UpstreamAddress, udp_size: int, context: ssl.SSLContext,
                 clock: Clock = SYSTEM_CLOCK):
        self.address = address
        self.clock = clock  # the deadlines passed in are on this clock
        self.label = address.label
        self.udp_size = udp_size
        self.context = context
        self.server_name = address.server_name or address.host
        host = f"[{address.host}]" if ":" in address.host else address.host
        # RFC 9113 §8.3.1: :authority is the URI's host (and port if not the default).
        name = address.server_name or host
        authority = name if address.port == 443 else f"{name}:{address.port}"
        self._headers = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", authority.encode("ascii")),
            (b":path", (address.path or "/dns-query").encode("ascii")),
            (b"accept", CONTENT_TYPE),
            (b"content-type", CONTENT_TYPE),
        ]
        self.mismatched = 0    # bodies that were no reply to the question asked
        self.scrubbed = 0      # records removed from replies as unrelated to the question
        self.connections = 0   # connections opened (each one TLS handshake)
        self.streams = 0       # HTTP/2 streams opened (one per query sent)
        self.stream_waits = 0  # times a query waited for a stream slot (MAX_CONCURRENT_STREAMS)
        self._conn: _Connection | None = None
        self._connecting: asyncio.Lock | None = None

    def headers(self, length: int) -> list[tuple[bytes, bytes]]:
        return [*self._headers, (b"content-length", str(length).encode())]

    async def _connection(self) -> tuple[_Connection, bool]:
        """(an open connection that takes new streams, whether it is new)."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            conn = self._conn
            if conn is not None and not conn.closed and conn.accepting:
                return conn, False
            loop = asyncio.get_running_loop()
            try:
                transport, conn = await loop.create_connection(
                    lambda: _Connection(self), self.address.host, self.address.port,
                    ssl=self.context, server_hostname=self.server_name)
            except ssl.SSLCertVerificationError as e:
                raise UpstreamBadResponse(f"{self.label}: TLS certificate not accepted: {e.verify_message}") from None
            except (OSError, ssl.SSLError) as e:
                raise UpstreamUnreachable(f"HTTPS to {self.label}: {e}") from None
            self.connections += 1
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                conn.close()
                raise UpstreamBadResponse(f"{self.label}: the server did not agree to HTTP/2 (ALPN h2)")
            self._conn = conn
            return conn, True

    async def exchange(self, question: bytes, cd: bool, do: bool, deadline: float) -> bytes:
        clock = self.clock
        if clock.monotonic() >= deadline:
            raise UpstreamTimeout("no time left")
        # RFC 8484 §4.1: ID 0, so that identical queries are identical requests.
        body = wire.build_upstream_query(0, question, cd, do, self.udp_size)
        conn = None
        started = clock.monotonic()
        try:
            async with timeout_at(clock, deadline):
                for _ in range(_ATTEMPTS):
                    conn, fresh = await self._connection()
                    started = clock.monotonic()
                    try:
                        reply = await conn.request(body)
                    except _NotProcessed:
                        continue  # GOAWAY or REFUSED_STREAM: again, on a new connection if need be
                    except _Closed:
                        if fresh:
                            break
                        continue  # a reused connection closed under us (an idle timeout): once more
                    return self._checked(reply, question)
        except TimeoutError:
            self._close_if_silent(conn, started, deadline)
            raise UpstreamTimeout(f"no HTTPS reply from {self.label}") from None
        except asyncio.CancelledError:
            self._close_if_silent(conn, started, deadline)  # the pool gives up at the deadline too
            raise
        raise UpstreamUnreachable(f"{self.label} closed the HTTP/2 connection")

    def _close_if_silent(self, conn: _Connection | None, started: float, deadline: float) -> None:
        """At the deadline, close a connection that has answered no stream since this
        query went out: a dead path (a blackhole keeps TCP "open") or a hung server,
        not a slow one, whose other streams would be answering.  The next query reconnects."""
        if conn is None or conn.closed or conn.last_progress >= started:
            return
        if self.clock.monotonic() >= deadline - 0.005:  # not a hedge that lost
            conn.close()

    def _checked(self, reply: bytes, question: bytes) -> bytes:
        """The reply with a random ID in place of the 0 we sent, scrubbed; or bad_response."""
        try:
            wire.check_reply_matches(reply, 0, question)
        except UpstreamBadResponse as e:
            if _error_without_question(reply, 0):  # FORMERR & co. without a question, as plain.py
                return query_id().to_bytes(2, "big") + reply[2:]
            self.mismatched += 1
            raise UpstreamBadResponse(f"{self.label}: {e}") from None
        reply = query_id().to_bytes(2, "big") + reply[2:]
        reply, removed = antispoof.scrub(reply, question)
        self.scrubbed += removed
        return reply

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


__all__ = ["HttpsUpstream", "UpstreamError", "client_context"]
