"""The command as a real process: start it, write its files, wait until it answers, read its metrics."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dns.exception
import dns.message
import dns.query
from prometheus_client.parser import text_string_to_metric_families

from tests.support.unbound import free_port

REPO = Path(__file__).resolve().parents[2]


def resolv_conf(tmp_path: str | Path, *ips: str, options: list[str] | None = None,
                search: list[str] | None = None) -> Path:
    """Write ``tmp_path/resolv.conf`` with one ``nameserver`` line per ip."""
    lines = []
    if search:
        lines.append("search " + " ".join(search))
    lines += [f"nameserver {ip}" for ip in ips]
    if options:
        lines.append("options " + " ".join(options))
    path = Path(tmp_path) / "resolv.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "resolver", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def wait_for_dns(port: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            dns.query.udp(dns.message.make_query("probe.invalid", "A"), "127.0.0.1", port=port, timeout=0.2)
            return
        except (dns.exception.Timeout, ConnectionRefusedError, OSError):
            time.sleep(0.05)
    raise AssertionError("forwarder did not answer in time")


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "resolver.yaml"
    path.write_text(text)
    return path


def ready(mport: int, pid: int | None = None) -> bool:
    """/readyz, or with ``pid`` ready *and* answered by that process (or its workers)."""
    query = "" if pid is None else f"?pid={pid}"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/readyz{query}", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def metrics_ports(workers: int, taken: set[int]) -> int:
    """A base port with ``workers`` free ports from it (worker i serves metrics on base + i)."""
    while True:
        base = free_port()
        try:
            socks = []
            for i in range(workers):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        if not taken & set(range(base, base + workers)):
            return base


def metric(port: int, name: str, **labels) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0

def spawn(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "resolver", "--config", str(config), *extra], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []
