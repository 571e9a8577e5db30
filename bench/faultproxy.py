#!/usr/bin/env python3
"""A fault-injecting DNS proxy between the forwarders under test and their upstream (NSD).

    python bench/faultproxy.py --port P --control-port C --target T [--delay 1.5] [--loss 0.3] [--seed 1]

The outage benchmark (bench/run.py, test ``outage``) needs the *same* upstream to break in
the ways real ones do, switched at a moment the runner chooses, and needs to know how much
work each forwarder sends to a failing upstream.  NSD alone can only be answering or
stopped, so this proxy sits in front of it, on 127.0.0.1 only, and forwards UDP and TCP
queries in one of these modes:

``pass``      forward to the target, relay the reply (ID rewritten back);
``drop``      a blackhole: count the query, never answer (TCP: read, never answer);
``servfail``  answer SERVFAIL at once (what a broken recursive upstream says);
``closed``    a killed server: the UDP socket and the TCP listener are closed, so the
              kernel answers datagrams with ICMP port unreachable and connections with
              RST.  Nothing of ours receives the queries then, so they are counted on the
              wire (an ``AF_PACKET`` socket on ``lo`` with a filter for UDP to our port;
              needs CAP_NET_RAW, else the count is ``None``);
``delay``     forward, but only ``--delay`` seconds (1.5) after the query arrived: slow,
              not dead;
``loss``      drop each UDP query with probability ``--loss`` (0.3; ``random.Random(seed)``
              so runs are repeatable), forward the rest.  TCP is passed (TCP retransmits).

"Restored with new data" is the runner switching the mode back to ``pass`` and the
target to a second NSD that serves the same names with other addresses (``target``).

Control: one line per command on a TCP connection to ``--control-port``, one JSON line
back: ``mode NAME``, ``target PORT``, ``stats``, ``reset`` (zero the counters), ``ping``.
``stats`` gives ``received`` (queries that reached the upstream's address, in any mode),
``forwarded``, ``answered`` (replies relayed), ``servfail``, ``dropped``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import random
import socket
import struct
import sys
import time

LOOPBACK = "127.0.0.1"
MODES = ("pass", "drop", "servfail", "closed", "delay", "loss")
PENDING_LIMIT = 10.0  # seconds an upstream query waits for its reply before it is forgotten


def servfail_for(query: bytes) -> bytes | None:
    """A SERVFAIL reply echoing the query's ID, opcode, RD and question (RFC 1035 4.1.1),
    or None if the question cannot be read (the query is then dropped, as NSD would)."""
    if len(query) < 12 or struct.unpack(">H", query[4:6])[0] != 1:
        return None
    pos = 12
    while pos < len(query):
        length = query[pos]
        if length == 0:
            break
        if length & 0xC0:  # no compression pointers in a question of one name
            return None
        pos += 1 + length
    end = pos + 5  # root label, QTYPE, QCLASS
    if end > len(query):
        return None
    flags = 0x8000 | (query[2] & 0x79) << 8 | 2  # QR, opcode and RD copied; RCODE 2 = SERVFAIL
    return query[:2] + struct.pack(">HHHHH", flags, 1, 0, 0, 0) + query[12:end]


class WireCounter:
    """Counts UDP datagrams sent to 127.0.0.1:PORT while nothing listens there (mode ``closed``).

    An ``AF_PACKET`` socket on ``lo`` with a classic BPF filter (IPv4, UDP, destination
    port PORT) sees them before the kernel answers ICMP port unreachable.  Loopback shows
    each packet twice (outgoing and incoming); only the incoming copy is counted."""

    PACKET_OUTGOING = 4
    SO_ATTACH_FILTER = 26

    def __init__(self, port: int):
        self.count = 0
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        insns = [
            (0x30, 0, 0, 9),       # ldb [9]: IP protocol (cooked socket: data starts at the IP header)
            (0x15, 0, 4, 17),      # jeq UDP, else drop
            (0xB1, 0, 0, 0),       # ldxb 4*([0]&0xf): IP header length
            (0x48, 0, 0, 2),       # ldh [x+2]: UDP destination port
            (0x15, 0, 1, port),    # jeq PORT
            (0x06, 0, 0, 0xFFFF),  # accept
            (0x06, 0, 0, 0),       # drop
        ]
        self._filter = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
        prog = struct.pack("HL", len(insns), ctypes.addressof(self._filter))
        self.sock.setsockopt(socket.SOL_SOCKET, self.SO_ATTACH_FILTER, prog)
        self.sock.bind(("lo", 0x0800))
        self.sock.setblocking(False)

    def on_readable(self) -> None:
        while True:
            try:
                _data, addr = self.sock.recvfrom(64)
            except (BlockingIOError, InterruptedError):
                return
            if addr[2] != self.PACKET_OUTGOING:
                self.count += 1


class FaultProxy:
    """The proxy: listeners on ``port`` (UDP and TCP), one upstream UDP socket, a mode."""

    def __init__(self, port: int, target: int, *, delay: float = 1.5, loss: float = 0.3, seed: int = 1):
        self.port = port
        self.target = (LOOPBACK, target)
        self.delay = delay
        self.loss = loss
        self.rng = random.Random(seed)
        self.mode = "pass"
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.AbstractServer | None = None
        self.tcp_writers: set[asyncio.StreamWriter] = set()
        self.upstream: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple] = {}  # upstream ID -> (reply function, client's ID bytes, sent at)
        self.next_id = random.getrandbits(16)
        self.wire: WireCounter | None = None
        self.wire_at_close = 0
        self.reset()

    def reset(self) -> dict:
        self.counts = dict.fromkeys(("received", "forwarded", "answered", "servfail", "dropped"), 0)
        if self.wire is not None:
            self.wire.on_readable()
            self.wire_at_close = self.wire.count
        return self.stats()

    def stats(self) -> dict:
        out = dict(self.counts, mode=self.mode, target=self.target[1])
        if self.mode == "closed":  # queries that hit the closed port since it closed (or the reset)
            if self.wire is None:
                out["received"] = None
            else:
                self.wire.on_readable()
                out["received"] += self.wire.count - self.wire_at_close
        return out

    # ---- sockets
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.upstream, _ = await loop.create_datagram_endpoint(
            lambda: _Upstream(self), local_addr=(LOOPBACK, 0))
        try:
            self.wire = WireCounter(self.port)
            loop.add_reader(self.wire.sock.fileno(), self.wire.on_readable)
        except (OSError, AttributeError):  # no CAP_NET_RAW: closed-mode counts are unknown
            self.wire = None
        await self._open()
        self._expiry = loop.create_task(self._expire_pending())  # referenced: the loop keeps only weak ones

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        self.udp, _ = await loop.create_datagram_endpoint(lambda: _Listener(self), local_addr=(LOOPBACK, self.port))
        self.tcp = await asyncio.start_server(self._tcp_client, LOOPBACK, self.port, reuse_address=True)

    def _close(self) -> None:
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self.tcp is not None:
            self.tcp.close()
            self.tcp = None
        for writer in list(self.tcp_writers):
            writer.transport.abort()  # RST, as from a killed process's sockets
        self.tcp_writers.clear()

    async def set_mode(self, mode: str) -> dict:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        if mode == self.mode:
            return self.stats()
        if mode in ("drop", "servfail", "closed"):
            self.pending.clear()  # replies still in flight from before the break are not relayed
        if mode == "closed":
            self._close()
            if self.wire is not None:
                self.wire.on_readable()  # anything queued so far belongs to the open port
                self.wire_at_close = self.wire.count
        elif self.mode == "closed":
            if self.wire is not None:
                self.wire.on_readable()
                self.counts["received"] += self.wire.count - self.wire_at_close
            await self._open()
        self.mode = mode
        return self.stats()

    async def _expire_pending(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            cutoff = time.monotonic() - PENDING_LIMIT
            for key in [k for k, v in self.pending.items() if v[2] < cutoff]:
                del self.pending[key]

    # ---- queries
    def on_query(self, data: bytes, reply, udp: bool) -> None:
        if len(data) < 12 or data[2] & 0x80:  # not a query
            return
        self.counts["received"] += 1
        mode = self.mode
        if mode == "drop":
            self.counts["dropped"] += 1
        elif mode == "servfail":
            answer = servfail_for(data)
            if answer is not None:
                self.counts["servfail"] += 1
                reply(answer)
        elif mode == "loss" and udp and self.rng.random() < self.loss:
            self.counts["dropped"] += 1
        elif mode == "delay":
            asyncio.get_running_loop().call_later(self.delay, self.forward, data, reply)
        else:  # pass, or a surviving datagram in loss mode
            self.forward(data, reply)

    def forward(self, data: bytes, reply) -> None:
        if self.upstream is None or self.mode in ("drop", "servfail", "closed"):
            return  # a delayed query whose time came after the upstream broke
        self.next_id = (self.next_id + 1) & 0xFFFF
        self.pending[self.next_id] = (reply, data[:2], time.monotonic())
        self.counts["forwarded"] += 1
        self.upstream.sendto(struct.pack(">H", self.next_id) + data[2:], self.target)

    def on_upstream_reply(self, data: bytes, addr) -> None:
        if len(data) < 12:
            return
        entry = self.pending.pop(struct.unpack(">H", data[:2])[0], None)
        if entry is None:
            return
        reply, client_id, _ = entry
        self.counts["answered"] += 1
        reply(client_id + data[2:])

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tcp_writers.add(writer)

        def reply(message: bytes) -> None:
            if not writer.is_closing():
                writer.write(struct.pack(">H", len(message)) + message)

        try:
            while True:
                size = struct.unpack(">H", await reader.readexactly(2))[0]
                self.on_query(await reader.readexactly(size), reply, udp=False)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.tcp_writers.discard(writer)
            writer.close()

    # ---- control
    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                cmd, _, arg = line.decode().strip().partition(" ")
                try:
                    if cmd == "mode":
                        out = await self.set_mode(arg)
                    elif cmd == "target":
                        self.target = (LOOPBACK, int(arg))
                        self.pending.clear()
                        out = self.stats()
                    elif cmd == "stats":
                        out = self.stats()
                    elif cmd == "reset":
                        out = self.reset()
                    elif cmd == "ping":
                        out = {"ok": True}
                    else:
                        out = {"error": f"unknown command {cmd!r}"}
                except (ValueError, OSError) as e:
                    out = {"error": str(e)}
                writer.write(json.dumps(out).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, proxy: FaultProxy):
        self.proxy = proxy

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        transport = self.transport

        def reply(message: bytes) -> None:
            if not transport.is_closing():
                transport.sendto(message, addr)

        self.proxy.on_query(data, reply, udp=True)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, proxy: FaultProxy):
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr) -> None:
        self.proxy.on_upstream_reply(data, addr)

    def error_received(self, exc) -> None:  # ICMP from a dead target: the query just times out
        pass


class ProxyControl:
    """The runner's side of the control connection."""

    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
        self.file = self.sock.makefile("rwb")

    def call(self, command: str) -> dict:
        self.file.write(command.encode() + b"\n")
        self.file.flush()
        out = json.loads(self.file.readline())
        if "error" in out:
            raise RuntimeError(f"fault proxy: {command}: {out['error']}")
        return out

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def connect_control(port: int, limit: float = 10.0) -> ProxyControl:
    """Connect to a proxy that is starting up (retry until ``limit``)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            control = ProxyControl(port)
            control.call("ping")
            return control
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def serve(args) -> None:
    proxy = FaultProxy(args.port, args.target, delay=args.delay, loss=args.loss, seed=args.seed)
    await proxy.start()
    control = await asyncio.start_server(proxy.control, LOOPBACK, args.control_port)
    print(f"fault proxy on {LOOPBACK}:{args.port} -> {args.target}, control {args.control_port}, "
          f"wire counter {'on' if proxy.wire else 'off (no CAP_NET_RAW)'}", flush=True)
    async with control:
        await control.serve_forever()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control-port", type=int, required=True)
    p.add_argument("--target", type=int, required=True, help="upstream port on 127.0.0.1")
    p.add_argument("--delay", type=float, default=1.5)
    p.add_argument("--loss", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        try:
            runner.run(serve(args))
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
