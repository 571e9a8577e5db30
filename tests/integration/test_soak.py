"""Soak: the forwarder as a real process under a bounded mix of valid queries and garbage.

For ``SOAK_SECONDS`` (default 25) clients on many source ports send valid queries
(a mix of cache hits, misses on short-TTL names, NXDOMAIN) over UDP and TCP, and
one datagram in ten is garbage from its own sockets.  Afterwards:

* every valid query got an answer with its ID and the expected rcode;
* the forwarder's stderr holds no traceback;
* its RSS after the run is within a generous bound of its RSS after warm-up.

The figures are printed (run with ``-s`` to see them) for the report.
"""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from tests.support.process import resolv_conf
from tests.support.unbound import free_port

REPO = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("SOAK_SECONDS", "25"))
WARMUP = 5.0
NAMES = [f"n{i}.soak.test" for i in range(300)]
SHORT = NAMES[:60]  # 1 s TTL: misses keep coming all through the run
MISSING = [f"missing{i}.soak.test" for i in range(50)]  # NXDOMAIN


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_for_dns(port: int, deadline: float = 15.0) -> None:
    end = time.monotonic() + deadline
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < end:
            s.sendto(dns.message.make_query("probe.soak.test", "A").to_wire(), ("127.0.0.1", port))
            try:
                s.recv(4096)
                return
            except OSError:
                time.sleep(0.05)
    raise AssertionError("forwarder did not answer in time")


class Client:
    """Valid queries over many UDP sockets and a few TCP connections, a bounded window each."""

    def __init__(self, port: int, rng: random.Random, udp_sockets: int = 32, tcp_conns: int = 4):
        self.addr = ("127.0.0.1", port)
        self.rng = rng
        self.udp = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(udp_sockets)]
        self.garbage = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
        for s in self.udp + self.garbage:
            s.setblocking(False)
        self.tcp = [socket.create_connection(self.addr, timeout=5) for _ in range(tcp_conns)]
        for s in self.tcp:
            s.setblocking(False)
        self.tcp_buf = {s: b"" for s in self.tcp}
        self.pending: dict[tuple[socket.socket, int], tuple[float, int]] = {}  # (sock, id) -> (sent, rcode)
        self.sent = self.answered = self.garbage_sent = self.tcp_sent = 0
        self.wrong: list[str] = []
        self.lost: list[tuple[str, int]] = []

    def close(self) -> None:
        for s in self.udp + self.garbage + self.tcp:
            s.close()

    def _query(self) -> tuple[bytes, int, int]:
        name = self.rng.choice(NAMES + MISSING) if self.rng.random() < 0.9 else self.rng.choice(SHORT)
        expect = dns.rcode.NXDOMAIN if name in MISSING else dns.rcode.NOERROR
        msg = dns.message.make_query(name, "A", use_edns=self.rng.random() < 0.5)
        return msg.to_wire(), msg.id, expect

    def send_one(self) -> None:
        if self.rng.random() < 0.1:  # 10% garbage, from its own sockets
            junk = bytes(self.rng.getrandbits(8) for _ in range(self.rng.randrange(0, 80)))
            try:
                self.rng.choice(self.garbage).sendto(junk, self.addr)
            except BlockingIOError:
                pass
            self.garbage_sent += 1
            return
        data, qid, expect = self._query()
        if self.rng.random() < 0.2:
            sock = self.rng.choice(self.tcp)
            sock.setblocking(True)
            sock.sendall(struct.pack(">H", len(data)) + data)
            sock.setblocking(False)
            self.tcp_sent += 1
        else:
            sock = self.rng.choice(self.udp)
            sock.sendto(data, self.addr)
        if (sock, qid) in self.pending:  # a random-ID collision on one socket: do not count it twice
            return
        self.pending[(sock, qid)] = (time.monotonic(), expect)
        self.sent += 1

    def _got(self, sock: socket.socket, msg: bytes) -> None:
        if len(msg) < 12:
            return
        qid = struct.unpack(">H", msg[:2])[0]
        item = self.pending.pop((sock, qid), None)
        if item is None:
            return
        self.answered += 1
        if msg[3] & 0x0F != item[1]:
            self.wrong.append(f"rcode {msg[3] & 0x0F}, expected {item[1]}")

    def receive(self, timeout: float) -> None:
        readable, _, _ = select.select(self.udp + self.garbage + self.tcp, [], [], timeout)
        for sock in readable:
            if sock in self.garbage:
                try:
                    while sock.recv(65535):
                        pass
                except BlockingIOError:
                    pass
                continue
            if sock in self.tcp_buf:
                chunk = sock.recv(65535)
                if not chunk:
                    raise AssertionError("the forwarder closed a busy TCP connection")
                buf = self.tcp_buf[sock] + chunk
                while len(buf) >= 2 and len(buf) >= 2 + struct.unpack(">H", buf[:2])[0]:
                    size = struct.unpack(">H", buf[:2])[0]
                    self._got(sock, buf[2:2 + size])
                    buf = buf[2 + size:]
                self.tcp_buf[sock] = buf
                continue
            try:
                while True:
                    self._got(sock, sock.recv(65535))
            except BlockingIOError:
                pass

    def expire(self, older_than: float) -> None:
        now = time.monotonic()
        for key, (sent, _) in list(self.pending.items()):
            if now - sent > older_than:
                del self.pending[key]
                self.lost.append(("tcp" if key[0] in self.tcp_buf else "udp", key[1]))


@pytest.mark.slow
def test_soak_valid_and_garbage_udp_and_tcp(fake_upstream, tmp_path):
    for i, name in enumerate(NAMES):
        fake_upstream.answer(name, "A", f"192.0.2.{i % 250 + 1}", ttl=1 if name in SHORT else 300)
    fake_upstream.answer("probe.soak.test", "A", "192.0.2.254")
    stderr_path = tmp_path / "stderr.log"
    for _ in range(5):  # free_port() can race with other processes on a busy machine
        port = free_port()
        config = tmp_path / "soak.yaml"
        config.write_text(f'listen: ["127.0.0.1:{port}"]\nupstreams: ["{fake_upstream.address}"]\n'
                          "metrics: {enabled: false}\nlogging: {level: warning}\n")
        with open(stderr_path, "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-m", "resolver", "--config", str(config),
                                     "--resolv-conf", str(resolv_conf(tmp_path, "127.0.0.1"))],
                                    stdout=subprocess.DEVNULL, stderr=stderr, cwd=REPO)
        try:
            wait_for_dns(port)
            break
        except AssertionError:
            proc.kill()
            proc.wait(5)
            if "cannot start" not in stderr_path.read_text():
                raise
    client = None
    try:
        client = Client(port, random.Random(42))
        start = time.monotonic()
        rss_warm = None
        window = 64
        while time.monotonic() - start < SECONDS:
            while len(client.pending) < window:
                client.send_one()
            client.receive(0.05)
            client.expire(older_than=5.0)
            if rss_warm is None and time.monotonic() - start >= WARMUP:
                rss_warm = rss_kib(proc.pid)
        end = time.monotonic() + 6
        while client.pending and time.monotonic() < end:
            client.receive(0.1)
        client.expire(older_than=0)
        elapsed = time.monotonic() - start
        rss_end = rss_kib(proc.pid)
        assert proc.poll() is None, "the forwarder died"
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    log = stderr_path.read_text()
    print(f"\nsoak: {elapsed:.1f} s, {client.sent} valid queries ({client.tcp_sent} over TCP), "
          f"{client.garbage_sent} garbage datagrams, {client.answered} answered, {len(client.lost)} lost, "
          f"{len(client.wrong)} wrong rcode; {client.sent / elapsed:.0f} valid q/s; "
          f"RSS {rss_warm} KiB after {WARMUP:.0f} s warm-up, {rss_end} KiB at the end")
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    assert client.sent > 1000, "the soak hardly ran"
    assert client.lost == [], f"{len(client.lost)} valid queries unanswered, e.g. {client.lost[:5]}"
    assert client.wrong == [], client.wrong[:5]
    assert client.garbage_sent > 50
    assert rss_end <= rss_warm * 1.25 + 16 * 1024, f"RSS grew from {rss_warm} to {rss_end} KiB"
