"""The forwarder as the host's resolver, with real clients: glibc's stub resolver.

Each client runs in a private mount namespace (``unshare -m``) in which /etc/resolv.conf,
/etc/nsswitch.conf and /etc/hosts are bind-mounted from files of the test's own, so
``getent ahosts`` and Python's ``socket.getaddrinfo`` resolve through the forwarder on port 53
of a loopback address, as they would on a host whose resolv.conf says ``nameserver 127.0.0.1``
(the address is picked at random in 127.0.0.0/8, see CANDIDATES).
The host's own files are never touched.  The forwarder runs with deploy/systemd/resolver.yaml
(the host config) with only its upstream and metrics port changed, and forwards to a
fault-injecting upstream on 127.0.0.1.

Then the upstream stops answering: names already cached keep resolving (stale, RFC 8767) for
the same real clients, and a name never seen fails as a *temporary* failure (SERVFAIL →
EAI_AGAIN), never as "does not exist".
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.unbound import free_port

REPO = Path(__file__).resolve().parents[2]
HOST_CONFIG = REPO / "deploy" / "systemd" / "resolver.yaml"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
# glibc always asks port 53, of any address; every address of 127.0.0.0/8 is local on Linux
# without set-up.  A random one rather than 127.0.0.1: the forwarder binds with SO_REUSEPORT, so
# a second forwarder on the same address and port (another test run on this machine at the same
# time) would silently share the port instead of failing.  127.0.0.53/54 (systemd-resolved)
# are never picked.
RNG = random.Random()
CANDIDATES = tuple(f"127.{RNG.randrange(1, 255)}.{RNG.randrange(0, 256)}.{RNG.randrange(2, 255)}"
                   for _ in range(8))
TTL = 1  # seconds: the answers expire during the test


def port_53_free(host: str) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, 53))
            except OSError:
                return False
    return True


def namespace_or_skip(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a private mount namespace (unshare -m) and bind-mount "
                    "a resolv.conf over /etc/resolv.conf")
    for tool in ("unshare", "mount", "getent"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (util-linux / libc-bin; `make test` installs them)")
    probe = tmp_path / "probe"
    probe.write_text("probe\n")
    out = subprocess.run(["unshare", "-m", "--", "sh", "-c",
                          f"mount --bind {probe} /etc/resolv.conf && cat /etc/resolv.conf"],
                         capture_output=True, text=True, timeout=20)
    if out.returncode != 0 or out.stdout != "probe\n":
        pytest.skip(f"cannot make a private mount namespace here: {out.stderr.strip()}")


class Client:
    """Runs commands inside a private mount namespace whose resolver files are ours."""

    def __init__(self, tmp_path: Path, nameserver: str):
        files = tmp_path / "etc"
        files.mkdir()
        # timeout:3 attempts:1: one try, so a forwarder that is slow or silent fails the test.
        (files / "resolv.conf").write_text(f"nameserver {nameserver}\noptions timeout:3 attempts:1\n")
        (files / "nsswitch.conf").write_text("hosts: files dns\n")
        (files / "hosts").write_text("127.0.0.1 localhost\n::1 localhost\n")
        binds = [f"mount --bind {files / name} /etc/{name}" for name in ("resolv.conf", "nsswitch.conf", "hosts")]
        if Path("/var/run/nscd/socket").exists():  # a running nscd would answer instead of DNS
            binds.append("mount -t tmpfs none /var/run/nscd")
        self.prefix = ["unshare", "-m", "--", "sh", "-c", " && ".join(binds) + ' && exec "$@"', "sh"]

    def run(self, *argv: str, timeout: float = 15) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, *argv], capture_output=True, text=True,
                              timeout=timeout, env=ENV)

    def getent(self, name: str) -> tuple[int, set[str]]:
        out = self.run("getent", "ahosts", name)
        return out.returncode, {line.split()[0] for line in out.stdout.splitlines() if line.strip()}

    def getaddrinfo(self, name: str) -> dict:
        code = ("import json, socket, sys\n"
                "try:\n"
                f"    infos = socket.getaddrinfo({name!r}, 80, type=socket.SOCK_STREAM)\n"
                "    print(json.dumps({'addresses': sorted({i[4][0] for i in infos})}))\n"
                "except socket.gaierror as e:\n"
                "    print(json.dumps({'error': e.errno, 'text': e.strerror}))\n")
        out = self.run(sys.executable, "-c", code)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


def start_forwarder(tmp_path: Path, listen_host: str, upstream: str) -> tuple[subprocess.Popen, int]:
    data = yaml.safe_load(HOST_CONFIG.read_text())
    mport = free_port()
    data["listen"] = [f"{listen_host}:53"]
    data["upstreams"] = [upstream]
    data["metrics"]["listen"] = f"127.0.0.1:{mport}"
    # Outage handling without long waits: a silent upstream is given up on within a second,
    # and an expired answer is served stale after 0.5 s (RFC 8767 client response timer).
    data["upstream"] = {"attempt_timeout": "500ms", "total_timeout": "1s", "backoff": "1s"}
    data["stale"] = {**data.get("stale", {}), "client_timeout": "500ms"}
    path = tmp_path / "resolver.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen([sys.executable, "-m", "resolver", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/readyz", timeout=1) as r:
                if r.status == 200:
                    return proc, mport
        except OSError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"forwarder exited {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("forwarder not ready in time")


def metric(mport: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=3) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


@pytest.mark.netns
def test_glibc_resolves_through_the_forwarder_and_from_stale_cache_in_an_outage(tmp_path, fake_upstream):
    namespace_or_skip(tmp_path)
    listen_host = next((h for h in CANDIDATES if port_53_free(h)), None)
    if listen_host is None:
        pytest.skip(f"port 53 is taken on every one of {', '.join(CANDIDATES)}")
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=TTL)
    fake_upstream.answer("www.test", "AAAA", "2001:db8::1", ttl=TTL)
    fake_upstream.answer("api.test", "A", "192.0.2.7", ttl=TTL)
    proc, mport = start_forwarder(tmp_path, listen_host, fake_upstream.address)
    client = Client(tmp_path, listen_host)
    try:
        # Upstream healthy: both clients get the records, through the forwarder.
        rc, addresses = client.getent("www.test")
        assert rc == 0 and addresses == {"192.0.2.1", "2001:db8::1"}, addresses
        assert client.getaddrinfo("api.test") == {"addresses": ["192.0.2.7"]}
        asked = {(name, qtype) for _, name, qtype in fake_upstream.calls}
        assert {("www.test", "A"), ("www.test", "AAAA"), ("api.test", "A")} <= asked
        stale_before = metric(mport, "resolver_stale_answers_total")

        # Upstream goes silent, and every cached answer expires.
        fake_upstream.mode("drop")
        time.sleep(TTL + 1.2)

        started = time.monotonic()
        rc, addresses = client.getent("www.test")
        assert rc == 0 and addresses == {"192.0.2.1", "2001:db8::1"}, addresses
        assert client.getaddrinfo("api.test") == {"addresses": ["192.0.2.7"]}
        assert time.monotonic() - started < 6  # within glibc's one 3 s try each
        assert metric(mport, "resolver_stale_answers_total") > stale_before

        # A name never cached: a temporary failure (SERVFAIL), never "no such name".
        result = client.getaddrinfo("never-seen.test")
        assert result.get("error") == socket.EAI_AGAIN, result
        rc, _ = client.getent("never-seen.test")
        assert rc == 2  # getent: key not found (glibc folds EAI_AGAIN into it)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr.read()
