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
        self.extra: list[str] = []  # more redis-server options (a cluster node's)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> "RedisServer":
        for attempt in range(5):
            self.proc = subprocess.Popen(
                ["redis-server", "--bind", HOST, "--port", str(self.port), "--dir", str(self.dir),
                 "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
                 "--logfile", str(self.dir / "redis.log"), *self.extra],
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


class RedisClusterNodes:
    """A 3-master Redis Cluster (no replicas) on 127.0.0.1: three ``redis-server --cluster-enabled
    yes`` on free ports (their cluster bus on free ports too, ``--cluster-port``), joined by
    ``redis-cli --cluster create``; ready when every node's ``cluster info`` says ok.

        with RedisClusterNodes(tmp_path) as rc:
            rc.url                  # "redis://127.0.0.1:PORT" (a seed node)
            rc.node_of(key)         # index of the master that holds ``key``
            rc.client(i).keys()     # a plain client of master i, to look inside
    """

    def __init__(self, directory: Path, masters: int = 3):
        self.dir = Path(directory)
        self.nodes = [RedisServer(self.dir / f"node{i}") for i in range(masters)]

    @property
    def url(self) -> str:
        return self.nodes[0].url.rsplit("/", 1)[0]

    def start(self) -> "RedisClusterNodes":
        for node in self.nodes:
            node.extra = ["--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                          "--cluster-config-file", str(node.dir / "nodes.conf"), "--cluster-node-timeout", "15000"]
            node.start()
        subprocess.run(["redis-cli", "--cluster", "create", *(f"{HOST}:{n.port}" for n in self.nodes),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
        end = time.monotonic() + 20
        while time.monotonic() < end:
            if all(b"cluster_state:ok" in n.client().execute_command("CLUSTER", "INFO") for n in self.nodes):
                return self
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    def client(self, index: int) -> redis.Redis:
        return self.nodes[index].client()

    def node_of(self, key: bytes) -> int:
        """Which master holds ``key`` now (CLUSTER KEYSLOT, then each node's COUNTKEYSINSLOT)."""
        slot = self.client(0).execute_command("CLUSTER", "KEYSLOT", key)
        for i in range(len(self.nodes)):
            if self.client(i).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot):
                return i
        raise KeyError(key)

    def all_keys(self, pattern: str = "*") -> dict[bytes, int]:
        """Every key matching ``pattern``, with the index of the master holding it."""
        return {key: i for i in range(len(self.nodes)) for key in self.client(i).keys(pattern)}

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> "RedisClusterNodes":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class RedisSentinelSet:
    """One master (and, with ``replica=True``, its replica) and one Sentinel watching it as
    ``service`` (quorum 1), on 127.0.0.1.  The
    Sentinel is the same binary in sentinel mode (``redis-server sentinel.conf --sentinel``;
    Debian's ``redis-sentinel`` package only adds a service unit).

        with RedisSentinelSet(tmp_path) as rs:
            rs.sentinels            # ["127.0.0.1:PORT"]
            rs.master.client()      # the master, to look inside
            rs.lose_master()        # (replica=True) the master killed, the replica promoted
    """

    def __init__(self, directory: Path, service: str = "mymaster", replica: bool = False):
        self.dir = Path(directory)
        self.service = service
        self.master = RedisServer(self.dir / "master")
        self.replica = RedisServer(self.dir / "replica") if replica else None  # for lose_master()
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=2, socket_connect_timeout=2)

    def master_port(self) -> int:
        return int(self.sentinel_client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)[1])

    def lose_master(self, timeout: float = 20.0) -> int:
        """The master SIGKILLed: the Sentinel sees it down (1 s) and promotes the replica.  Its port,
        once the Sentinel reports the new master up (flags ``master`` only: until then — about a
        second after the address changes — redis-py's ``discover_master`` refuses it)."""
        old = self.master_port()
        self.master.kill()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.master_port() != old and self._master_flags() == {"master"}:
                return self.master_port()
            time.sleep(0.05)
        raise RuntimeError("the Sentinel did not fail over")

    def start(self) -> "RedisSentinelSet":
        self.master.start()
        if self.replica is not None:
            self.replica.extra = ["--replicaof", HOST, str(self.master.port)]
            self.replica.start()
        sdir = self.dir / "sentinel"
        sdir.mkdir(parents=True, exist_ok=True)
        conf = sdir / "sentinel.conf"  # Sentinel rewrites its config file: it must be ours, writable
        conf.write_text(f"bind {HOST}\nport {self.port}\ndir {sdir}\nlogfile {sdir / 'sentinel.log'}\n"
                        f"sentinel monitor {self.service} {HOST} {self.master.port} 1\n"
                        # quick to see a lost master and to fail over (defaults: 30 s and 3 min)
                        f"sentinel down-after-milliseconds {self.service} 1000\n"
                        f"sentinel failover-timeout {self.service} 2000\n")
        self.proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            try:
                client = self.sentinel_client()
                if client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service) and (
                        self.replica is None or self._replica_known(client)):
                    return self
            except redis.RedisError:
                pass
            time.sleep(0.05)
        log = sdir / "sentinel.log"
        raise RuntimeError(f"redis sentinel did not start: {log.read_text()[-2000:] if log.exists() else ''}")

    def _master_flags(self) -> set[str]:
        state = self.sentinel_client().execute_command("SENTINEL", "MASTER", self.service)
        info = dict(zip(state[::2], state[1::2])) if isinstance(state, list) else state
        flags = info.get(b"flags", info.get("flags", b""))
        return set((flags.decode() if isinstance(flags, bytes) else flags).split(","))

    def _replica_known(self, client: redis.Redis) -> bool:
        """The Sentinel lists the replica as up and linked (a failover needs one)."""
        for replica in client.execute_command("SENTINEL", "REPLICAS", self.service):
            info = dict(zip(replica[::2], replica[1::2])) if isinstance(replica, list) else replica
            info = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                    for k, v in info.items()}
            if info.get("port") == str(self.replica.port) and info.get("master-link-status") == "ok" \
                    and "disconnected" not in info.get("flags", ""):
                return True
        return False

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.replica is not None:
            self.replica.close()
        self.master.close()

    def __enter__(self) -> "RedisSentinelSet":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
