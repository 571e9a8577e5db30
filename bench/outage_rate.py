"""Upstream queries per second during a simulated outage, with and without the
recheck timer and health back-off (issue 5's note).

    /work/main/.venv/bin/python bench/outage_rate.py [seconds]

The forwarder runs in-process on loopback with the real clock; a fake upstream on
loopback first answers NAMES names (TTL 1 s), then blackholes everything.  Client
threads keep asking every name (each about 10 times a second, bounded by the run
time); we count what reaches the upstream — refresh queries and background probes
— and how long clients waited; then the upstream returns with a changed record and
we time how long until a client sees it.  Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dns.message  # noqa: E402
import dns.query  # noqa: E402

from resolver.clock import SystemClock  # noqa: E402
from tests.support.fake_upstream import FakeUpstream  # noqa: E402
from tests.support.forwarder import RunningForwarder, forwarder_config  # noqa: E402

NAMES = [f"n{i}.test" for i in range(20)]

CASES = {
    "recheck 30s + back-off (defaults)": ({}, {}),
    "recheck 30s, no back-off": ({}, {"max_failures": 10**9}),
    "no recheck, back-off": ({"recheck": 0}, {}),
    "no recheck, no back-off": ({"recheck": 0}, {"max_failures": 10**9}),
}


def ask(port: int, name: str) -> float:
    t = time.monotonic()
    try:
        dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=5)
    except Exception:  # noqa: BLE001 - a lost answer still counts its wait
        pass
    return time.monotonic() - t


def fresh_after_recovery(up: FakeUpstream, port: int, limit: float = 60.0) -> float:
    """Seconds from the upstream's return until a client sees the new record (asking every 50 ms)."""
    up.clear().answer(NAMES[0], "A", "192.0.2.99", ttl=1)
    t = time.monotonic()
    while time.monotonic() - t < limit:
        try:
            r = dns.query.udp(dns.message.make_query(NAMES[0], "A"), "127.0.0.1", port=port, timeout=5)
            if r.answer and r.answer[0][0].to_text() == "192.0.2.99":
                return time.monotonic() - t
        except Exception:  # noqa: BLE001
            pass
        time.sleep(0.05)
    return float("inf")


def run_case(stale: dict, upstream: dict, seconds: float) -> tuple[float, float, float, float, float]:
    up = FakeUpstream().start()
    for name in NAMES:
        up.answer(name, "A", "192.0.2.1", ttl=1)
    for attempt in range(3):  # port 0 for UDP, then TCP on the same port, can collide on a busy host
        try:
            fwd = RunningForwarder(forwarder_config([up.address], stale=stale, upstream=upstream),
                                   clock=SystemClock())
            break
        except OSError:
            if attempt == 2:
                raise
    try:
        for name in NAMES:
            ask(fwd.port, name)
        time.sleep(1.1)  # every TTL has run out
        up.mode("drop")
        before = len(up.calls)
        waits: list[float] = []
        end = time.monotonic() + seconds

        def client(name: str) -> None:
            while time.monotonic() < end:
                waits.append(ask(fwd.port, name))
                time.sleep(0.1)

        with ThreadPoolExecutor(len(NAMES)) as pool:
            list(pool.map(client, NAMES))
        calls = up.calls[before:]
        probes = sum(1 for c in calls if c[1] == ".")
        back = fresh_after_recovery(up, fwd.port)
        return ((len(calls) - probes) / seconds, probes / seconds, statistics.median(waits), max(waits), back)
    finally:
        fwd.stop()
        up.stop()


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    print(f"{len(NAMES)} cached names, each asked ~10x/s for {seconds:g}s while the upstream blackholes")
    print(f"{'case':38s} {'refresh q/s':>11s} {'probe q/s':>9s} {'median wait':>11s} {'max wait':>8s}"
          f" {'fresh after return':>18s}")
    for label, (stale, upstream) in CASES.items():
        rate, probes, median, worst, back = run_case(stale, upstream, seconds)
        print(f"{label:38s} {rate:11.1f} {probes:9.1f} {median * 1000:9.0f}ms {worst:7.2f}s {back:17.2f}s")


if __name__ == "__main__":
    main()
