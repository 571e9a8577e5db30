"""A scriptable stand-in for `UpstreamPool`: the pipeline only calls ``exchange``.

Builder API, as in CoreDNS's and dnspython's test helpers: ``.answer(…)``,
``.nxdomain(…)``, ``.servfail()``, ``.refused()``, ``.drop()``, ``.delay(s)``,
``.normal()``, and ``.calls`` (questions asked, in order).
"""

from __future__ import annotations

import asyncio

import dnslib

from resolver import wire
from resolver.clock import SYSTEM_CLOCK, Clock, sleep_until
from resolver.errors import UpstreamServfail, UpstreamTimeout, UpstreamUnreachable


class FakePool:
    def __init__(self, clock: Clock = SYSTEM_CLOCK):
        self.clock = clock  # the pipeline's: deadlines passed to ``exchange`` are on it
        self.records: dict[tuple[str, str], list[tuple[str, int]]] = {}
        self.nx: set[str] = set()
        self.mode = "normal"
        self.delay_s = 0.0
        self.calls: list[tuple[str, str]] = []
        self.epoch = 0       # as UpstreamPool: bumped when an upstream recovers
        self.all_down = False
        self.slow_rtt = 0.0  # the smoothed RTT known_slow compares (UpstreamPool: measured)
        self.loss = 0.0  # the share of sends lost known_lossy compares (UpstreamPool: measured)

    def known_down(self, qname: bytes | None = None) -> bool:
        return self.all_down

    def known_slow(self, threshold: float, qname: bytes | None = None) -> bool:
        return self.slow_rtt > threshold

    def known_lossy(self, threshold: float, qname: bytes | None = None) -> bool:
        return self.loss >= threshold

    # -- builder -------------------------------------------------------------
    def answer(self, name: str, rtype: str, value: str, ttl: int = 300) -> "FakePool":
        self.records.setdefault((name.lower().rstrip("."), rtype), []).append((value, ttl))
        return self

    def replace(self, name: str, rtype: str, value: str, ttl: int = 300) -> "FakePool":
        self.records[(name.lower().rstrip("."), rtype)] = [(value, ttl)]
        return self

    def nxdomain(self, name: str) -> "FakePool":
        self.nx.add(name.lower().rstrip("."))
        return self

    def servfail(self) -> "FakePool":
        self.mode = "servfail"
        return self

    def refused(self) -> "FakePool":
        self.mode = "refused"
        return self

    def unreachable(self) -> "FakePool":
        self.mode = "unreachable"
        return self

    def drop(self) -> "FakePool":
        self.mode = "drop"
        return self

    def normal(self) -> "FakePool":
        self.mode = "normal"
        self.delay_s = 0.0
        return self

    def delay(self, seconds: float) -> "FakePool":
        self.delay_s = seconds
        return self

    # -- what the pipeline calls ----------------------------------------------
    async def exchange(self, question: bytes, cd: bool, do: bool, deadline: float):
        name = wire.name_to_text(question[:-4]).rstrip(".")
        qtype = dnslib.QTYPE.get(int.from_bytes(question[-4:-2], "big"))
        self.calls.append((name, qtype))
        clock = self.clock
        if self.delay_s:
            await sleep_until(clock, min(clock.monotonic() + self.delay_s, deadline))
            if clock.monotonic() >= deadline:
                raise UpstreamTimeout("fake: delayed past the deadline")
        if self.mode == "drop":
            await sleep_until(clock, deadline)
            raise UpstreamTimeout("fake: dropped")
        if self.mode == "servfail":
            raise UpstreamServfail("servfail")
        if self.mode == "refused":
            raise UpstreamServfail("refused")
        if self.mode == "unreachable":
            raise UpstreamUnreachable("fake: port closed")
        reply = dnslib.DNSRecord(dnslib.DNSHeader(id=4321, qr=1, rd=1, ra=1),
                                 q=dnslib.DNSQuestion(name, getattr(dnslib.QTYPE, qtype)))
        reply.add_ar(dnslib.EDNS0(udp_len=1232))
        rrs = self.records.get((name.lower(), qtype))
        if rrs:
            for value, ttl in rrs:
                rdata = {"A": dnslib.A, "AAAA": dnslib.AAAA, "TXT": dnslib.TXT, "CNAME": dnslib.CNAME}[qtype](value)
                reply.add_answer(dnslib.RR(name, getattr(dnslib.QTYPE, qtype), rdata=rdata, ttl=ttl))
        else:
            if name.lower() in self.nx or not any(k[0] == name.lower() for k in self.records):
                reply.header.rcode = dnslib.RCODE.NXDOMAIN
            reply.add_auth(dnslib.RR("test", dnslib.QTYPE.SOA, ttl=3600, rdata=dnslib.SOA(
                "ns.test", "admin.test", (1, 3600, 600, 86400, 60))))
        return bytes(reply.pack()), None
