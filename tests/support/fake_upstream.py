"""An in-process DNS upstream with fault injection, for integration tests.

It runs its own asyncio loop in a background thread, so the same object works from
plain (sync) pytest tests and from async tests without sharing their loop.  It
listens on UDP and TCP on the same free port of 127.0.0.1.

    up = FakeUpstream().start()
    up.answer("www.test", "A", "192.0.2.1", ttl=300)
    up.mode("servfail")                 # every query now gets SERVFAIL
    up.mode("drop", name="slow.test")   # ... except slow.test, which gets nothing
    up.delay(0.3)                       # every reply 300 ms late
    up.loss(0.3); up.lose_next(1)       # random / deterministic loss of UDP queries
    up.close_port(); up.open_port()     # port unreachable, then back on the same port
    up.calls                            # [("udp", "www.test", "A"), ...]
    up.stop()

Modes (global, or per name with ``name=``; a name's own setting wins):

normal     answer from the records; unknown names get NXDOMAIN with an SOA
           (minimum 60) in authority; known names without the type get NODATA + SOA;
           a UDP reply larger than the client's limit (512, or its EDNS size) is
           sent with TC=1 and no records, as a real server would
drop       never reply (UDP and TCP; a TCP connection stays open)
servfail   rcode SERVFAIL, no records
refused    rcode REFUSED, no records
truncate   UDP: TC=1 and no records; TCP: the normal answer
garbage    bytes that can never parse: the query's ID, then a header claiming
           65535 answers, then random bytes
wrong_id   the normal answer with ID = query ID + 1
empty      NOERROR, no answer records, the SOA in authority
wrong_case the normal answer, but the question's letters in swapped case (0x20 tests)
pollute    the normal answer plus unrelated records: an A record for
           evil.example in the answer section and in authority (scrubbing tests)

Like a real authoritative server (NSD, knot, a corporate or Kubernetes zone's
server), it serves only its zones, and only class IN, and answers REFUSED to:

* names outside its zones — by default ``test.`` plus the top-level zone of every
  name it was given records for (``www.example.com`` → ``com.``; the same zone whose
  SOA goes into its negative answers; ``clear``/``nxdomain`` delete names, the
  zone stays served), or exactly ``zones=[...]`` / ``serve_zones(...)``;
  so ``. NS`` is REFUSED unless it serves the root (``zones=["."]``);
* classes other than IN (CHAOS ``version.bind`` included);
* zone transfers (AXFR, IXFR).

These refusals apply in every mode that answers normally; the failure modes
(drop, garbage, servfail, refused) behave the same for every question.

``raw_names`` lists the question names as received, case preserved.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
import threading
import time
from typing import Callable

from dnslib import AAAA, CNAME, EDNS0, QTYPE, RCODE, RR, SOA, TXT, A, DNSHeader, DNSLabel, DNSRecord

HOST = "127.0.0.1"
MODES = ("normal", "drop", "servfail", "refused", "truncate", "garbage", "wrong_id", "empty",
         "wrong_case", "pollute")
EDNS_PAYLOAD = 1232


def _norm(name: str) -> str:
    """Lowercase, no trailing dot ("." for the root)."""
    name = str(name).lower().rstrip(".")
    return name or "."


def _qtype_name(qtype: int) -> str:
    try:
        return QTYPE[qtype]
    except Exception:  # noqa: BLE001 - dnslib raises its own error for unknown values
        return f"TYPE{qtype}"


def _zone_of(name: str) -> str:
    """The zone whose SOA goes into negative answers: the last label ("test")."""
    if name == ".":
        return "."
    return name.rsplit(".", 1)[-1] + "."


def _raw_question(data: bytes) -> bytes:
    """The first question's bytes (uncompressed name, type, class), or b"" if unreadable."""
    off = 12
    while off < len(data) and 0 < data[off] < 64:
        off += 1 + data[off]
    if off >= len(data) or data[off] != 0 or off + 5 > len(data) or data[4:6] != b"\x00\x01":
        return b""
    return data[12:off + 5]


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: "FakeUpstream"):
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        transport = self.transport

        def send(reply: bytes) -> None:
            if transport is not None and not transport.is_closing():
                transport.sendto(reply, addr)

        if len(data) >= 2:
            self.owner.received.append((int.from_bytes(data[:2], "big"), addr[1]))
        self.owner._spawn(self.owner._respond(data, "udp", send))

    def error_received(self, exc) -> None:  # ICMP from a client that went away
        pass


class FakeUpstream:
    """A fault-injecting DNS server on 127.0.0.1 (UDP and TCP, same port)."""

    def __init__(self, port: int = 0, zones: list[str] | tuple[str, ...] | None = None):
        self.port: int = port
        # None: "test." plus the top-level zone of each record's name (see the module doc).
        self._zones: set[str] | None = None if zones is None else {_norm(z) for z in zones}
        # Zones of every record ever added: removing a name (``nxdomain``, ``clear``) deletes
        # it from its zone, which is still served (NXDOMAIN, not REFUSED), as on a real server.
        self._record_zones: set[str] = {"test"}
        self._lock = threading.Lock()
        self._records: dict[str, list[tuple[str, RR]]] = {}
        self._mode = "normal"
        self._name_mode: dict[str, str] = {}
        self._delay = 0.0
        self._name_delay: dict[str, float] = {}
        self._calls: list[tuple[str, str, str]] = []
        self.raw_names: list[str] = []
        self._loss = 0.0
        self._lose_next = 0
        self._rng = random.Random(5)
        self.received: list[tuple[int, int]] = []  # (query ID, client port) of each UDP query
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    # -- addresses -----------------------------------------------------------
    @property
    def host(self) -> str:
        return HOST

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._udp is not None

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> "FakeUpstream":
        if self._loop is not None:
            return self
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._thread.start()
        self._call(self._open())
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro, timeout: float = 5.0):
        """Run ``coro`` on the server's loop and wait for its result."""
        if self._loop is None:
            raise RuntimeError("FakeUpstream is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            self._call(self._shutdown())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(5)
            loop.close()
            self._loop = None
            self._thread = None

    def close_port(self) -> None:
        """Close the UDP and TCP sockets (and open TCP connections): port unreachable."""
        self._call(self._close())

    def open_port(self) -> None:
        """Listen again on the same port after :meth:`close_port`."""
        self._call(self._open())

    def __enter__(self) -> "FakeUpstream":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def _open(self) -> None:
        if self._udp is not None:
            return
        loop = asyncio.get_running_loop()
        for _ in range(100):
            udp, _proto = await loop.create_datagram_endpoint(
                lambda: _UDPProtocol(self), local_addr=(HOST, self.port))
            port = udp.get_extra_info("sockname")[1]
            try:
                tcp = await asyncio.start_server(self._tcp_client, HOST, port,
                                                 reuse_address=True)
            except OSError:
                udp.close()
                if self.port:  # a fixed port that TCP cannot have: give up
                    raise
                continue
            self._udp, self._tcp, self.port = udp, tcp, port
            return
        raise RuntimeError("no port free for both UDP and TCP")

    async def _close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        await asyncio.sleep(0)

    async def _shutdown(self) -> None:
        await self._close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- configuration (any thread) -----------------------------------------
    def answer(self, name: str, rtype: str, value: str, ttl: int = 300) -> "FakeUpstream":
        """Add a record; several per name are fine.  A, AAAA, TXT, CNAME (and any
        other type dnslib can read from zone-file text, e.g. MX "10 mx.test.")."""
        key = _norm(name)
        owner = DNSLabel(key if key != "." else "")
        rtype = rtype.upper()
        if rtype == "A":
            rr = RR(owner, QTYPE.A, rdata=A(value), ttl=ttl)
        elif rtype == "AAAA":
            rr = RR(owner, QTYPE.AAAA, rdata=AAAA(value), ttl=ttl)
        elif rtype == "CNAME":
            rr = RR(owner, QTYPE.CNAME, rdata=CNAME(value), ttl=ttl)
        elif rtype == "TXT":
            data = value if isinstance(value, (list, tuple)) else [
                value[i:i + 255] for i in range(0, max(len(value), 1), 255)]
            rr = RR(owner, QTYPE.TXT, rdata=TXT(list(data)), ttl=ttl)
        else:
            rrs = RR.fromZone(f"{key}. {ttl} IN {rtype} {value}")
            if len(rrs) != 1:
                raise ValueError(f"cannot build {rtype} {value!r}")
            rr = rrs[0]
        with self._lock:
            self._records.setdefault(key, []).append((rtype, rr))
            self._record_zones.add(_zone_of(key).rstrip(".") or ".")
        return self

    def nxdomain(self, name: str) -> "FakeUpstream":
        """``name`` answers NXDOMAIN (with SOA); drops any records it had."""
        with self._lock:
            self._records.pop(_norm(name), None)
        return self

    remove = nxdomain

    def serve_zones(self, *zones: str) -> "FakeUpstream":
        """Serve exactly these zones ("." = every name); no argument: back to the default."""
        with self._lock:
            self._zones = {_norm(z) for z in zones} if zones else None
        return self

    def serves(self, name: str) -> bool:
        """Is ``name`` inside one of the zones this server is authoritative for?"""
        name = _norm(name)
        with self._lock:
            zones = self._record_zones if self._zones is None else self._zones
        if "." in zones:
            return True
        return any(name == z or name.endswith("." + z) for z in zones)

    def clear(self) -> "FakeUpstream":
        """Forget every record and per-name setting; global mode back to normal, no delay."""
        with self._lock:
            self._records.clear()
            self._name_mode.clear()
            self._name_delay.clear()
            self._mode = "normal"
            self._delay = 0.0
        return self

    def mode(self, mode: str, name: str | None = None) -> "FakeUpstream":
        """Set the global mode, or with ``name`` the mode of that name only
        (``mode("normal", name=...)`` then makes that name follow the global one)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        with self._lock:
            if name is None:
                self._mode = mode
            elif mode == "normal":
                self._name_mode.pop(_norm(name), None)
            else:
                self._name_mode[_norm(name)] = mode
        return self

    def delay(self, seconds: float, name: str | None = None) -> "FakeUpstream":
        """Delay every reply (or only replies for ``name``) by ``seconds``."""
        with self._lock:
            if name is None:
                self._delay = float(seconds)
            else:
                self._name_delay[_norm(name)] = float(seconds)
        return self

    def loss(self, fraction: float, seed: int = 5) -> "FakeUpstream":
        """Drop this fraction of UDP queries at random (seeded: runs repeat), as packet loss would."""
        with self._lock:
            self._loss = float(fraction)
            self._rng = random.Random(seed)
        return self

    def lose_next(self, count: int = 1) -> "FakeUpstream":
        """Drop the next ``count`` UDP queries, as lost datagrams (deterministic loss)."""
        with self._lock:
            self._lose_next = int(count)
        return self

    @property
    def calls(self) -> list[tuple[str, str, str]]:
        """(transport "udp"/"tcp", qname lowercase without trailing dot, qtype) received."""
        with self._lock:
            return list(self._calls)

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def calls_for(self, name: str, qtype: str | None = None) -> list[tuple[str, str, str]]:
        key = _norm(name)
        return [c for c in self.calls if c[1] == key and (qtype is None or c[2] == qtype)]

    def wait_for_calls(self, count: int, timeout: float = 2.0) -> list[tuple[str, str, str]]:
        """Wait until at least ``count`` queries arrived; returns the calls."""
        deadline = time.monotonic() + timeout
        while True:
            calls = self.calls
            if len(calls) >= count or time.monotonic() >= deadline:
                return calls
            time.sleep(0.01)

    # -- serving (loop thread) ----------------------------------------------
    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._writers.add(writer)

        def send(reply: bytes) -> None:
            if not writer.is_closing():
                writer.write(struct.pack("!H", len(reply)) + reply)

        try:
            while True:
                head = await reader.readexactly(2)
                (length,) = struct.unpack("!H", head)
                data = await reader.readexactly(length)
                self._spawn(self._respond(data, "tcp", send))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    async def _respond(self, data: bytes, transport: str, send: Callable[[bytes], None]) -> None:
        try:
            query = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 - unreadable past the header
            if len(data) >= 12 and not data[2] & 0x80:
                # dnslib cannot read it (e.g. a name with non-ASCII bytes, which a real
                # server reads fine): a name outside our zones, so REFUSED with the
                # question echoed; FORMERR without a question if even that is unreadable.
                question = _raw_question(data)
                rcode = RCODE.REFUSED if question else RCODE.FORMERR
                send(data[:2] + bytes((0x80 | (data[2] & 0x79), 0x80 | rcode)) +
                     (b"\x00\x01" if question else b"\x00\x00") + b"\x00" * 6 + question)
            return
        if query.header.qr or not query.questions:
            return
        qname = _norm(query.q.qname)
        qtype = _qtype_name(query.q.qtype)
        with self._lock:
            self._calls.append((transport, qname, qtype))
            self.raw_names.append(str(query.q.qname))
            mode = self._name_mode.get(qname, self._mode)
            delay = self._name_delay.get(qname, self._delay)
            lost = transport == "udp" and self._loss > 0 and self._rng.random() < self._loss
            if transport == "udp" and self._lose_next > 0:
                self._lose_next -= 1
                lost = True
        if lost:
            return
        if delay > 0:
            await asyncio.sleep(delay)
        if mode == "drop":
            return
        if mode == "garbage":
            send(data[:2] + b"\x81\x80\x00\x01\xff\xff\x00\x00\x00\x00" + os.urandom(24))
            return
        reply = self._reply_skeleton(query)
        if mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
        elif mode == "refused" or self._refuses(query, qname):
            reply.header.rcode = RCODE.REFUSED
            reply.header.aa = 0
        elif mode == "empty":
            reply.add_auth(self._soa(qname))
        elif mode == "truncate" and transport == "udp":
            reply.header.tc = 1
        else:
            self._fill(reply, query, qname)
        if mode == "wrong_case":
            reply.questions[0].qname = DNSLabel(str(query.q.qname).swapcase())
        if mode == "pollute":
            reply.add_answer(RR("evil.example", QTYPE.A, rdata=A("203.0.113.66"), ttl=86400))
            reply.add_auth(RR("evil.example", QTYPE.A, rdata=A("203.0.113.67"), ttl=86400))
        if mode == "wrong_id":
            reply.header.id = (query.header.id + 1) & 0xFFFF
        wire = reply.pack()
        if transport == "udp" and len(wire) > self._udp_limit(query):
            reply = self._reply_skeleton(query)
            reply.header.tc = 1
            if mode == "wrong_id":
                reply.header.id = (query.header.id + 1) & 0xFFFF
            wire = reply.pack()
        send(wire)

    def _refuses(self, query: DNSRecord, qname: str) -> bool:
        """What a real authoritative server refuses: other classes, zone transfers,
        names outside its zones (RFC 1035 §4.1.1 REFUSED: "for policy reasons")."""
        q = query.q
        return q.qclass != 1 or q.qtype in (QTYPE.AXFR, QTYPE.IXFR) or not self.serves(qname)

    @staticmethod
    def _opt(query: DNSRecord) -> RR | None:
        for rr in query.ar:
            if rr.rtype == QTYPE.OPT:
                return rr
        return None

    def _udp_limit(self, query: DNSRecord) -> int:
        opt = self._opt(query)
        if opt is None:
            return 512
        return max(512, min(opt.rclass, 4096))

    def _reply_skeleton(self, query: DNSRecord) -> DNSRecord:
        header = DNSHeader(id=query.header.id, qr=1, opcode=query.header.opcode, aa=1,
                           rd=query.header.rd, ra=1, rcode=RCODE.NOERROR)
        reply = DNSRecord(header, questions=list(query.questions))
        opt = self._opt(query)
        if opt is not None:
            do = "do" if (opt.ttl & 0x8000) else ""
            reply.add_ar(EDNS0(udp_len=EDNS_PAYLOAD, flags=do))
        return reply

    @staticmethod
    def _soa(qname: str) -> RR:
        zone = _zone_of(qname)
        base = "" if zone == "." else zone
        return RR(DNSLabel(zone if zone != "." else ""), QTYPE.SOA, ttl=60,
                  rdata=SOA(f"ns.{base}", f"admin.{base}", (1, 3600, 600, 86400, 60)))

    def _fill(self, reply: DNSRecord, query: DNSRecord, qname: str) -> None:
        """Answer ``qname`` from the records, following CNAMEs within them."""
        qtype = _qtype_name(query.q.qtype)
        owner = query.q.qname  # answers use the question's spelling (0x20-safe)
        name = qname
        with self._lock:
            records = {k: list(v) for k, v in self._records.items()}
        for _ in range(10):
            recs = records.get(name)
            if recs is None:
                if name == qname:
                    reply.header.rcode = RCODE.NXDOMAIN
                    reply.add_auth(self._soa(qname))
                return
            match = [rr for t, rr in recs if t == qtype or qtype == "ANY"]
            if match:
                for rr in match:
                    reply.add_answer(self._renamed(rr, owner))
                return
            cnames = [rr for t, rr in recs if t == "CNAME"]
            if not cnames:
                reply.add_auth(self._soa(name))  # NODATA
                return
            reply.add_answer(self._renamed(cnames[0], owner))
            owner = cnames[0].rdata.label
            name = _norm(owner)

    @staticmethod
    def _renamed(rr: RR, owner) -> RR:
        return RR(owner, rr.rtype, rr.rclass, rr.ttl, rr.rdata)

    def __repr__(self) -> str:
        return f"<FakeUpstream {self.address} mode={self._mode}>"
