"""The batched UDP hit loop: recvmmsg → cache hits answered in C → sendmmsg.

Why: answered from uvloop's per-datagram callback, a cache hit cost ~0.6 × Unbound's
CPU per query (issue 19); most of it was interpreter work around two system calls
per datagram.  Here the listener socket is read from an ``add_reader`` callback with
``recvmmsg`` (up to ``_hitloop.BATCH`` datagrams per call), the plain fresh hits
are answered by ``_hitloop.c`` and sent with one ``sendmmsg``, and every datagram
the native code declines — a miss, a local answer, a stale answer or an aged copy
to renew, an address the ACL memo does not know yet, anything odd — goes to the
protocol's ``datagram_received`` unchanged: the Python path stays the reference.

``BatchTransport`` stands in for uvloop's datagram transport (uvloop's cannot stop
reading, and an fd may have only one reader): the listeners' bookkeeping
(``get_extra_info("socket")`` for the handover's steering and draining,
``sendto``, ``close``) works on it as on uvloop's.

The GIL is held for a batch; one callback runs at most ``MAX_BATCHES`` batches and
stops after ``BUDGET`` seconds, so timers and TCP wait at most about a millisecond
(64 hits take ~0.1 ms; a batch of misses, each starting a task, more).  What is
left in the receive buffer is read on the loop's next turn (level-triggered).

Selection (``server.udp_accelerator``): ``auto`` uses the native loop if it can be
imported on Linux, ``on`` requires it, ``off`` never uses it.  The environment
variable ``RESOLVER_UDP_ACCELERATOR=off`` forces the Python path whatever the
config says (the test suite runs a subset that way; an operator can bisect a
suspected native bug without editing the config).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from collections import deque
from typing import Callable

from .. import wire
from ..errors import ConfigError
from .fastpath import FastPath

try:
    from . import _hitloop
    _UNAVAILABLE = None if sys.platform.startswith("linux") else f"not Linux ({sys.platform})"
except ImportError as exc:  # another OS, or a source install without a compiler
    _hitloop = None
    _UNAVAILABLE = f"the extension resolver.serve._hitloop is not built ({exc})"

log = logging.getLogger("resolver.server")

NATIVE, PYTHON = "native", "python"
IMPLEMENTATIONS = (NATIVE, PYTHON)  # label values of resolver_udp_hit_loop_info
ENV_OVERRIDE = "RESOLVER_UDP_ACCELERATOR"
MAX_BATCHES = 16  # recvmmsg calls per readiness callback at most
BUDGET = 0.0005  # seconds of batches per callback before the loop gets its turn
_MAX_BACKLOG = 1024  # replies waiting for send-buffer room; past it the oldest are dropped (counted)
_KEY_PREFIXES = tuple(wire.key_prefix(flags) for flags in range(4))
_BATCH = _hitloop.BATCH if _hitloop is not None else 0


def unavailable() -> str | None:
    """Why the native hit loop cannot run here (not built, not Linux), or None if it can."""
    return _UNAVAILABLE


def choose(setting: str) -> tuple[str, str | None]:
    """(implementation, why not native) for ``server.udp_accelerator``: auto | on | off.

    Raises ConfigError for ``on`` where the native loop cannot run.  The environment
    override wins over the config (it exists to rule the native code out).
    """
    if os.environ.get(ENV_OVERRIDE, "").lower() == "off":
        return PYTHON, f"{ENV_OVERRIDE}=off"
    if setting == "off":
        return PYTHON, "server.udp_accelerator is off"
    reason = unavailable()
    if reason and setting == "on":
        raise ConfigError("server.udp_accelerator", f"on, but the native hit loop cannot run: {reason}")
    return (PYTHON, reason) if reason else (NATIVE, None)


class BatchTransport(asyncio.DatagramTransport):
    """A UDP listener socket read in batches; hits answered natively, the rest by ``protocol``.

    ``protocol`` is the listeners' UDP protocol: its ``fast`` (the hit path, or the
    query log's stand-in), ``allowed`` (the ACL memo) and ``stats`` are read per
    callback, so a reload that re-points them reaches this loop too.  ``hits``
    False (rate limiting on) makes the native code decline everything.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol,
                 now: Callable[[], float], hits: bool = True):
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._now = now
        self._hits = hits
        self._native = _hitloop.HitLoop(sock.fileno(), _KEY_PREFIXES)
        self._backlog: deque[tuple[bytes, tuple]] = deque()
        self._fast = self._hitpath = None  # the protocol's hit path as last seen, and its FastPath
        self._closing = False
        self.send_errors = 0  # hits the kernel refused to send (e.g. a firewall's EPERM)
        self.backlog_dropped = 0  # replies dropped with the send buffer full for long
        protocol.connection_made(self)
        loop.add_reader(sock.fileno(), self._ready)

    # ------------------------------------------------------------ the loop
    def _ready(self) -> None:
        proto = self._protocol
        fast = proto.fast
        if fast is not self._fast:  # first call, or a reload re-pointed the hit path (Listeners.reconfigure)
            self._fast = fast
            hitpath = getattr(fast, "__self__", None) if self._hits else None
            self._hitpath = hitpath if isinstance(hitpath, FastPath) else None
        hitpath = self._hitpath
        if hitpath is not None:
            entries = hitpath.entries
            opt_plain, opt_do = hitpath.opt_fresh
        else:  # query log on (no_fast_path) or rate limiting: every datagram to Python
            entries, opt_plain, opt_do = None, b"", b""
        serve = self._native.serve
        allowed = proto.allowed
        stats = proto.stats
        now = self._now
        deadline = 0.0
        for batch in range(MAX_BATCHES):
            try:
                got, hits, declined, unsent, errors = serve(entries, allowed, now(), opt_plain, opt_do)
            except OSError as exc:
                proto.error_received(exc)
                return
            stats.queries_udp += hits
            if errors:
                self.send_errors += errors
            if unsent:
                for reply, addr in unsent:
                    self.sendto(reply, addr)
            if declined:
                for data, addr in declined:
                    try:
                        proto.datagram_received(data, addr)
                    except Exception:  # the listener must not die on a bug (listeners.py)
                        stats.internal_errors += 1
                        log.exception("internal error answering a UDP query from %s", addr[0])
                    if self._closing:
                        return
            if got < _BATCH:  # the receive buffer is empty: the common case below saturation
                return
            if not batch:  # (the clock is read only when batches are full)
                deadline = time.perf_counter() + BUDGET
            elif time.perf_counter() >= deadline:
                return  # more is queued: the loop's other callbacks first, then we are called again

    # ------------------------------------------------------- the transport
    def sendto(self, data: bytes, addr=None) -> None:
        if self._closing:
            return
        if not self._backlog:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._sock.fileno(), self._flush)
            except OSError as exc:
                self._protocol.error_received(exc)
                return
        if len(self._backlog) >= _MAX_BACKLOG:
            self._backlog.popleft()
            self.backlog_dropped += 1
        self._backlog.append((data, addr))

    def _flush(self) -> None:
        backlog = self._backlog
        while backlog:
            data, addr = backlog[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            backlog.popleft()
        self._loop.remove_writer(self._sock.fileno())

    def get_write_buffer_size(self) -> int:
        return sum(len(data) for data, _ in self._backlog)

    def get_extra_info(self, name: str, default=None):
        if name == "socket":
            return self._sock
        if name == "sockname":
            return self._sock.getsockname()
        return default

    def get_protocol(self):
        return self._protocol

    def set_protocol(self, protocol) -> None:
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        fd = self._sock.fileno()
        self._loop.remove_reader(fd)
        if self._backlog:
            self._loop.remove_writer(fd)
            self._backlog.clear()
        self._native.close()
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()
