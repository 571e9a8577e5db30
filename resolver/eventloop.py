"""The running event loop, looked up once per thread instead of per call.

On CPython 3.11 ``asyncio.get_running_loop()`` — and everything that calls it for
you: ``asyncio.current_task()``, ``asyncio.shield``, ``asyncio.timeout`` — makes a
``getpid()`` system call each time, to notice a fork.  A cache miss used to call it
eight times: ``getpid`` was 6% of the miss path's CPU in a native profile
(``py-spy --native``).  ``running_loop()`` returns the loop this thread found last
while that loop is still running (an attribute read and one method call); after a
fork it looks again.  Per thread, because tests (and embedders) may run loops in
several threads at once.  One case the check cannot see: a loop cached by this
thread, stopped, and then run by another thread while this one runs a new loop
(uvloop does not expose its thread); ``App.start`` and ``App.stop`` call
``forget()``, so an App always starts from its own loop.
"""

from __future__ import annotations

import asyncio
import os
import threading

_local = threading.local()


def running_loop() -> asyncio.AbstractEventLoop:
    """``asyncio.get_running_loop()``, without a system call on the hot path."""
    loop = getattr(_local, "loop", None)
    if loop is None or not loop.is_running():
        loop = _local.loop = asyncio.get_running_loop()
    return loop


def forget() -> None:
    """Drop this thread's cached loop (the next call looks it up again)."""
    _local.loop = None


os.register_at_fork(after_in_child=forget)
