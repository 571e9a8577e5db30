"""Unit tests for resolver.supervisor's pure helpers (the process behaviour is in
tests/integration/test_handover.py: a SIGKILLed worker is restarted under load)."""

from __future__ import annotations

import os
import signal

from resolver.ops import supervisor


def test_auto_workers_is_the_usable_cores():
    assert supervisor.usable_cores() == len(os.sched_getaffinity(0)) >= 1


def test_exit_status_is_described_for_the_log():
    assert supervisor._describe(signal.SIGKILL) == "killed by SIGKILL"  # WIFSIGNALED status
    assert supervisor._describe(3 << 8) == "exit code 3"


def test_crash_loop_backs_off(monkeypatch):
    """A worker that dies right after starting is restarted after 1 s, then 2 s, 4 s, ... 30 s."""
    sup = supervisor.Supervisor(1, lambda i, r: 0, stop_timeout=1)
    clock = [100.0]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: clock[0])
    delays = []
    for pid in range(1000, 1008):
        sup.pids[pid] = 0
        sup.started[0] = clock[0]
        statuses = iter([(pid, 1 << 8), (0, 0)])
        monkeypatch.setattr(supervisor.os, "waitpid", lambda *a: next(statuses))
        sup._reap()
        delays.append(sup.due[0] - clock[0])
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    sup.pids[2000] = 0
    sup.started[0] = clock[0] - 60  # lived a minute: restarted at once
    statuses = iter([(2000, 1 << 8), (0, 0)])
    monkeypatch.setattr(supervisor.os, "waitpid", lambda *a: next(statuses))
    sup._reap()
    assert sup.due[0] == clock[0]
