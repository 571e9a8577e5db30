"""A real redis-server (the Debian package) for the fleet tier's tests.

Bound to 127.0.0.1 on a free port, its files in a tmp dir, nothing persisted
(``--save '' --appendonly no``).  Faults are the real thing: ``freeze()`` SIGSTOPs
the process (connections are accepted by the kernel and then nothing answers, as
with a blackholed or wedged cache server), ``kill()`` SIGKILLs it, ``restart()``
starts an empty one on the same port.

    with RedisServer(tmp_path) as rs:
        rs.url                      # "redis://127.0.0.1:PORT/0"
        rs.client().dbsize()        # a plain synchronous client, to look inside
        rs.freeze(); rs.thaw()
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

HOST = "127.0.0.1"
HAVE_REDIS = shutil.which("redis-server") is not None or os.path.exists("/usr/bin/redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.frozen = False

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> "RedisServer":
        for attempt in range(5):
            self.proc = subprocess.Popen(
                ["redis-server", "--bind", HOST, "--port", str(self.port), "--dir", str(self.dir),
                 "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
                 "--logfile", str(self.dir / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_ready():
                return self
            self.proc.kill()
            self.proc.wait()
            self.port = free_port()  # taken meanwhile by another process on a busy machine
        raise RuntimeError(f"redis-server did not start: {(self.dir / 'redis.log').read_text()[-2000:]}")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            try:
                if self.client().ping():
                    return True
            except redis.RedisError:
                time.sleep(0.05)
        return False

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)
        self.frozen = False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.frozen:
                self.thaw()
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        """Killed and started again, empty, on the same port."""
        self.kill()
        self.start()

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
