"""Coroutines run in fake time: ``asyncio.run`` with a FakeClock that jumps.

Whenever every task is waiting on the clock (nothing is ready to run, no real
timer is set), the clock jumps to its next timer — Trio's "autojump clock".  A component test then waits
out a client timeout, an RTO or a back-off in no real time at all, and reads how
long it waited from the clock, not from the wall: no wall-clock bounds to flake
on a loaded machine.  For code without real I/O (fakes, stubs); a test on real
sockets uses ``FakeClock(flowing=True)`` instead.
"""

from __future__ import annotations

import asyncio

from resolver.clock import FakeClock

__all__ = ["run"]

# Passes of the loop with nothing ready before the clock jumps (a callback may
# schedule another one, e.g. a future's done callback waking a task).
_IDLE_PASSES = 3


def run(coro, clock: FakeClock):
    """``asyncio.run(coro)`` on ``clock``'s time; returns its result."""
    return asyncio.run(_autojump(coro, clock))


async def _autojump(coro, clock: FakeClock):
    loop = asyncio.get_running_loop()
    task = loop.create_task(coro)
    idle = 0
    while not task.done():
        await asyncio.sleep(0)
        # The stdlib loop's queue of ready callbacks (this task's own wake-up only), and
        # its real timers (a test's own ``asyncio.sleep``): the loop is busy, no jump.
        if len(getattr(loop, "_ready", ())) > 0 or any(not h.cancelled() for h in getattr(loop, "_scheduled", ())):
            idle = 0
            continue
        idle += 1
        if idle < _IDLE_PASSES:
            continue
        idle = 0
        when = clock.next_due()
        if when is None:  # nothing waits on the clock: real I/O, or nothing at all
            await asyncio.sleep(0.001)
            continue
        clock.advance(max(0.0, when - clock.monotonic()))
    return task.result()
