"""Smaller listener and start-up faults found by trying it (issue 13, item 7).

* a ``[::]`` listener takes IPv4 clients on TCP as on UDP (the TC=1 fallback);
* a second, accidental start on a port in use is refused (exit 1, one line naming the
  address) unless started with ``--handover``; ``/readyz`` names the process;
* a reload that turns ``logging.queries`` on reaches the UDP listener;
* a local CNAME chased to an outside name counts as one query;
* request durations are timed with ``perf_counter``, not the loop's 1 ms clock.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from resolver.config import Address
from tests.support.client import eventually
from tests.support.process import metrics_ports
from tests.support.unbound import free_port

REPO = Path(__file__).resolve().parents[2]


def _have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _have_ipv6(), reason="no IPv6 on this machine")
def test_ipv6_wildcard_listener_is_dual_stack_for_tcp_too(fake_upstream, start_forwarder):
    """An IPv4 client of a ``[::]`` listener whose UDP answer is truncated retries over TCP
    (RFC 7766 §5): TCP must take IPv4 as UDP does (asyncio makes TCP servers IPv6-only)."""
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address], listen=(Address("::", 0),),
                          security={"allow": ("127.0.0.0/8", "::1/128")})
    q = dns.message.make_query("www.test", "A")
    assert dns.query.udp(q, "127.0.0.1", port=fwd.port, timeout=3).answer
    assert dns.query.tcp(q, "127.0.0.1", port=fwd.port, timeout=3).answer


# ----------------------------------------------------------------- second start / handover

def _config(tmp_path: Path, name: str, port: int, mport: int, upstream: str, workers: int = 1) -> Path:
    path = tmp_path / name
    path.write_text(f"listen: ['127.0.0.1:{port}']\nupstreams: ['{upstream}']\n"
                    f"metrics: {{listen: '127.0.0.1:{mport}'}}\nserver: {{shutdown_grace: 0.5}}\n"
                    f"workers: {workers}\n")
    return path


def _start(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "resolver", "--config", str(config), *extra], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _readyz(mport: int, query: str = "") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/readyz{query}", timeout=1) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("workers", [1, 2])
def test_second_start_on_a_port_in_use_is_refused(fake_upstream, tmp_path, workers):
    """Issue 13: three accidental instances shared one port and answered in turn (every
    listener sets SO_REUSEPORT).  Without --handover, the second exits 1 with one line."""
    port = free_port()
    mport = metrics_ports(workers, {port})  # worker i serves metrics on mport + i
    first = _start(_config(tmp_path, "a.yaml", port, mport, fake_upstream.address, workers))
    try:
        assert eventually(lambda: _readyz(mport)[0] == 200, 15), first.stderr.read() if first.poll() else ""
        # Its own metrics ports: the DNS port alone must refuse it.
        other_mport = metrics_ports(workers, {port, *range(mport, mport + workers)})
        second = _start(_config(tmp_path, "b.yaml", port, other_mport, fake_upstream.address, workers))
        try:
            assert second.wait(15) == 1
        finally:
            _stop(second)
        lines = [line for line in second.stderr.read().splitlines() if "cannot start" in line]
        assert len(lines) == 1 and f"127.0.0.1:{port} (UDP) is already in use" in lines[0], lines
        # The same for the metrics port alone (metrics would alternate between the two).
        third = _start(_config(tmp_path, "c.yaml", free_port(), mport, fake_upstream.address, workers))
        # (with workers the check is made once, by the supervisor, for every worker's ports)
        try:
            assert third.wait(15) == 1
        finally:
            _stop(third)
        assert f"127.0.0.1:{mport} (TCP) is already in use" in third.stderr.read()
        assert first.poll() is None  # the running one is untouched
    finally:
        _stop(first)


def test_handover_start_joins_and_readyz_tells_the_instances_apart(fake_upstream, tmp_path):
    """``--handover`` is the deliberate successor: it binds next to the running process, and
    ``/readyz?pid=N`` answers 200 only from process N, so the upgrade waits for it itself."""
    port, mport = free_port(), free_port()
    config = _config(tmp_path, "a.yaml", port, mport, fake_upstream.address)
    old = _start(config)
    new = None
    try:
        assert eventually(lambda: _readyz(mport)[0] == 200, 15)
        status, body = _readyz(mport, f"?pid={old.pid}")
        assert status == 200 and f"pid={old.pid}" in body
        new = _start(config, "--handover")
        # Until the successor answers on the shared port, only the old one does: not it.
        assert eventually(lambda: _readyz(mport, f"?pid={new.pid}") == (200, f"ready pid={new.pid}\n"), 15)
        seen = {_readyz(mport, f"?pid={new.pid}")[0] for _ in range(40)}  # both share the port now
        assert seen <= {200, 503} and 200 in seen
        assert new.poll() is None
    finally:
        _stop(old)
        if new is not None:
            _stop(new)


# ------------------------------------------------------------------------------ reload

def test_reload_turning_the_query_log_on_reaches_udp(fake_upstream, start_forwarder):
    """Issue 13: the UDP listener captured the hit-path method at bind time, so a SIGHUP
    that turned ``logging.queries`` on left cached UDP answers unlogged."""
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address])
    q = dns.message.make_query("www.test", "A")
    assert dns.query.udp(q, "127.0.0.1", port=fwd.port, timeout=3).answer  # cached now
    config = fwd.app.config
    on = dataclasses.replace(config, logging=dataclasses.replace(config.logging, queries=True))

    async def reload(new):
        fwd.app.reload(new)

    fwd.call(reload(on))
    before = fwd.app.stats.cache_hits  # slow-path (logged) cache answers
    assert dns.query.udp(q, "127.0.0.1", port=fwd.port, timeout=3).answer
    assert fwd.app.stats.cache_hits == before + 1
    fwd.call(reload(config))  # and back: hits return to the hit path
    assert dns.query.udp(q, "127.0.0.1", port=fwd.port, timeout=3).answer
    assert fwd.app.stats.cache_hits == before + 1


# ------------------------------------------------------------------------------ metrics

def test_local_cname_chase_counts_one_query(fake_upstream, start_forwarder):
    """A local CNAME to an outside name is one client query: one response, one duration,
    one query by type (the chase answered its target through ``resolve``, counted twice)."""
    fake_upstream.answer("target.test", "A", "192.0.2.9")
    fwd = start_forwarder([fake_upstream.address], local_records=["alias.lan. 60 IN CNAME target.test."])
    stats = fwd.app.stats
    reply = dns.query.udp(dns.message.make_query("alias.lan", "A"), "127.0.0.1", port=fwd.port, timeout=3)
    assert [rr.to_text() for rrset in reply.answer for rr in rrset] == ["target.test.", "192.0.2.9"]
    assert sum(stats.responses_by_source.values()) == 1
    assert sum(stats.responses_by_rcode.values()) == 1
    assert sum(sum(h.counts) for h in stats.durations.values()) == 1
    assert sum(stats.queries_by_type.values()) == 1


def test_request_durations_are_finer_than_the_loop_clock(fake_upstream, start_forwarder):
    """The event loop's clock (uvloop) ticks in whole milliseconds and stands still within
    one loop iteration, so sub-millisecond answers were timed as 0 or 1 ms exactly."""
    fwd = start_forwarder([fake_upstream.address], local_records=["printer.lan. 300 IN A 192.0.2.20"])
    for _ in range(20):  # local answers: slow path, no upstream, well under a millisecond
        dns.query.udp(dns.message.make_query("printer.lan", "A"), "127.0.0.1", port=fwd.port, timeout=3)
    total = fwd.app.stats.durations["local"].sum
    assert sum(fwd.app.stats.durations["local"].counts) == 20
    assert total > 0
    assert abs(total * 1000 - round(total * 1000)) > 1e-6  # not a whole number of milliseconds
