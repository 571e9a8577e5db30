"""Restarts and worker deaths that no client notices, measured under a continuous load.

Real processes on one fixed loopback port, a real Unbound upstream, and a bounded
UDP + TCP client load (tests/support/load.py) running the whole time:

* zero-gap upgrade: a second process starts on the same ports (SO_REUSEPORT),
  loads the snapshot and binds while the first still serves; the first gets
  SIGTERM, steers new packets to its successor, answers what is queued, drains and
  exits;
* ``workers: 2``: one worker is SIGKILLed; the parent starts a new one.

Each must end with zero failed queries (a failed query = no answer after the
stub-resolver retries); lost first tries are reported.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.client import ask, eventually
from tests.support.load import Load
from tests.support.process import children, metric, metrics_ports, ready, spawn, stop
from tests.support.unbound import free_port

REPO = Path(__file__).resolve().parents[2]
NAMES = [("www.test", "A"), ("v6.test", "AAAA"), ("alias.test", "A"), ("big.test", "TXT")]


def config(tmp_path: Path, name: str, port: int, mport: int, upstream: str, **extra: str) -> Path:
    text = (f"listen: ['127.0.0.1:{port}']\nupstreams: ['{upstream}']\n"
            f"metrics: {{listen: '127.0.0.1:{mport}'}}\n"
            f"cache: {{persist: {{path: '{tmp_path / 'cache.snap'}', engine: snapshot, interval: 1}}}}\n"
            f"server: {{shutdown_grace: 2}}\n")
    text += "".join(f"{k}: {v}\n" for k, v in extra.items())
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_zero_gap_restart_under_load(unbound, tmp_path, workers):
    port = free_port()
    m_old = metrics_ports(workers, {port})
    m_new = metrics_ports(workers, {port, *range(m_old, m_old + workers)})
    extra = {"workers": str(workers)}
    old = spawn(config(tmp_path, "old.yaml", port, m_old, unbound.address, **extra), tmp_path / "old.log")
    new = None
    try:
        assert eventually(lambda: all(ready(m_old + i) for i in range(workers)), 15)
        for name, rtype in NAMES[:3]:
            ask(port, name, rtype)
        load = Load(port, NAMES, max_queries=40_000, max_seconds=40, timeout=2.0).start()
        time.sleep(1.0)
        # The upgrade: the successor starts (deliberately: --handover) and binds while the old
        # process serves; readiness is asked of the successor itself (its pid).
        new = spawn(config(tmp_path, "new.yaml", port, m_new, unbound.address, **extra), tmp_path / "new.log",
                    "--handover")
        assert eventually(lambda: all(ready(m_new + i, new.pid) for i in range(workers)), 15)
        assert metric(m_new, "resolver_cache_snapshot_loaded_entries") >= 3
        time.sleep(1.0)
        assert stop(old) == 0  # SIGTERM: steer away, answer what is queued, drain, snapshot, exit
        time.sleep(1.5)
        load.stop()
        served_by_new = sum(metric(m_new + i, "resolver_queries_total", transport="udp") for i in range(workers))
    finally:
        stop(old)
        if new is not None:
            stop(new)
    print(f"restart under load (workers {workers}):", load.summary())
    print(f"successor answered {served_by_new:.0f} UDP queries")
    assert load.total(load.sent) >= 200 and min(load.ok.values()) > 0, load.summary()
    assert load.total(load.failed) == 0, load.summary()
    if workers == 1:
        assert load.total(load.retried) == 0, load.summary()  # not even a lost first try
    else:
        # With several workers the kernel reshuffles the reuseport group's slots as the
        # old workers' sockets close, so a datagram now and then lands on a closing one:
        # its client retries (stub resolvers do) and still gets its answer, as asserted
        # above.  Bounded, so a real regression (steering broken) still fails.
        assert load.total(load.retried) <= 5, load.summary()
    assert served_by_new > 0
    assert "stopped" in (tmp_path / "old.log").read_text()


@pytest.mark.slow
def test_killed_worker_is_restarted_under_load(unbound, tmp_path):
    port = free_port()
    mport = metrics_ports(2, {port})  # worker 1 serves metrics on mport + 1
    parent = spawn(config(tmp_path, "w.yaml", port, mport, unbound.address, workers="2"), tmp_path / "w.log")
    try:
        assert eventually(lambda: ready(mport) and ready(mport + 1), 20), (tmp_path / "w.log").read_text()
        assert eventually(lambda: len(children(parent.pid)) == 2, 5)
        for name, rtype in NAMES[:3]:
            ask(port, name, rtype)
        load = Load(port, NAMES, max_queries=40_000, max_seconds=40, timeout=2.0).start()
        time.sleep(1.0)
        victim = children(parent.pid)[1]
        os.kill(victim, signal.SIGKILL)
        assert eventually(lambda: len(children(parent.pid)) == 2 and victim not in children(parent.pid), 15), \
            (tmp_path / "w.log").read_text()
        assert eventually(lambda: ready(mport) and ready(mport + 1), 15)
        time.sleep(1.5)
        load.stop()
        restarts = max(metric(mport, "resolver_worker_restarts_total"),
                       metric(mport + 1, "resolver_worker_restarts_total"))
    finally:
        assert stop(parent) == 0
    print("worker killed under load:", load.summary())
    assert load.total(load.sent) >= 200 and min(load.ok.values()) > 0, load.summary()
    assert load.total(load.failed) == 0, load.summary()
    assert restarts == 1
    log = (tmp_path / "w.log").read_text()
    assert "killed by SIGKILL" in log


# ------------------------------------------------------------------------------------
# The three mechanisms one by one, in-process and deterministic (each fails without its part).

def _query(name: str = "www.test") -> bytes:
    import dns.message
    return dns.message.make_query(name, "A").to_wire()


def _block_loop_then_stop(fwd, seconds: float, before_stop=None) -> None:
    """Block the forwarder's loop (so packets queue in the kernel), then stop it from the loop."""
    import asyncio
    import threading

    blocked = threading.Event()

    def block():
        blocked.set()
        time.sleep(seconds)
        fwd.app.listeners.close()  # as SIGTERM would, with the queues full
        asyncio.ensure_future(fwd.app.stop(1.0))

    fwd.loop.call_soon_threadsafe(block)
    blocked.wait(5)


def test_queued_datagrams_are_answered_at_close(unbound, start_forwarder):
    """Datagrams in the receive buffer when the socket closes would be discarded by the kernel."""
    import socket

    fwd = start_forwarder([unbound.address])
    ask(fwd.port, "www.test")
    port = fwd.port
    _block_loop_then_stop(fwd, 0.5)
    clients = []
    for _ in range(20):  # sent while the loop is blocked: they wait in the socket's buffer
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(5)
        c.sendto(_query(), ("127.0.0.1", port))
        clients.append(c)
    answered = 0
    for c in clients:
        try:
            c.recvfrom(65535)
            answered += 1
        except OSError:
            pass
        c.close()
    assert answered == 20
    assert fwd.app.listeners.drained_datagrams == 20


def test_queued_tcp_connections_are_served_at_close(unbound, start_forwarder):
    """Connections in the accept queue when a listener closes would be reset by the kernel."""
    import socket
    import struct

    fwd = start_forwarder([unbound.address])
    ask(fwd.port, "www.test")
    port = fwd.port
    _block_loop_then_stop(fwd, 0.5)
    clients = []
    for _ in range(5):  # handshakes complete in the kernel; the loop has not accepted them
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        q = _query()
        c.sendall(struct.pack(">H", len(q)) + q)
        clients.append(c)
    answered = 0
    for c in clients:
        try:
            size = struct.unpack(">H", c.recv(2))[0]
            if size and c.recv(size):
                answered += 1
        except OSError:
            pass
        c.close()
    assert answered == 5
    assert fwd.app.listeners.drained_connections == 5


def test_stopping_process_steers_new_packets_to_its_successor(unbound, start_forwarder):
    """Both bound to one port; once the old one starts stopping, every new query goes to the new one."""
    import socket

    from resolver.config import Address

    port = free_port()
    old = start_forwarder([unbound.address], listen=(Address("127.0.0.1", port),))
    new = start_forwarder([unbound.address], listen=(Address("127.0.0.1", port),), join=True)
    old.call(_close_listeners(old.app))  # what SIGTERM does first
    before = old.app.stats.queries_udp
    for _ in range(50):  # fresh sockets: fresh source ports, spread by the kernel's hash
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(5)
        c.sendto(_query(), ("127.0.0.1", port))
        c.recvfrom(65535)
        c.close()
    assert old.app.stats.queries_udp == before
    assert new.app.stats.queries_udp >= 50


async def _close_listeners(app) -> None:
    app.listeners.close()


def test_successor_removes_the_steering_program(unbound, start_forwarder):
    """Left attached, the program would skew the load once the number of workers changes."""
    import socket

    from resolver.config import Address

    port = free_port()
    old = start_forwarder([unbound.address], listen=(Address("127.0.0.1", port),))
    new = start_forwarder([unbound.address], listen=(Address("127.0.0.1", port),), join=True)
    old.call(_close_listeners(old.app))
    new.loop.call_soon_threadsafe(new.app.listeners.unsteer)
    time.sleep(0.2)
    before = old.app.stats.queries_udp
    for _ in range(60):  # hashed over both sockets again (the old one is still open, draining)
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.sendto(_query(), ("127.0.0.1", port))
        c.close()
    assert eventually(lambda: old.app.stats.queries_udp > before)


def test_read_queued_datagrams_empties_the_buffer_and_leaves_the_socket_open():
    import socket

    from resolver.serve import handover

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(3):
        client.sendto(b"q%d" % i, server.getsockname())
    time.sleep(0.1)
    got = handover.read_queued_datagrams(server.fileno())
    assert [d for d, _ in got] == [b"q0", b"q1", b"q2"]
    assert handover.read_queued_datagrams(server.fileno()) == []
    client.sendto(b"again", server.getsockname())  # our handle was a dup: the socket still works
    server.settimeout(2)
    assert server.recvfrom(100)[0] == b"again"
    server.close()
    client.close()


def test_tcp_miss_while_draining_closes_the_connection_at_once(fake_upstream, start_forwarder):
    """A query that would need new upstream work after SIGTERM: the connection is closed at
    once, so the client retries elsewhere instead of waiting out the grace period."""
    import socket
    import struct

    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address])
    ask(fwd.port, "www.test")
    c = socket.create_connection(("127.0.0.1", fwd.port), timeout=5)
    q = _query("www.test")
    c.sendall(struct.pack(">H", len(q)) + q)
    assert len(c.recv(2)) == 2  # connected and served
    c.recv(65535)
    fwd.call(_close_listeners(fwd.app))
    q = _query("other.test")  # not cached: would need an upstream fetch
    c.sendall(struct.pack(">H", len(q)) + q)
    assert c.recv(2) == b""  # closed at once, not left hanging until the idle timeout
    c.close()
