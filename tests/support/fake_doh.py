"""A fault-injecting DNS-over-HTTPS server (HTTP/2 with ``h2``, TLS) on 127.0.0.1.

Behaves like a real DoH server when ``mode`` is "normal": POSTed
``application/dns-message`` queries get a reply (A 192.0.2.1 TTL 300 for names in
``test.``, NXDOMAIN for ``nosuch.test``, REFUSED outside ``test.`` and for other
classes, as an authoritative server would).  The failure modes:

garbage        200, application/dns-message, bytes that are no DNS reply
content_type   200 with text/html and a valid DNS body
status         HTTP 503 with a text body
reset          RST_STREAM (INTERNAL_ERROR) instead of a response
close          response headers, half the body, then the TCP connection closes
wrong_question 200, a well-formed reply for another name
drop           nothing at all (the stream stays open)

``window`` is the SETTINGS_INITIAL_WINDOW_SIZE it announces (flow control),
``goaway_after=N`` sends a graceful GOAWAY when the Nth stream arrives (last stream ID:
that one), answers the streams up to it, ignores later ones, and then closes,
``max_streams`` is the SETTINGS_MAX_CONCURRENT_STREAMS it announces, ``delay`` holds
each reply.  ``connections`` counts TLS connections accepted; ``requests`` lists
(method, path, authority, content-type, DNS ID) per stream.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from hyperframe.frame import GoAwayFrame

MODES = ("normal", "garbage", "content_type", "status", "reset", "close", "wrong_question", "drop")


def dns_answer(query: bytes) -> bytes:
    """What a small authoritative server for ``test.`` answers."""
    q = DNSRecord.parse(query)
    reply = q.reply()
    name = str(q.q.qname).lower().rstrip(".")
    if q.q.qclass != 1 or not (name == "test" or name.endswith(".test")):
        reply.header.rcode = RCODE.REFUSED
        reply.header.aa = 0
    elif name.startswith("nosuch"):
        reply.header.rcode = RCODE.NXDOMAIN
    elif q.q.qtype == QTYPE.A:
        reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("192.0.2.1"), ttl=300))
    return reply.pack()


class FakeDohServer:
    def __init__(self, pki: Path, mode: str = "normal", max_streams: int = 100, goaway_after: int = 0,
                 delay: float = 0.0, window: int = 65535):
        assert mode in MODES, mode
        self.pki = Path(pki)
        self.mode = mode
        self.max_streams = max_streams
        self.goaway_after = goaway_after
        self.delay = delay
        self.window = window  # SETTINGS_INITIAL_WINDOW_SIZE: how much of a body we may send unacknowledged
        self.connections = 0
        self.requests: list[tuple[str, str, str, str, int]] = []
        self.max_open = 0  # most streams open at once on one connection
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._transports: set[asyncio.Transport] = set()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def url(self, server_name: str = "doh.test") -> str:
        return f"https://127.0.0.1:{self.port}/dns-query#{server_name}"

    def start(self) -> "FakeDohServer":
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="fake-doh", daemon=True).start()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.pki / "server.pem", self.pki / "server.key")
        context.set_alpn_protocols(["h2"])
        self._server = self._call(self._loop.create_server(lambda: _Server(self), "127.0.0.1", 0, ssl=context))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(5)

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown():
            self._server.close()
            for t in list(self._transports):
                t.abort()

        self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop = None

    def __enter__(self) -> "FakeDohServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Server(asyncio.Protocol):
    def __init__(self, owner: FakeDohServer):
        self.owner = owner
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.bodies: dict[int, bytearray] = {}
        self.headers: dict[int, dict[str, str]] = {}
        self.streams = 0
        self.received = 0
        self.goaway_last = 0  # last stream ID of the GOAWAY sent; 0 = none yet
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.owner.connections += 1
        self.owner._transports.add(transport)
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.owner.max_streams,
                                   h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.owner.window})
        transport.write(self.conn.data_to_send())

    def connection_lost(self, exc) -> None:
        self.owner._transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.transport.abort()
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                if self.goaway_last and event.stream_id > self.goaway_last:
                    continue  # after our GOAWAY: not processed (RFC 9113 §6.8)
                self.received += 1
                if self.owner.goaway_after and self.received == self.owner.goaway_after:
                    # h2's close_connection() would stop us answering the streams before it,
                    # as a graceful shutdown does; so the frame is written by hand.
                    self.goaway_last = event.stream_id
                    goaway = GoAwayFrame(0)
                    goaway.last_stream_id, goaway.error_code = event.stream_id, 0
                    self._flush()
                    self.transport.write(goaway.serialize())
                self.headers[event.stream_id] = dict(event.headers)
                self.bodies[event.stream_id] = bytearray()
                self.owner.max_open = max(self.owner.max_open, len(self.bodies))
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id in self.bodies:
                    self.bodies[event.stream_id] += event.data
            elif isinstance(event, h2.events.StreamEnded):
                if event.stream_id in self.headers:
                    asyncio.get_running_loop().create_task(self._respond(event.stream_id))
            elif isinstance(event, h2.events.StreamReset):
                self.bodies.pop(event.stream_id, None)
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    async def _respond(self, stream_id: int) -> None:
        owner = self.owner
        headers = self.headers.pop(stream_id)
        query = bytes(self.bodies.get(stream_id, b""))
        owner.requests.append((headers.get(":method"), headers.get(":path"), headers.get(":authority"),
                               headers.get("content-type"), int.from_bytes(query[:2], "big")))
        self.streams += 1
        if owner.delay:
            await asyncio.sleep(owner.delay)
        if self.transport.is_closing():
            return
        mode = owner.mode
        try:
            if mode == "drop":
                return
            if mode == "reset":
                self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
                return
            if mode == "status":
                self._send(stream_id, "503", "text/plain", b"upstream overloaded\n")
                return
            answer = dns_answer(query)
            if mode == "wrong_question":
                other = DNSRecord.question("other.test")
                other.header.id = 0
                answer = dns_answer(other.pack())
            if mode == "garbage":
                self._send(stream_id, "200", "application/dns-message", b"\x00\x00\x81\x80" + os.urandom(40))
            elif mode == "content_type":
                self._send(stream_id, "200", "text/html; charset=utf-8", answer)
            elif mode == "close":
                self.conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/dns-message"),
                                                   ("content-length", str(len(answer)))])
                self.conn.send_data(stream_id, answer[: len(answer) // 2])
                self._flush()
                self.transport.close()
            else:
                self._send(stream_id, "200", "application/dns-message", answer)
        except h2.exceptions.ProtocolError:  # the client reset the stream or went away
            pass
        finally:
            self.bodies.pop(stream_id, None)
            self._flush()
            if self.goaway_last and not any(s <= self.goaway_last for s in self.bodies):
                self.transport.close()  # everything up to the GOAWAY's last stream is answered

    def _send(self, stream_id: int, status: str, content_type: str, body: bytes) -> None:
        self.conn.send_headers(stream_id, [(":status", status), ("content-type", content_type),
                                           ("content-length", str(len(body))),
                                           ("cache-control", "max-age=3600")])
        self.conn.send_data(stream_id, body, end_stream=True)
