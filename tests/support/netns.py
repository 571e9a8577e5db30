"""A private network namespace with nftables rules: kernel-level faults for root tests.

``tc netem`` is not available on these machines, but nftables is: inside a
namespace the test creates itself, a rule can drop a share of datagrams
(``numgen random``), drop all of them (a blackhole) or reject them with ICMP port
unreachable (a killed server as the kernel reports it) — real packet loss, seen by
the forwarder's real sockets, not a fake's choice to stay silent.

The calling thread enters the namespace with ``setns(2)``; processes it starts
(Unbound, ``nft``) and threads it starts (the in-process forwarder's event loop)
inherit it, so everything the test runs talks over the namespace's own loopback
and nothing reaches the host's network.  On exit the thread returns to its
original namespace and the namespace is deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import subprocess
from typing import Iterator

CLONE_NEWNET = 0x40000000
TABLE = "faults"


def available() -> str | None:
    """None if netns tests can run here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return f"{tool} is not installed (apt-get install iproute2 nftables; `make test` does it)"
    return None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=10)


class Faults:
    """nftables rules on the namespace's output hook, for one UDP/TCP port."""

    def __init__(self):
        _run("nft", "add", "table", "inet", TABLE)
        _run("nft", "add", "chain", "inet", TABLE, "out",
             "{ type filter hook output priority 0; policy accept; }")

    def lose(self, port: int, percent: int) -> None:
        """Drop ``percent``% of the UDP datagrams sent to ``port`` (at random)."""
        _run("nft", "add", "rule", "inet", TABLE, "out", "udp", "dport", str(port),
             "numgen", "random", "mod", "100", "<", str(percent), "drop")

    def blackhole(self, port: int) -> None:
        """Drop everything sent to ``port``, UDP and TCP: an upstream gone silent."""
        for proto in ("udp", "tcp"):
            _run("nft", "add", "rule", "inet", TABLE, "out", proto, "dport", str(port), "drop")

    def reject(self, port: int) -> None:
        """Refuse ``port``: ICMP port unreachable for UDP, a reset for TCP."""
        _run("nft", "add", "rule", "inet", TABLE, "out", "udp", "dport", str(port), "reject")
        _run("nft", "add", "rule", "inet", TABLE, "out", "tcp", "dport", str(port), "reject", "with", "tcp",
             "reset")

    def clear(self) -> None:
        """Remove every rule: the network is healthy again."""
        _run("nft", "flush", "chain", "inet", TABLE, "out")


@contextlib.contextmanager
def private_network(name: str) -> Iterator[Faults]:
    """Run the calling thread (and what it starts) in a new namespace with loopback up."""
    subprocess.run(["ip", "netns", "del", name], capture_output=True)  # a leftover of a killed run
    _run("ip", "netns", "add", name)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            _run("ip", "link", "set", "lo", "up")
            yield Faults()
        finally:
            _setns(original)
    finally:
        os.close(original)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
