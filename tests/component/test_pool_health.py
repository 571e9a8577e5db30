"""The upstream pool's health: recovery epoch, late failures, probes — with stub upstreams."""

from __future__ import annotations

import asyncio

from resolver.clock import SYSTEM_CLOCK
from resolver import wire
from resolver.config import UpstreamOptions
from resolver.errors import UpstreamTimeout
from resolver.upstream.pool import UpstreamPool

QUESTION = wire.name_to_wire("www.test") + b"\x00\x01\x00\x01"


class StubUpstream:
    """Answers NOERROR, or fails with a timeout after ``delay`` while ``dead``."""

    def __init__(self, label="udp://192.0.2.1:53"):
        self.label = label
        self.dead = False
        self.delay = 0.0
        self.mismatched = 0

    async def exchange(self, question, cd, do, deadline):
        dead = self.dead
        await asyncio.sleep(self.delay)
        if dead:
            raise UpstreamTimeout("stub: dead")
        return b"\x00\x00\x81\x80" + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question


def test_late_failures_from_before_a_recovery_do_not_mark_it_down_again():
    """Queries sent into a blackhole time out after the probe found the upstream back."""
    up = StubUpstream()
    pool = UpstreamPool([up], UpstreamOptions(max_failures=1, attempt_timeout=1.0, total_timeout=1.0), SYSTEM_CLOCK)

    async def scenario():
        loop = asyncio.get_running_loop()
        up.dead, up.delay = True, 0.0
        try:
            await pool.exchange(QUESTION, False, False, loop.time() + 1)
        except UpstreamTimeout:
            pass
        assert pool.known_down() and pool.epoch == 0
        up.delay = 0.1
        late = loop.create_task(pool.exchange(QUESTION, False, False, loop.time() + 1))  # sent while dead
        await asyncio.sleep(0.01)
        up.dead, up.delay = False, 0.0
        assert await pool.probe(up, QUESTION, loop.time() + 1)
        assert not pool.known_down() and pool.epoch == 1
        try:
            await late
        except UpstreamTimeout:
            pass
        return pool.known_down(), pool.errors[(up.label, "timeout")]

    still_down, timeouts = asyncio.run(scenario())
    assert not still_down  # the late timeout was counted, but did not mark it down
    assert timeouts == 2


def test_probe_failure_counts_only_as_probe():
    up = StubUpstream()
    up.dead = True
    pool = UpstreamPool([up], UpstreamOptions(max_failures=1), SYSTEM_CLOCK)

    async def scenario():
        loop = asyncio.get_running_loop()
        return await pool.probe(up, QUESTION, loop.time() + 1)

    assert asyncio.run(scenario()) is False
    assert pool.probes[(up.label, "fail")] == 1 and not pool.errors and pool.requests[up.label] == 0
