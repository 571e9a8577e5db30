"""Hedging across providers: the second try goes to another provider than the first.

Stub upstreams (no sockets) with real addresses: a VPC resolver's two addresses in one
/24 (one provider, one fate), and a public provider over DoH.  When the first address
is silent, the hedge must go to the DoH provider, not to the VPC's second address,
which an outage of the VPC's network takes down too.
"""

from __future__ import annotations

import asyncio
import time

from resolver import wire
from resolver.clock import SYSTEM_CLOCK
from resolver.config import UpstreamOptions, parse_upstream
from resolver.errors import UpstreamTimeout
from resolver.upstream.pool import UpstreamPool

QUESTION = wire.name_to_wire("www.test") + b"\x00\x01\x00\x01"


class StubUpstream:
    """Answers NOERROR, or hangs until the deadline while ``silent`` (a blackhole)."""

    udp = False

    def __init__(self, text: str, silent: bool = False):
        self.address = parse_upstream(text, "u")
        self.label = self.address.label
        self.silent = silent
        self.mismatched = self.scrubbed = 0
        self.asked = 0

    async def exchange(self, question, cd, do, deadline):
        self.asked += 1
        if self.silent:
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))  # SYSTEM_CLOCK's time
            raise UpstreamTimeout("stub: silent")
        return b"\x00\x00\x81\x80" + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question


def test_the_hedge_goes_to_another_provider_than_the_first_try():
    vpc1 = StubUpstream("10.0.0.2", silent=True)
    vpc2 = StubUpstream("10.0.0.3", silent=True)
    doh = StubUpstream("https://192.0.2.1#dns.example")
    pool = UpstreamPool([vpc1, vpc2, doh], UpstreamOptions(hedge_after=0.05, attempt_timeout=1.0,
                                                           total_timeout=1.0, max_failures=100), SYSTEM_CLOCK)

    async def scenario():
        started = time.monotonic()
        reply, upstream = await pool.exchange(QUESTION, False, False, started + 1.0)
        return upstream, time.monotonic() - started

    upstream, took = asyncio.run(scenario())
    assert upstream is doh
    assert (vpc1.asked, vpc2.asked, doh.asked) == (1, 0, 1)
    assert took < 0.5  # the hedge delay (50 ms), not vpc2's turn after another hedge


def test_one_provider_keeps_the_configured_order():
    """Upstreams of one provider (one /24) are tried in configured order, as before."""
    a, b = StubUpstream("10.0.0.2", silent=True), StubUpstream("10.0.0.3")
    c = StubUpstream("https://10.0.0.4#resolver.corp.example")
    pool = UpstreamPool([a, b, c], UpstreamOptions(hedge_after=0.05, attempt_timeout=1.0, total_timeout=1.0),
                        SYSTEM_CLOCK)
    assert asyncio.run(pool.exchange(QUESTION, False, False, time.monotonic() + 1.0))[1] is b
