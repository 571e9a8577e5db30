"""Recovery in seconds, whatever the upstream answers to ". NS" (issue 13, item 4).

The upstream is authoritative-only, as a corporate server, a Kubernetes zone's
server, NSD or knot is: it REFUSES ". NS" and every name outside its zone.  A real
Unbound configured so (``local-zone: "." refuse`` plus the static zone ``test.``,
tests/support/unbound.py) and the FakeUpstream (which refuses the same) are broken
in every outage mode — blackhole, SERVFAIL, killed (port closed) — while a client
at one address (127.0.0.1) keeps asking its expired names and gets them stale.
Then the upstream comes back with new data: every name must be fresh within 2 s,
with the default probe settings.  TTLs run on the harness's fake clock; the outage
and the recovery are real time (polled with a bound).
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.support.client import ask, ede_codes, eventually

NAMES = [f"n{i}.test" for i in range(20)]
TTL = 2
RECOVERY_BOUND = 2.0
STALE = {"client_timeout": 0.5}  # the outage part runs quicker; recovery uses the default probes


def old(i: int) -> str:
    return f"192.0.2.{i + 1}"


def new(i: int) -> str:
    return f"198.51.100.{i + 1}"


def answer_of(port: int, name: str) -> tuple[list[str], list[int]]:
    msg = ask(port, name, timeout=5.0)
    return [rr.to_text() for rrset in msg.answer for rr in rrset], ede_codes(msg)


def outage_then_recovery(fwd, label: str, breaks, restores) -> float:
    """Warm, break, serve stale until the upstream is known down, restore with new
    data; returns the seconds from the upstream's return until every name was fresh."""
    for i, name in enumerate(NAMES):
        assert answer_of(fwd.port, name)[0] == [old(i)]
    breaks()
    fwd.advance(TTL + 1)
    for i, name in enumerate(NAMES):  # stale, from one address, while it is broken
        values, codes = answer_of(fwd.port, name)
        assert values == [old(i)] and codes == [3], (name, values, codes)
    assert eventually(lambda: fwd.metric("resolver_upstream_up", upstream=label) == 0, timeout=10)
    time.sleep(1.5)  # a few probes fail against the broken upstream (the outage goes on)
    for i, name in enumerate(NAMES):
        assert answer_of(fwd.port, name)[0] == [old(i)]
    returned = restores()
    deadline = returned + 10
    pending = set(range(len(NAMES)))
    while pending and time.monotonic() < deadline:
        for i in sorted(pending):
            values, codes = answer_of(fwd.port, NAMES[i])
            if values == [new(i)] and not codes:
                pending.discard(i)
        if pending:
            time.sleep(0.02)
    took = time.monotonic() - returned
    assert not pending, f"{len(pending)} names still stale {took:.1f}s after the upstream returned"
    return took


# -- a real Unbound, authoritative-only --------------------------------------------------


@pytest.fixture
def auth_unbound(tmp_path):
    from tests.support.unbound import HAVE_UNBOUND, UnboundServer

    if not HAVE_UNBOUND:
        pytest.skip("the unbound binary is not installed")
    server = UnboundServer(tmp_path / "unbound", [f"{n}. {TTL} IN A {old(i)}" for i, n in enumerate(NAMES)])
    server.start()
    try:
        yield server
    finally:
        server.close()


def _new_records() -> list[str]:
    return [f"{n}. {TTL} IN A {new(i)}" for i, n in enumerate(NAMES)]


def test_real_unbound_refuses_root_ns_and_outside_names(auth_unbound):
    """The premise: this upstream is authoritative-only."""
    assert auth_unbound.query(".", "NS").rcode() == 5  # REFUSED
    assert auth_unbound.query("example.com", "A").rcode() == 5
    assert auth_unbound.query("n0.test", "A").rcode() == 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["killed", "blackhole"])
def test_recovery_from_a_real_authoritative_unbound(auth_unbound, start_forwarder, mode):
    """killed: the port is closed (ICMP port unreachable).  blackhole: Unbound is
    gone and a socket that never answers holds its port (no ICMP, only silence)."""
    fwd = start_forwarder([auth_unbound.address], stale=STALE)
    label = f"udp://{auth_unbound.address}"
    hole: list[socket.socket] = []

    def breaks():
        auth_unbound.kill()
        if mode == "blackhole":
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.bind((auth_unbound.host, auth_unbound.port))
            hole.append(sink)

    def restores() -> float:
        auth_unbound.records = _new_records()
        for sink in hole:
            sink.close()
        auth_unbound.start()  # same port, new zone file; returns once it answers
        return time.monotonic()

    took = outage_then_recovery(fwd, label, breaks, restores)
    assert took <= RECOVERY_BOUND, f"fresh after {took:.2f}s"


# -- the FakeUpstream, which refuses the same ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["drop", "servfail", "killed"])
def test_recovery_from_an_authoritative_fake(fake_upstream, start_forwarder, mode):
    for i, name in enumerate(NAMES):
        fake_upstream.answer(name, "A", old(i), ttl=TTL)
    fwd = start_forwarder([fake_upstream.address], stale=STALE)
    label = f"udp://{fake_upstream.address}"

    def breaks():
        if mode == "killed":
            fake_upstream.close_port()
        else:
            fake_upstream.mode(mode)

    def restores() -> float:
        fake_upstream.clear()
        for i, name in enumerate(NAMES):
            fake_upstream.answer(name, "A", new(i), ttl=TTL)
        if mode == "killed":
            fake_upstream.open_port()
        return time.monotonic()

    took = outage_then_recovery(fwd, label, breaks, restores)
    assert took <= RECOVERY_BOUND, f"fresh after {took:.2f}s"
    # Not hammered: the probes of the down upstream stayed about one per probe_interval_max.
    assert fwd.metric("resolver_upstream_probes_total", upstream=label, result="fail") <= 10
