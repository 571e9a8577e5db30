"""The batched native UDP hit loop over real sockets (serve/batch.py, serve/_hitloop.c).

The forwarder runs in-process (FakeClock) with ``server.udp_accelerator`` at its
default (auto: native where built); clients are dnspython, dig and raw sockets on
127.0.0.1.  What the hit path promised before must hold: the client's ID and
question bytes, TTL aging, EDNS size and TC, DO/CD apart, the ACL, hit metrics,
reload (query log, EDNS size), rate limiting, and bursts larger than one batch.
Handover (steering, draining) is tests/integration/test_handover.py, which runs
with the native loop by default too.  ``off`` (and the RESOLVER_UDP_ACCELERATOR
override) give the Python loop, checked here and by a subset of the suite run that way.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from resolver.serve import batch
from tests.support.client import dig, eventually

REPO = Path(__file__).resolve().parents[2]
# Skipped where the extension is not built, or the suite runs with RESOLVER_UDP_ACCELERATOR=off.
_NOT_NATIVE = batch.choose("auto")[1]
native_only = pytest.mark.skipif(_NOT_NATIVE is not None, reason=f"native hit loop: {_NOT_NATIVE}")


def _query(name: str, rtype: str = "A", **kw) -> dns.message.Message:
    return dns.message.make_query(name, rtype, **kw)


def _udp(fwd, q: dns.message.Message) -> dns.message.Message:
    return dns.query.udp(q, "127.0.0.1", port=fwd.port, timeout=3)


@native_only
def test_native_loop_is_used_by_default_and_answers_hits(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=300)
    fwd = start_forwarder([fake_upstream.address])
    assert fwd.app.listeners.hit_loop == "native"
    assert fwd.metric("resolver_udp_hit_loop_info", impl="native") == 1
    assert _udp(fwd, _query("www.test")).answer  # the miss: Python's path, then cached
    calls = len(fake_upstream.calls)
    hits_before = fwd.app.stats.tally.fresh_hits()
    q = _query("WwW.TeSt", use_edns=0)
    q.id = 0xBEEF
    wire_q = q.to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(wire_q, ("127.0.0.1", fwd.port))
        reply = s.recv(65535)
    assert reply[:2] == b"\xbe\xef"
    assert reply[12:12 + len(wire_q) - 12 - 11] == wire_q[12:-11]  # question bytes, 0x20 case kept
    msg = dns.message.from_wire(reply)
    # (the harness clock may flow in real time: a second of slack, as the other harness tests take)
    assert msg.answer[0].ttl in (299, 300) and msg.edns == 0
    assert len(fake_upstream.calls) == calls
    assert fwd.app.stats.tally.fresh_hits() == hits_before + 1  # the per-entry metrics cell
    fwd.advance(100.5)
    assert _udp(fwd, _query("www.test")).answer[0].ttl in (198, 199)  # aged (renewed by Python, once a second)
    assert _udp(fwd, _query("www.test")).answer[0].ttl in (198, 199)  # ... then answered natively
    assert fwd.app.stats.queries_udp >= 4
    assert "192.0.2.1" in dig(fwd.port, "www.test", "A", "+short")


def test_off_uses_the_python_loop(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address], server={"udp_accelerator": "off"})
    assert fwd.app.listeners.hit_loop == "python"
    assert fwd.metric("resolver_udp_hit_loop_info", impl="python") == 1
    assert _udp(fwd, _query("www.test")).answer
    assert _udp(fwd, _query("www.test")).answer


@native_only
def test_do_cd_and_edns_size_and_tc(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    for i in range(40):  # a reply over 512 bytes: TC=1 without EDNS, whole with it
        fake_upstream.answer("big.test", "TXT", f'"{"x" * 40} {i}"')
    fwd = start_forwarder([fake_upstream.address])
    for kw in ({}, {"use_edns": 0}, {"use_edns": 0, "want_dnssec": True}):
        for cd in (False, True):
            q = _query("www.test", **kw)
            if cd:
                q.flags |= dns.flags.CD
            first, second = _udp(fwd, q), _udp(fwd, q)
            assert first.answer == second.answer and first.flags == second.flags  # miss path, then hit
            assert second.ednsflags & dns.flags.DO == (dns.flags.DO if kw.get("want_dnssec") else 0)
    assert _udp(fwd, _query("big.test", "TXT", use_edns=0, payload=4096)).answer
    small = _udp(fwd, _query("big.test", "TXT", use_edns=False))
    assert small.flags & dns.flags.TC and not small.answer
    whole = _udp(fwd, _query("big.test", "TXT", use_edns=0, payload=4096))
    assert not whole.flags & dns.flags.TC and whole.edns == 0 and whole.payload == fwd.app.config.upstream.edns_buffer_size


@native_only
def test_a_burst_larger_than_a_batch_is_answered_in_full(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address])
    assert _udp(fwd, _query("www.test")).answer
    n = 150  # > 2 batches from ONE client address, queued before any is read (within a default rmem)
    ids = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        s.settimeout(3)
        for wave in range(4):
            for i in range(wave * n, wave * n + n):
                q = _query("www.test" if i % 10 else f"miss{i}.test")
                q.id = i
                s.sendto(q.to_wire(), ("127.0.0.1", fwd.port))
            while len(ids) < wave * n + n:
                ids.add(dns.message.from_wire(s.recv(65535)).id)
    n *= 4
    assert ids == set(range(n))


@native_only
def test_acl_refuses_through_the_python_path(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address], security={"allow": ("10.0.0.0/8",)})
    for _ in range(3):
        assert _udp(fwd, _query("www.test")).rcode() == dns.rcode.REFUSED
    assert fwd.app.stats.acl_refused_udp == 3
    assert not fake_upstream.calls


@native_only
def test_reload_query_log_and_edns_size_reach_the_native_loop(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address])
    assert _udp(fwd, _query("www.test")).answer
    config = fwd.app.config
    logged = dataclasses.replace(config, logging=dataclasses.replace(config.logging, queries=True),
                                 upstream=dataclasses.replace(config.upstream, edns_buffer_size=1400))

    async def reload(new):
        fwd.app.reload(new)

    fwd.call(reload(logged))
    hits, slow = fwd.app.stats.tally.fresh_hits(), fwd.app.stats.cache_hits
    assert _udp(fwd, _query("www.test", use_edns=0)).payload == 1400
    assert fwd.app.stats.tally.fresh_hits() == hits  # the native loop answered nothing ...
    assert fwd.app.stats.cache_hits == slow + 1  # ... the logged slow path did
    fwd.call(reload(dataclasses.replace(logged, logging=config.logging)))
    assert _udp(fwd, _query("www.test", use_edns=0)).payload == 1400
    assert eventually(lambda: fwd.app.stats.tally.fresh_hits() == hits + 1)


def test_the_native_loop_serves_the_reloaded_hit_path_from_the_next_datagram(fake_upstream, start_forwarder):
    """The native loop reads the hit path when attached and on Listeners.reconfigure, not
    per wake-up: after a reload the very next hits carry the new EDNS size, and with the
    query log switched on every hit goes to the logged slow path.  (A reload clears the
    ACL memo, so one query first admits the address again: the ones after it are native.)"""
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address])
    assert _udp(fwd, _query("www.test")).answer
    config = fwd.app.config

    async def reload(new):
        fwd.app.reload(new)

    bigger = dataclasses.replace(config, upstream=dataclasses.replace(config.upstream, edns_buffer_size=1400))
    fwd.call(reload(bigger))
    _udp(fwd, _query("www.test", use_edns=0))
    assert [_udp(fwd, _query("www.test", use_edns=0)).payload for _ in range(3)] == [1400] * 3
    fwd.call(reload(dataclasses.replace(bigger, logging=dataclasses.replace(config.logging, queries=True))))
    _udp(fwd, _query("www.test"))
    fresh, slow = fwd.app.stats.tally.fresh_hits(), fwd.app.stats.cache_hits
    for _ in range(3):
        assert _udp(fwd, _query("www.test")).answer
    assert (fwd.app.stats.tally.fresh_hits(), fwd.app.stats.cache_hits) == (fresh, slow + 3)


def test_accelerator_cannot_change_on_reload(fake_upstream, start_forwarder):
    fwd = start_forwarder([fake_upstream.address])
    config = fwd.app.config
    off = dataclasses.replace(config, server=dataclasses.replace(config.server, udp_accelerator="off"))
    from resolver.errors import ConfigError

    async def reload(new):
        fwd.app.reload(new)

    with pytest.raises(ConfigError, match="server.udp_accelerator"):
        fwd.call(reload(off))


@native_only
def test_rate_limiting_still_applies(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address], security={"rate_limit": 5, "rate_limit_slip": 0})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.5)
        for i in range(50):
            s.sendto(_query("www.test").to_wire(), ("127.0.0.1", fwd.port))
        got = 0
        try:
            while True:
                s.recv(65535)
                got += 1
        except TimeoutError:
            pass
    assert 1 <= got < 50
    assert fwd.app.stats.rate_limited_dropped + fwd.app.stats.rate_limited_slipped > 0


def test_env_override_forces_python_and_on_without_the_extension_is_a_config_error(tmp_path):
    cfg = tmp_path / "r.yaml"
    cfg.write_text("upstreams: ['127.0.0.1:9']\nserver:\n  udp_accelerator: on\n")
    env = dict(os.environ, RESOLVER_UDP_ACCELERATOR="off")
    out = subprocess.run([sys.executable, "-c",
                          "from resolver.serve import batch; print(batch.choose('auto'), batch.choose('on'))"],
                         env=env, capture_output=True, text=True, cwd=REPO, timeout=30)
    assert out.stdout.split("(")[1].startswith("'python'"), out.stdout + out.stderr
    # without the extension (import blocked), "on" is refused at start with one line naming the key, exit 2
    block = ("import sys, importlib.abc\n"
             "class Block(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path, target=None):\n"
             "        if name == 'resolver.serve._hitloop': raise ImportError('blocked for the test')\n"
             "sys.meta_path.insert(0, Block())\n"
             "from resolver.cli import main\n"
             f"sys.exit(main(['--config', {str(cfg)!r}, '--check-config']))\n")
    env.pop("RESOLVER_UDP_ACCELERATOR")  # (the override would win over "on")
    out = subprocess.run([sys.executable, "-c", block], env=env, capture_output=True, text=True, cwd=REPO,
                         timeout=30)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and "server.udp_accelerator" in out.stderr


@pytest.mark.slow
def test_a_subset_of_the_suite_passes_on_the_python_loop():
    """RESOLVER_UDP_ACCELERATOR=off: the listener, handover and reload tests on uvloop's callback."""
    env = dict(os.environ, RESOLVER_UDP_ACCELERATOR="off")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          "tests/integration/test_listen.py", "tests/integration/test_handover.py",
                          "tests/integration/test_reload.py", "tests/unit/test_fast_path.py",
                          "tests/integration/test_hitloop.py::test_off_uses_the_python_loop",
                          # (the restart under load runs in the main suite, on whichever loop is the
                          # default; twice in one suite it doubled the chance that a port picked free
                          # is joined by another program's SO_REUSEPORT socket on a shared machine)
                          "-k", "not restart_under_load"],
                         env=env, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout


def _counters(fwd) -> dict:
    from prometheus_client.parser import text_string_to_metric_families
    _, text = fwd.http("/metrics")
    out = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "gauge") or re.search(r"seconds|timestamp|bytes|hit_loop|rtt|worker|"
                                                                 r"process_|python_", family.name):
            continue
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


@native_only
def test_same_queries_same_metrics_native_and_python(fake_upstream, start_forwarder):
    """One workload against a native and a Python forwarder: every counter and gauge the same
    (hits by type and rcode, queries, responses by source, refusals, formerr, cache entries)."""
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=300)
    fake_upstream.answer("www.test", "AAAA", "2001:db8::1", ttl=300)
    fake_upstream.nxdomain("nx.test")
    forwarders = [start_forwarder([fake_upstream.address], server={"udp_accelerator": mode}) for mode in ("on", "off")]
    assert [f.app.listeners.hit_loop for f in forwarders] == ["native", "python"]
    workload = [_query("www.test"), _query("WWW.test", use_edns=0), _query("www.test", "AAAA", use_edns=0,
                                                                         want_dnssec=True),
                _query("nx.test"), _query("Nx.Test", use_edns=0), _query("www.test", rdclass="CH")]
    for fwd in forwarders:
        for step in range(3):
            for q in workload:
                for _ in range(3):
                    dns.query.udp(q, "127.0.0.1", port=fwd.port, timeout=3)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # garbage: FORMERR or dropped
                s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www", ("127.0.0.1", fwd.port))
            fwd.advance(1.5)  # aged copies renewed by Python, then answered natively again
    native, python = (_counters(f) for f in forwarders)
    assert native.keys() == python.keys()
    assert {k: v for k, v in native.items() if python[k] != v} == {}
    assert native["resolver_cache_hits_total", ()] >= 30  # the workload did exercise the hit path


@native_only
def test_replies_the_native_loop_could_not_send_are_counted(fake_upstream, start_forwarder):
    """The batched transport's own drops (the kernel refused a send; the send buffer stayed
    full past the backlog) are on /metrics, summed over the UDP listeners."""
    fwd = start_forwarder([fake_upstream.address])
    [transport] = fwd.app.listeners.udp_transports
    transport.send_errors, transport.backlog_dropped = 2, 3  # as the loop counts them
    assert fwd.metric("resolver_udp_replies_unsent_total", reason="send_error") == 2
    assert fwd.metric("resolver_udp_replies_unsent_total", reason="backlog_full") == 3
