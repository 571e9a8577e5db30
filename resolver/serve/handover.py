"""Zero-gap handover of the listening ports to a successor process (SO_REUSEPORT).

An upgrade starts the new process while the old one still serves: both bind the
same addresses with SO_REUSEPORT and the kernel spreads packets over every socket
in the group by a hash of the client's address and port.  Closing the old sockets
is where queries get lost: datagrams already queued in a closing UDP socket's
receive buffer, and connections waiting in a closing listener's accept queue, are
discarded by the kernel.  So on SIGTERM the old process, before it closes:

1. **steers** the group away from itself: a classic BPF program attached to the
   group (SO_ATTACH_REUSEPORT_CBPF) sends every new packet to a socket at index
   ``n .. 2n-1`` — the successor's, since members are indexed in join order and
   the old process's ``n`` sockets joined first.  When no such index exists (no
   successor yet, or only one process left) the kernel falls back to its normal
   hash, so the program is harmless when nobody takes over and after the old
   process is gone;
2. **empties its queues**: reads what is already in the UDP receive buffer and
   answers it, and accepts what waits in the TCP accept queue and serves it;
3. then closes, finishes what is in flight within the grace period, and exits.

The successor removes the program once the handover is surely over (``unsteer``).

With several workers on each side the steering is not perfect: when one old
socket closes, the kernel moves the group's last member into its slot, so some
successor sockets leave the range the program selects and their share falls back
to the hash, which still includes the old process's other sockets.  Those keep
answering everything that reaches them until their grace period ends (see
``Listeners.close``), so nothing is lost; it only means the old workers are not
idle at once.

Kernel facts relied on (Linux ≥ 4.6): reuseport group members are kept in an
array in join order, a leaving member's slot is filled by the last one, and a
BPF selection outside the array falls back to the hash (net/core/sock_reuseport.c).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import struct
from typing import Callable
from urllib.parse import parse_qs

log = logging.getLogger("resolver.handover")

SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
SO_DETACH_REUSEPORT_BPF = getattr(socket, "SO_DETACH_REUSEPORT_BPF", 68)
_SKF_AD_OFF = -0x1000
_SKF_AD_CPU = 36
# Classic BPF opcodes (linux/filter.h)
_LD_W_ABS, _ALU_MOD_K, _ALU_ADD_K, _RET_A = 0x20, 0x94, 0x04, 0x16

MAX_DRAIN = 65_536  # datagrams read from one receive buffer at close; a buffer holds far fewer


def steering_program(n: int) -> bytes:
    """cBPF: select socket ``n + cpu % n`` — one of the successor's ``n`` sockets.

    The receiving CPU stands in for a hash (the kernel's own selftest does the same)
    so the successor's workers share the load during the handover.
    """
    insns = [
        (_LD_W_ABS, 0, 0, (_SKF_AD_OFF + _SKF_AD_CPU) & 0xFFFFFFFF),  # A = cpu
        (_ALU_MOD_K, 0, 0, n),  # A %= n
        (_ALU_ADD_K, 0, 0, n),  # A += n
        (_RET_A, 0, 0, 0),  # select socket A
    ]
    return b"".join(struct.pack("=HBBI", *i) for i in insns)


def steer_away(fileno: int, n: int) -> bool:
    """Attach the steering program to the reuseport group of socket ``fileno``.

    Returns False (logged) where the kernel refuses it; the handover then still
    works, with the small loss window of a plain close.
    """
    code = steering_program(n)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("@HxxxxxxQ", len(code) // 8, ctypes.addressof(buf))  # struct sock_fprog
    sock = _dup(fileno)
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
        return True
    except OSError as exc:
        log.warning("cannot steer new packets to a successor (SO_ATTACH_REUSEPORT_CBPF): %s", exc)
        return False
    finally:
        sock.close()


def unsteer(fileno: int) -> bool:
    """Remove a steering program left on the group by a predecessor (True if one was there).

    The program outlives the process that attached it.  Harmless while the group
    has the same number of sockets, but after an upgrade that changed ``workers``
    it would keep sending everything to some of them; so a process removes it once
    it has bound, and again once its predecessor has had time to finish.
    """
    sock = _dup(fileno)
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
        return True
    except OSError:  # ENOENT: nothing attached
        return False
    finally:
        sock.close()


def read_queued_datagrams(fileno: int, limit: int = MAX_DRAIN) -> list[tuple[bytes, tuple]]:
    """Everything waiting in a UDP socket's receive buffer, without blocking."""
    return _take_queued(fileno, lambda sock: sock.recvfrom(65535), limit)


def accept_queued(fileno: int, limit: int = 4096) -> list[socket.socket]:
    """Connections waiting in a TCP listener's accept queue, accepted without blocking."""
    def take(sock: socket.socket) -> socket.socket:
        conn, _ = sock.accept()
        conn.setblocking(False)
        return conn

    return _take_queued(fileno, take, limit)


def _take_queued(fileno: int, take, limit: int) -> list:
    """Call ``take`` on a non-blocking handle of our socket until the queue is empty.

    At most ``limit`` attempts: a persistent error (EMFILE on accept, say) must not
    spin, and one-off errors (an ICMP error queued for an earlier reply) are skipped.
    """
    sock = _dup(fileno)
    out: list = []
    if sock is None:
        return out
    try:
        sock.setblocking(False)
        for _ in range(limit):
            try:
                out.append(take(sock))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
    finally:
        sock.close()
    return out


def _dup(fileno: int) -> socket.socket | None:
    """A second handle on one of our sockets (closing it leaves the original open)."""
    try:
        return socket.socket(fileno=os.dup(fileno))
    except OSError as exc:
        log.warning("cannot take over socket %d for the handover: %s", fileno, exc)
        return None


class AddressInUse(OSError):
    """A listen address is already bound by another process (not a deliberate handover)."""

    def __str__(self) -> str:  # the message alone: it is the one line ``cannot start:`` prints
        return self.strerror


_KINDS = {"UDP": socket.SOCK_DGRAM, "TCP": socket.SOCK_STREAM}


def refuse_if_bound(addresses) -> None:
    """Raise AddressInUse naming the first (host, port, protocols) someone already holds.

    Every listener joins a SO_REUSEPORT group so that a successor can bind next
    to us, but that also lets an *accidental* second start bind silently and take
    a share of the traffic (and of /metrics scrapes).  So, unless the process was
    started as a successor (``resolver --handover``), each address is first bound
    without SO_REUSEPORT — UDP, then TCP — and released: that fails with
    EADDRINUSE exactly when some socket already holds the port.  Port 0 (pick a
    free one) needs no check.  ``protocols``: ("UDP", "TCP") for DNS, ("TCP",) for metrics.
    """
    for host, port, protocols in addresses:
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for proto in protocols:
            kind = _KINDS[proto]
            probe = socket.socket(family, kind)
            try:
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # as the listener
                if kind == socket.SOCK_STREAM:  # TIME_WAIT leftovers are no owner
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    continue  # (not ours to report: the real bind says what is wrong, naming the address)
                shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                raise AddressInUse(errno.EADDRINUSE, f"{shown} ({proto}) is already in use, by another resolver "
                                   "or another program (to take over from a running resolver, start the new one "
                                   "with --handover)") from None
            finally:
                probe.close()


def readiness_route(ready: Callable[[], bool], pids: tuple[int, ...]):
    """An admin route for ``/readyz`` that says which process answered.

    During a handover both processes listen on the metrics port too (one
    reuseport group), so a plain ``/readyz`` may be answered by the old one.  The
    body names the process (``ready pid=…``), and ``/readyz?pid=N`` answers 200
    only from the process whose pid — or, for a worker, whose supervisor's pid —
    is N, so ``until curl -sf "…/readyz?pid=$NEW"`` waits for the successor
    itself.  ``pids``: this process's, then its supervisor's if it is a worker.
    """
    names = {str(pid) for pid in pids}
    ident = " ".join(f"{k}={v}" for k, v in zip(("pid", "supervisor"), pids))

    def route(method: str, path: str):
        where, _, query = path.partition("?")
        if where != "/readyz" or method not in ("GET", "HEAD"):
            return None
        wanted = parse_qs(query).get("pid")
        if wanted and wanted[-1] not in names:
            return 503, "text/plain", f"not this instance: {ident}\n".encode()
        if ready():
            return 200, "text/plain", f"ready {ident}\n".encode()
        return 503, "text/plain", f"not ready {ident}\n".encode()

    return route
