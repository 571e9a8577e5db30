"""The host cache tier with real processes: workers share it, a SIGKILL forgets nothing.

Real forwarder processes (``python -m resolver``), the FakeUpstream, and a stub
resolver's habit of sending every query from a new source port (dnspython opens a
new socket per query), all from one client address (127.0.0.1): the kernel's
SO_REUSEPORT hash then hands each query to either worker.  The upstream is
blackholed (``drop``: no reply at all) once the names are cached and expired, so
every answer must come from a cache, stale (RFC 8767: EDE 3, TTL answer_ttl).

The configs use only keys that existed before the host tier (``cache.persist.path``),
so on the old code the same tests run against the snapshot and fail as the issue
describes (a worker without the name answers SERVFAIL; a SIGKILL loses everything
since the last snapshot).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import dns.rcode
import pytest

from tests.support.client import ask, eventually
from tests.support.client import ede_codes as ede
from tests.support.process import children as _children
from tests.support.process import metric as _metric
from tests.support.process import metrics_ports as _metrics_ports
from tests.support.process import ready, spawn, stop
from tests.support.unbound import free_port

TTL = 2
STALE_TTL = 30  # stale.answer_ttl's default (RFC 8767 §4)
EDE_STALE = 3


def names(n: int) -> list[str]:
    return [f"n{i}.shared.test" for i in range(n)]


def address(i: int) -> str:
    return f"192.0.2.{i % 250 + 1}"


def write_config(tmp_path: Path, port: int, mport: int, upstream: str, workers: int) -> Path:
    # Short upstream timeouts: a blackholed upstream costs each query at most client_timeout.
    text = (f"listen: ['127.0.0.1:{port}']\nupstreams: ['{upstream}']\nworkers: {workers}\n"
            f"metrics: {{listen: '127.0.0.1:{mport}'}}\n"
            f"cache: {{persist: {{path: '{tmp_path / 'cache.lmdb'}'}}}}\n"
            "stale: {client_timeout: 300ms}\n"
            "upstream: {attempt_timeout: 200ms, total_timeout: 1s}\n"
            "server: {shutdown_grace: 1}\n")
    path = tmp_path / "resolver.yaml"
    path.write_text(text)
    return path


def learn(port: int, fake_upstream, count: int) -> list[str]:
    """Cache ``count`` names (TTL 2 s) through the forwarder; returns them."""
    learnt = names(count)
    for i, name in enumerate(learnt):
        fake_upstream.answer(name, "A", address(i), ttl=TTL)
    for i, name in enumerate(learnt):
        reply = ask(port, name)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0][0].address == address(i)
    return learnt


def ask_all(port: int, learnt: list[str], rounds: int) -> list[str]:
    """Ask every name ``rounds`` times, each from a new source port; the failures, described."""
    failures = []
    for _ in range(rounds):
        for i, name in enumerate(learnt):
            try:
                reply = ask(port, name, timeout=3.0)
            except Exception as exc:  # a timeout is a failure to report, not a crash of the test
                failures.append(f"{name}: {type(exc).__name__}")
                continue
            if reply.rcode() != dns.rcode.NOERROR or not reply.answer:
                failures.append(f"{name}: {dns.rcode.to_text(reply.rcode())}")
            elif reply.answer[0][0].address != address(i):
                failures.append(f"{name}: wrong address {reply.answer[0][0].address}")
            elif EDE_STALE not in ede(reply) or reply.answer[0].ttl != STALE_TTL:
                failures.append(f"{name}: not a stale answer (EDE {ede(reply)}, TTL {reply.answer[0].ttl})")
    return failures


def udp_queries(mport: int) -> float:
    return _metric(mport, "resolver_queries_total", transport="udp")


def start_workers(fake_upstream, tmp_path) -> tuple[subprocess.Popen, int, int, Path]:
    port = free_port()
    mport = _metrics_ports(2, {port})
    log = tmp_path / "w.log"
    parent = spawn(write_config(tmp_path, port, mport, fake_upstream.address, workers=2), log)
    assert eventually(lambda: ready(mport) and ready(mport + 1), 20), log.read_text()
    return parent, port, mport, log


@pytest.mark.timeout(180)
def test_two_workers_answer_every_cached_name_stale_during_a_blackhole(fake_upstream, tmp_path):
    """The issue's measurement: 60 names cached, the upstream blackholed, each asked 4 times
    (before: 117 of 240 SERVFAIL, from the worker that had not cached the name)."""
    parent, port, mport, log = start_workers(fake_upstream, tmp_path)
    try:
        learnt = learn(port, fake_upstream, 60)
        time.sleep(TTL + 0.5)  # every entry expired (and written: write_interval 250 ms)
        fake_upstream.mode("drop")
        before = [udp_queries(mport), udp_queries(mport + 1)]
        failures = ask_all(port, learnt, rounds=4)
        spread = [udp_queries(mport) - before[0], udp_queries(mport + 1) - before[1]]
        assert failures == [], f"{len(failures)} of 240 not answered stale: {failures[:10]}"
        assert min(spread) >= 20, f"the kernel did not spread the queries over both workers: {spread}"
    finally:
        assert stop(parent) == 0, log.read_text()
    assert all(call[1] in learnt or call[1] == "." for call in fake_upstream.calls)


@pytest.mark.timeout(180)
def test_a_worker_sigkilled_and_replaced_during_a_blackhole_answers_every_cached_name(fake_upstream, tmp_path):
    """The replacement starts with an empty in-process cache (before: 92 of 120 not served stale)."""
    parent, port, mport, log = start_workers(fake_upstream, tmp_path)
    try:
        learnt = learn(port, fake_upstream, 60)
        time.sleep(TTL + 0.5)
        fake_upstream.mode("drop")
        victim = _children(parent.pid)[1]
        os.kill(victim, signal.SIGKILL)
        assert eventually(lambda: len(_children(parent.pid)) == 2 and victim not in _children(parent.pid), 15)
        assert eventually(lambda: ready(mport) and ready(mport + 1), 15), log.read_text()
        before = [udp_queries(mport), udp_queries(mport + 1)]
        failures = ask_all(port, learnt, rounds=2)
        spread = [udp_queries(mport) - before[0], udp_queries(mport + 1) - before[1]]
        assert failures == [], f"{len(failures)} of 120 not answered stale after a worker was replaced: " \
                               f"{failures[:10]}"
        assert min(spread) >= 10, f"the kernel did not spread the queries over both workers: {spread}"
        hits = _metric(mport, "resolver_cache_tier_lookups_total", tier="host", result="hit") + \
            _metric(mport + 1, "resolver_cache_tier_lookups_total", tier="host", result="hit")
        assert hits >= 10  # (at least) the replacement read them from the host tier
    finally:
        assert stop(parent) == 0, log.read_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_sigkill_during_an_outage_then_restart_serves_everything_learnt_before(fake_upstream, tmp_path, workers):
    """Names learnt more than 1 s before a SIGKILL are on disk (before: 50 of 50 SERVFAIL on restart)."""
    port = free_port()
    mport = _metrics_ports(workers, {port})
    config = write_config(tmp_path, port, mport, fake_upstream.address, workers=workers)
    first = spawn(config, tmp_path / "first.log")
    try:
        assert eventually(lambda: all(ready(mport + i) for i in range(workers)), 20), \
            (tmp_path / "first.log").read_text()
        learnt = learn(port, fake_upstream, 50)
        time.sleep(1.1)  # "learnt more than 1 s before the kill"
        fake_upstream.mode("drop")  # the outage starts ...
        # ... and the whole process group dies at once (an OOM kill, a node's runtime killing the pod).
        for pid in [first.pid, *_children(first.pid)]:
            os.kill(pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    for pid in _children(first.pid):  # (none left: SIGKILLed above)
        os.kill(pid, signal.SIGKILL)
    time.sleep(max(0.0, TTL + 0.3 - 1.1))  # expired by now: the answers must be stale
    second = spawn(config, tmp_path / "second.log")
    try:
        assert eventually(lambda: all(ready(mport + i) for i in range(workers)), 20), \
            (tmp_path / "second.log").read_text()
        failures = ask_all(port, learnt, rounds=1)
        assert failures == [], f"{len(failures)} of 50 not served stale after the restart: {failures[:10]}"
    finally:
        assert stop(second) == 0, (tmp_path / "second.log").read_text()
