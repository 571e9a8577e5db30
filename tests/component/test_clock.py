"""The one injectable time source (resolver/clock.py): timers that a FakeClock fires when
time is advanced, a flowing FakeClock for tests on real sockets, and SystemClock on the
event loop's own clock."""

from __future__ import annotations

import asyncio
import time

import pytest
import uvloop

from resolver.clock import SYSTEM_CLOCK, FakeClock, sleep_until, timeout_at
from tests.support import fake_time


def test_fake_timers_fire_only_when_advanced_in_deadline_order():
    clock = FakeClock()
    fired = []

    async def scenario():
        clock.call_at(clock.monotonic() + 2, lambda: fired.append("b"))
        clock.call_at(clock.monotonic() + 1, lambda: fired.append("a"))
        cancelled = clock.call_at(clock.monotonic() + 1.5, lambda: fired.append("never"))
        cancelled.cancel()
        await asyncio.sleep(0.05)  # real time passes: a FakeClock does not move
        assert fired == [] and clock.pending() == 2 and clock.next_due() == clock.monotonic() + 1
        clock.advance(1.0)
        await asyncio.sleep(0)
        assert fired == ["a"]
        clock.advance(5.0)
        await asyncio.sleep(0)
        return fired

    assert asyncio.run(scenario()) == ["a", "b"] and clock.pending() == 0


def test_a_timer_already_due_fires_at_once():
    clock = FakeClock()

    async def scenario():
        await sleep_until(clock, clock.monotonic() - 1)
        return True

    assert asyncio.run(asyncio.wait_for(scenario(), 1.0))


def test_timeout_at_raises_for_its_own_expiry_and_lets_an_outside_cancel_through():
    clock = FakeClock()

    async def expires():
        async with timeout_at(clock, clock.monotonic() + 3):
            await asyncio.Event().wait()

    with pytest.raises(TimeoutError):
        fake_time.run(expires(), clock)
    assert clock.monotonic() == 1003.0  # exactly its deadline: the clock jumped there

    async def cancelled_from_outside():
        inner = asyncio.ensure_future(expires())
        await asyncio.sleep(0)
        inner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await inner
        return clock.pending()

    assert asyncio.run(cancelled_from_outside()) == 0  # its timer went with it


def test_a_flowing_clock_runs_in_real_time_and_advance_fires_due_timers_early():
    clock = FakeClock(flowing=True)
    fired = []

    async def scenario():
        start = clock.monotonic()
        clock.call_at(start + 0.05, lambda: fired.append("real"))
        clock.call_at(start + 60, lambda: fired.append("jumped"))
        await asyncio.sleep(0.2)
        assert fired == ["real"] and clock.monotonic() - start >= 0.2
        clock.advance(60)
        await asyncio.sleep(0.01)
        return fired

    assert asyncio.run(scenario()) == ["real", "jumped"]


def test_advance_is_thread_safe_for_a_loop_in_another_thread():
    import threading

    clock = FakeClock()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        done = asyncio.run_coroutine_threadsafe(sleep_until(clock, clock.monotonic() + 30), loop)
        time.sleep(0.05)
        assert not done.done()
        clock.advance(30)
        done.result(2.0)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(2)
        loop.close()


@pytest.mark.parametrize("new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
def test_system_clock_is_the_event_loops_clock(new_loop):
    """SystemClock deadlines (time.monotonic) and the loop's timers agree, on both loops:
    a 50 ms timer set through the clock fires 50 ms later by either reading."""
    loop = new_loop()
    try:
        async def scenario():
            start = SYSTEM_CLOCK.monotonic()
            await sleep_until(SYSTEM_CLOCK, start + 0.05)
            return SYSTEM_CLOCK.monotonic() - start, abs(asyncio.get_running_loop().time() - time.monotonic())

        elapsed, skew = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert elapsed >= 0.049 and skew < 0.01  # uvloop's loop.time() is ms-truncated CLOCK_MONOTONIC
