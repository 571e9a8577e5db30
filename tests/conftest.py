"""Shared fixtures and helpers.

Fixtures:
    unbound        a running UnboundServer (function scope) with DEFAULT_RECORDS
    fake_upstream  a running FakeUpstream (function scope), no records, mode normal

Helpers (plain functions; ``from tests.conftest import free_port, resolv_conf``):
    free_port()                      a port free for both UDP and TCP on 127.0.0.1
    resolv_conf(tmp_path, *ips)      writes tmp_path/"resolv.conf", returns its Path

Every server here binds to 127.0.0.1 only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers.fake_upstream import FakeUpstream
from tests.servers.unbound import UnboundServer, find_unbound, free_port

__all__ = ["DEFAULT_RECORDS", "BIG_TXT", "free_port", "resolv_conf", "requires_unbound"]

# big.test: 40 TXT strings of 50 characters: the answer is ~2.4 kB, well over 512 bytes
# (and over the 1232-byte EDNS default), so UDP replies come back with TC=1.
BIG_TXT = [f"txt-{i:02d}-" + "x" * 43 for i in range(40)]

DEFAULT_RECORDS = [
    "www.test. 300 IN A 192.0.2.1",
    "short.test. 2 IN A 192.0.2.2",
    "v6.test. 300 IN AAAA 2001:db8::1",
    "alias.test. 300 IN CNAME www.test.",
    *[f'big.test. 300 IN TXT "{s}"' for s in BIG_TXT],
]

HAVE_UNBOUND = find_unbound("unbound") is not None and find_unbound("unbound-control") is not None

requires_unbound = pytest.mark.skipif(
    not HAVE_UNBOUND,
    reason="the unbound binary is not installed (apt-get install unbound; `make test` does it)",
)


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


@pytest.fixture
def unbound(tmp_path):
    """A real Unbound on 127.0.0.1 serving DEFAULT_RECORDS in the static zone test."""
    if not HAVE_UNBOUND:
        pytest.skip("the unbound binary is not installed (apt-get install unbound; "
                    "`make test` does it)")
    server = UnboundServer(tmp_path / "unbound", DEFAULT_RECORDS)
    server.start()
    try:
        yield server
    finally:
        server.close()


def _running_fake_upstream():
    up = FakeUpstream().start()
    try:
        yield up
    finally:
        up.stop()


@pytest.fixture
def fake_upstream():
    """A running in-process fault-injecting upstream on 127.0.0.1 (UDP + TCP)."""
    yield from _running_fake_upstream()


@pytest.fixture
def second_upstream():
    """Another one, for tests that switch or spread between upstreams."""
    yield from _running_fake_upstream()


@pytest.fixture
def start_forwarder():
    """Factory: ``start_forwarder(upstreams, **sections)`` → a RunningForwarder, stopped at teardown;
    ``join=True`` starts it as a handover successor on addresses already bound."""
    from tests.servers.forwarder import RunningForwarder, forwarder_config

    running = []

    def start(upstreams, join=False, **sections):
        fwd = RunningForwarder(forwarder_config(list(upstreams), **sections), join=join)
        running.append(fwd)
        return fwd

    try:
        yield start
    finally:
        for fwd in running:
            fwd.stop()
