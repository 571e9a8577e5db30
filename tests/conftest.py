"""Shared fixtures; the helpers they use live in tests/support/.

Fixtures:
    unbound          a running UnboundServer (function scope) with DEFAULT_RECORDS
    fake_upstream    a running FakeUpstream (function scope), no records, mode normal
    second_upstream  another one
    start_forwarder  factory for in-process RunningForwarders, stopped at teardown
    resolv           a resolv.conf naming 127.0.0.1 (config tests), as a path string

Marks (registered in pyproject.toml): every test under tests/deploy is ``deploy`` and every
test under tests/fuzz is ``fuzz`` (set here, by directory); ``slow``, ``netns`` and the
hypothesis ``fuzz`` tests elsewhere are marked where they are defined.

Every server here binds to 127.0.0.1 only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.unbound import DEFAULT_RECORDS, HAVE_UNBOUND, UnboundServer

TESTS = Path(__file__).resolve().parent
DIRECTORY_MARKS = {"deploy": pytest.mark.deploy, "fuzz": pytest.mark.fuzz}


def pytest_collection_modifyitems(items):
    """Mark whole directories, so a new test there cannot be forgotten by ``-m "not deploy"``."""
    for item in items:
        try:
            top = Path(item.path).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if top in DIRECTORY_MARKS:
            item.add_marker(DIRECTORY_MARKS[top])


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
    from tests.support.forwarder import RunningForwarder, forwarder_config

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


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on 127.0.0.1 (free port, files in tmp_path, nothing persisted)."""
    from tests.support.redis_server import HAVE_REDIS, RedisServer

    if not HAVE_REDIS:
        pytest.skip("redis-server is not installed (apt-get install redis-server; `make test` does it)")
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def resolv(tmp_path):
    """A resolv.conf of our own naming 127.0.0.1, so no test depends on the host's."""
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.1\n")
    return str(path)
