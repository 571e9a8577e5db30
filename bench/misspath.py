"""The miss path's cost in CPU instructions: a measure that a noisy machine cannot move.

    .venv/bin/python bench/misspath.py                 # instructions per miss (needs valgrind)
    .venv/bin/python bench/misspath.py --trees A,B     # the same for other checkouts, side by side
    .venv/bin/python bench/misspath.py --plain 20000   # no valgrind: wall/CPU time only

On a shared 2-core VM the miss test of bench/run.py moves by ±30% between runs of
the same code, so it cannot tell a 5% improvement from noise.  This drives N cache
misses through a real ``App`` in one process — real UDP sockets on loopback, a
client keeping 50 queries in flight, and a fake upstream that answers every
question with one A record — under ``valgrind --tool=callgrind``, once with N
misses and once with none, and prints (instructions(N) − instructions(0)) / N.
That count is repeatable to ~0.1%.  It includes the client's and fake upstream's
work (constant between versions) but not the kernel's (system calls are not
counted), so it measures exactly the Python and C work a code change moves.
``--relay`` prints the same for a bare relay (a task per query: socket, send,
``sock_recv``, reply): the floor for any Python miss path.

Each run takes ~30 s under valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IN_FLIGHT = 50
# One A record for the question, owner compressed to the question's name.
ANSWER = b"\xc0\x0c\x00\x01\x00\x01\x00\x01\x51\x80\x00\x04\xc0\x00\x02\x01"


class _Upstream(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        qend = data.index(b"\x00", 12) + 5
        self.transport.sendto(data[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + data[12:qend] + ANSWER, addr)


class _Client(asyncio.DatagramProtocol):
    """Keeps IN_FLIGHT unique-name queries outstanding until ``n`` are answered."""

    def __init__(self, n: int, done: asyncio.Future):
        self.n, self.done, self.sent, self.got = n, done, 0, 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        for _ in range(min(IN_FLIGHT, self.n)):
            self.send()

    def send(self) -> None:
        i = self.sent
        self.sent += 1
        name = b"%c%s\x04miss\x05bench\x04test\x00" % (len(b"u%d" % i), b"u%d" % i)
        self.transport.sendto(struct.pack(">HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + name + b"\x00\x01\x00\x01")

    def datagram_received(self, data: bytes, addr) -> None:
        self.got += 1
        if self.sent < self.n:
            self.send()
        if self.got >= self.n and not self.done.done():
            self.done.set_result(None)


class _Relay(asyncio.DatagramProtocol):
    """The floor: per query a task with its own socket, as resolver's miss path, nothing else."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()

    def datagram_received(self, data: bytes, addr) -> None:
        self.loop.create_task(self.forward(data, addr))

    async def forward(self, data: bytes, addr) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        try:
            sock.connect(self.upstream)
            sock.send(data)
            reply = await self.loop.sock_recv(sock, 65535)
        finally:
            sock.close()
        self.transport.sendto(reply, addr)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _workload(n: int, relay: bool, extra: str = "") -> float:
    """Run ``n`` misses; returns the CPU seconds they took."""
    from resolver.app import App
    from resolver.config import load_config
    try:
        from resolver.app import tune_gc
    except ImportError:  # a checkout from before it existed (A/B against old versions)
        def tune_gc() -> None:
            pass

    loop = asyncio.get_running_loop()
    up, _ = await loop.create_datagram_endpoint(_Upstream, local_addr=("127.0.0.1", 0))
    upstream = up.get_extra_info("sockname")
    port = _free_port()
    app = None
    if relay:
        await loop.create_datagram_endpoint(lambda: _Relay(upstream), local_addr=("127.0.0.1", port))
    else:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(f'listen: ["127.0.0.1:{port}"]\nupstreams: ["127.0.0.1:{upstream[1]}"]\n'
                    "metrics:\n  enabled: false\nsecurity:\n  max_inflight_per_client: 4096\n" + extra)
        app = App(load_config(f.name))
        os.unlink(f.name)
        await app.start()
        tune_gc()  # as the command line does after start-up
    started = time.process_time()
    if n:
        done = loop.create_future()
        await loop.create_datagram_endpoint(lambda: _Client(n, done), remote_addr=("127.0.0.1", port))
        await done
    cpu = time.process_time() - started
    if app is not None:
        assert app.stats.cache_misses == n, f"expected {n} misses, saw {app.stats.cache_misses}"
        await app.stop()
    return cpu


def _child(n: int, relay: bool, extra: str = "") -> None:
    import uvloop

    cpu = uvloop.run(_workload(n, relay, extra))
    print(f"misses {n} cpu_s {cpu:.3f}")


def _instructions(tree: Path, n: int, relay: bool, extra: str = "") -> int:
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", sys.executable,
                str(Path(__file__).resolve()), "--child", str(n)] + (["--relay"] if relay else []) \
            + (["--config-extra", extra.replace("{tmp}", tmp)] if extra else [])
        env = {**os.environ, "PYTHONPATH": str(tree)}
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp, timeout=1800)
        m = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or not m:
            raise SystemExit(f"valgrind run failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}{proc.stdout[-2000:]}")
        return int(m.group(1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--misses", type=int, default=2000, help="misses per measured run (default 2000)")
    p.add_argument("--trees", default=str(REPO), help="comma-separated checkouts to compare (default: this one)")
    p.add_argument("--relay", action="store_true", help="measure the bare relay instead of resolver")
    p.add_argument("--plain", type=int, metavar="N", help="run N misses without valgrind; print CPU time")
    p.add_argument("--config-extra", default="", help="YAML appended to the config (e.g. a cache.persist section); "
                   "{tmp} is replaced by a fresh temporary directory")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child is not None:
        _child(a.child, a.relay, a.config_extra)
        return 0
    if a.plain:
        sys.path.insert(0, str(REPO))
        import uvloop

        with tempfile.TemporaryDirectory() as tmp:
            cpu = uvloop.run(_workload(a.plain, a.relay, a.config_extra.replace("{tmp}", tmp)))
        print(f"{a.plain} misses in {cpu:.3f} CPU-s: {cpu / a.plain * 1e6:.1f} µs each (client and fake upstream included)")
        return 0
    for tree in a.trees.split(","):
        base = _instructions(Path(tree), 0, a.relay, a.config_extra)
        full = _instructions(Path(tree), a.misses, a.relay, a.config_extra)
        what = "bare relay" if a.relay else "resolver"
        print(f"{tree}: {what}: {(full - base) / a.misses:,.0f} instructions per miss "
              f"({a.misses} misses; {base:,} for start-up alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
