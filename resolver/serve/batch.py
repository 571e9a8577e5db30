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

The reader callback is the native ``HitLoop.ready`` itself; it calls back into
Python only for what a batch leaves (``_slow``: declined datagrams, unsent
replies, errors) and, after a reload, to learn the new hit path (``_hit_path``).
The GIL is held for a batch; one callback runs at most ``_hitloop.MAX_BATCHES``
batches and stops after ``_hitloop.BUDGET`` seconds, so timers and TCP wait at
most about a millisecond (64 hits take ~0.1 ms; a batch of misses, each starting
a task, more).  What is left in the receive buffer is read on the loop's next
turn (level-triggered).

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
    query log's stand-in), ``allowed`` (the ACL memo, a set changed in place) and
    ``stats`` are read when attached and again on ``refresh()``, which the
    listeners call after a reload.  ``hits`` False (rate limiting on) makes the
    native code decline everything.
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
        self._closing = False
        self.send_errors = 0  # hits the kernel refused to send (e.g. a firewall's EPERM)
        self.backlog_dropped = 0  # replies dropped with the send buffer full for long
        self._native.attach(protocol, now, self._hit_path, self._slow)
        protocol.connection_made(self)
        loop.add_reader(sock.fileno(), self._native.ready)

    # ------------------------------------------------------------ the loop
    # ``_hitloop.HitLoop.ready`` is the reader callback itself (no Python frame per
    # wake-up: at 5,000 q/s every wake-up is one datagram).  It calls back into
    # Python only through these two methods.

    def refresh(self) -> None:
        """Have the native loop read the protocol's hit path again: Listeners.reconfigure
        calls this after a reload re-pointed ``protocol.fast`` or reconfigured the FastPath."""
        if not self._closing:
            self._native.refresh()

    def _hit_path(self, fast) -> FastPath | None:
        """The FastPath behind the protocol's ``fast``, if its hits may be answered natively:
        not with the query log on (``no_fast_path``) nor with rate limiting (``hits`` False)."""
        hitpath = getattr(fast, "__self__", None) if self._hits else None
        return hitpath if isinstance(hitpath, FastPath) else None

    def _slow(self, declined, unsent, errors: int, exc: OSError | None) -> None:
        """What a batch left for Python: datagrams the native code declined (to
        ``datagram_received``, bytes and address unchanged), hits the send buffer had no room
        for, the count of hits the kernel refused, a receive error."""
        proto = self._protocol
        if exc is not None:
            proto.error_received(exc)
            return
        if errors:
            self.send_errors += errors
        if unsent:
            for reply, addr in unsent:
                self.sendto(reply, addr)
        if declined:
            stats = proto.stats
            for data, addr in declined:
                try:
                    proto.datagram_received(data, addr)
                except Exception:  # the listener must not die on a bug (listeners.py)
                    stats.internal_errors += 1
                    log.exception("internal error answering a UDP query from %s", addr[0])
                if self._closing:
                    return

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
        self._native.attach(protocol, self._now, self._hit_path, self._slow)

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
