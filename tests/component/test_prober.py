"""What the health prober asks a down upstream, and which replies bring it back
(issue 13 item 4), with a stub upstream that answers per question."""

from __future__ import annotations

import asyncio

import pytest

from resolver.clock import SYSTEM_CLOCK
from resolver import wire
from resolver.config import UpstreamOptions
from resolver.upstream.pool import UpstreamPool
from resolver.upstream.probe import Prober, probe_question

FAILED = wire.name_to_wire("n1.test") + b"\x00\x01\x00\x01"
ROOT_NS = probe_question(".")
OPTIONS = UpstreamOptions(max_failures=1, probe_interval=0.01, probe_interval_max=0.02, attempt_timeout=0.2)


class StubUpstream:
    """``answers[question]`` is the rcode it replies with (None: silent)."""

    def __init__(self, answers):
        self.label = "udp://192.0.2.1:53"
        self.answers = answers
        self.asked: list[bytes] = []
        self.mismatched = 0

    async def exchange(self, question, cd, do, deadline):
        self.asked.append(question)
        rcode = self.answers.get(question)
        if rcode is None:
            await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))
            from resolver.errors import UpstreamTimeout
            raise UpstreamTimeout("stub: silent")
        return b"\x00\x00" + bytes((0x81, 0x80 | rcode)) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question


def watch_for(answers, seconds=0.5):
    up = StubUpstream(answers)
    pool = UpstreamPool([up], OPTIONS, SYSTEM_CLOCK)
    prober = Prober(OPTIONS)
    prober.attach(pool)

    async def scenario():
        pool._failed(up, "servfail", asyncio.get_running_loop().time(), None, FAILED)  # down, on n1.test
        assert not pool.health[up.label].up
        for _ in range(int(seconds / 0.01)):
            if pool.health[up.label].up:
                break
            await asyncio.sleep(0.01)
        await prober.close()
        return pool.health[up.label].up

    return asyncio.run(scenario()), up


def test_authoritative_only_upstream_comes_back_on_the_failed_name():
    """It REFUSES ". NS" forever, but answers the name that failed: up."""
    up_again, up = watch_for({FAILED: wire.NOERROR, ROOT_NS: wire.REFUSED})
    assert up_again and up.asked[0] == FAILED


def test_an_nxdomain_for_the_failed_name_is_useful_too():
    assert watch_for({FAILED: wire.NXDOMAIN, ROOT_NS: wire.REFUSED})[0]


def test_servfail_everything_stays_down():
    up_again, up = watch_for({FAILED: wire.SERVFAIL, ROOT_NS: wire.SERVFAIL})
    assert not up_again and len(up.asked) >= 3


def test_servfail_for_the_failed_name_and_refused_root_stays_down():
    """Reachable, but the name it failed on still fails: not back."""
    up_again, up = watch_for({FAILED: wire.SERVFAIL, ROOT_NS: wire.REFUSED})
    assert not up_again and FAILED in up.asked and ROOT_NS in up.asked


def test_refused_to_every_question_asked_marks_it_up():
    """REFUSED to the failed name and to ". NS": it answers, so it is not down; real
    queries judge it from here (a REFUSED can never mark it down again)."""
    assert watch_for({FAILED: wire.REFUSED, ROOT_NS: wire.REFUSED})[0]


def test_a_name_that_fails_on_its_own_does_not_hide_a_recovery():
    """The failed name keeps failing (a broken zone), the root answers: probes alternate."""
    up_again, up = watch_for({FAILED: wire.SERVFAIL, ROOT_NS: wire.NOERROR})
    assert up_again


@pytest.mark.parametrize("answers", [{}, {ROOT_NS: wire.NOERROR}])
def test_silence_stays_down_root_answer_comes_back(answers):
    up_again, _ = watch_for(answers, seconds=0.3)
    assert up_again == bool(answers)
