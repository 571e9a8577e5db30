"""The command as a user runs it: a real process, real signals, real exit codes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.process import resolv_conf, start, wait_for_dns, write_config
from tests.support.unbound import free_port

REPO = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resolver", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_version():
    out = run("--version")
    assert out.returncode == 0
    assert out.stdout.startswith("resolver ")


def test_example_config_checks_ok(tmp_path):
    rc = resolv_conf(tmp_path, "127.0.0.1")
    out = run("--config", str(REPO / "config" / "resolver.yaml"), "--resolv-conf", str(rc), "--check-config")
    assert out.returncode == 0, out.stderr
    assert "configuration ok" in out.stdout


@pytest.mark.parametrize("text, key", [
    ("cache:\n  max_entrys: 5\n", "cache.max_entrys"),
    ("cache:\n  max_entries: lots\n", "cache.max_entries"),
    ("stale:\n  client_timeout: soon\n", "stale.client_timeout"),
    ("listen: ['127.0.0.1:99999']\n", "listen[0]"),
    ("upstreams: ['ftp://192.0.2.1']\n", "upstreams[0]"),
    ("listen: [\n", "resolver.yaml"),
    ("workers: many\n", "workers"),
    ("cache: {persist: {interval: 0}}\n", "cache.persist.interval"),
    ("fleet: {url: 'redis://127.0.0.1:6379/0'}\n", "fleet.secret_file"),
    ("fleet: {url: 'redis://127.0.0.1:6379/0', secret_file: /nonexistent/fleet.key}\n", "fleet.secret_file"),
    ("fleet: {url: 'memcached://127.0.0.1'}\n", "fleet.url"),
])
def test_bad_config_one_line_exit_2(tmp_path, text, key):
    """A bad config: exit code 2, one line on stderr naming the key, no traceback."""
    path = write_config(tmp_path, text)
    rc = resolv_conf(tmp_path, "127.0.0.1")
    out = run("--config", str(path), "--resolv-conf", str(rc))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert key in lines[0]
    assert "Traceback" not in out.stderr


def test_missing_config_file_exit_2(tmp_path):
    out = run("--config", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1


def test_runs_serves_and_stops_cleanly_on_sigterm(tmp_path, fake_upstream):
    """Start from a config file, answer through the upstream, serve /metrics, exit 0 on SIGTERM
    after finishing an in-flight query."""
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fake_upstream.answer("slow.test", "A", "192.0.2.9")
    fake_upstream.delay(0.8, name="slow.test")
    port, mport = free_port(), free_port()
    path = write_config(tmp_path, f"""
listen: ["127.0.0.1:{port}"]
upstreams: ["{fake_upstream.address}"]
metrics: {{listen: "127.0.0.1:{mport}"}}
""")
    proc = start("--config", str(path))
    try:
        wait_for_dns(port)
        msg = dns.query.udp(dns.message.make_query("www.test", "A"), "127.0.0.1", port=port, timeout=3)
        assert [rr.to_text() for rr in msg.answer[0]] == ["192.0.2.1"]
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=3) as r:
            body = r.read().decode()
        assert "resolver_queries_total" in body and "resolver_cache_hits_total" in body
        for path_ in ("/healthz", "/readyz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}{path_}", timeout=3) as r:
                assert r.status == 200

        # An in-flight query is finished during shutdown.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            q = dns.message.make_query("slow.test", "A")
            s.sendto(q.to_wire(), ("127.0.0.1", port))
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            reply = dns.message.from_wire(s.recv(4096))
        assert [rr.to_text() for rr in reply.answer[0]] == ["192.0.2.9"]
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr


def test_defaults_take_upstreams_from_resolv_conf(tmp_path, fake_upstream):
    """No config: upstreams come from --resolv-conf; never from the forwarder's own address."""
    # resolv.conf gives addresses only (port 53); point it at a loopback address with
    # nothing on port 53 plus the forwarder's own would-be address.  The forwarder must
    # start, skip itself, and answer SERVFAIL (upstream unreachable) — never loop.
    rc = resolv_conf(tmp_path, "127.0.0.1")
    port = free_port()
    mport = free_port()
    path = write_config(tmp_path, f'listen: ["127.0.0.1:{port}"]\nmetrics: {{listen: "127.0.0.1:{mport}"}}\n')
    proc = start("--config", str(path), "--resolv-conf", str(rc))
    try:
        wait_for_dns(port)
        msg = dns.query.udp(dns.message.make_query("www.test", "A"), "127.0.0.1", port=port, timeout=5)
        assert msg.rcode() == dns.rcode.SERVFAIL
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0


def test_resolv_conf_pointing_only_at_itself_is_refused(tmp_path):
    rc = resolv_conf(tmp_path, "127.0.0.1")
    path = write_config(tmp_path, 'listen: ["127.0.0.1:53"]\n')
    out = run("--config", str(path), "--resolv-conf", str(rc), "--check-config")
    assert out.returncode == 2
    assert "upstreams" in out.stderr


def test_address_in_use_exits_1_with_a_message(tmp_path, fake_upstream):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        path = write_config(tmp_path, f'listen: ["127.0.0.1:{port}"]\nupstreams: ["{fake_upstream.address}"]\n'
                                      f'metrics: {{enabled: false}}\n')
        out = run("--config", str(path))
    assert out.returncode == 1
    assert "cannot start" in out.stderr and "Traceback" not in out.stderr


def test_container_default_config_is_valid_with_an_allow_list(tmp_path):
    """The config the Dockerfile installs must load, and must restrict its clients."""
    from resolver.config import load_config

    rc = resolv_conf(tmp_path, "192.0.2.53")
    config = load_config(str(REPO / "config" / "container.yaml"), resolv_conf=str(rc))
    assert [str(a) for a in config.listen] == ["127.0.0.1:53"]
    assert "0.0.0.0/0" not in config.security.allow
    assert [u.label for u in config.upstreams] == ["udp://192.0.2.53:53"]
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY config/container.yaml /etc/resolver/resolver.yaml" in dockerfile
    assert "USER 10053:10053" in dockerfile  # numeric: Kubernetes runAsNonRoot can verify it
