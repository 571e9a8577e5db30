"""The running event loop, looked up once instead of per call.

On CPython 3.11 ``asyncio.get_running_loop()`` — and everything that calls it for
you: ``asyncio.current_task()``, ``asyncio.shield``, ``asyncio.timeout`` — makes a
``getpid()`` system call each time, to notice a fork.  A cache miss used to call it
eight times: ``getpid`` was 6% of the miss path's CPU in a native profile
(``py-spy --native``).  ``running_loop()`` returns the loop it found last while that
loop is still running (one method call); after a fork it looks again.
"""

from __future__ import annotations

import asyncio
import os

_loop: asyncio.AbstractEventLoop | None = None


def running_loop() -> asyncio.AbstractEventLoop:
    """``asyncio.get_running_loop()``, without a system call on the hot path."""
    global _loop
    loop = _loop
    if loop is None or not loop.is_running():
        loop = _loop = asyncio.get_running_loop()
    return loop


def _forget() -> None:
    global _loop
    _loop = None


os.register_at_fork(after_in_child=_forget)
