"""`workers: N`: a parent process that keeps N forwarder processes running.

Why processes: one Python process answers from one core.  N workers each bind
every listen address with SO_REUSEPORT and the kernel spreads clients over them;
each has its own cache (nothing shared, no locks; the cost is that a name may be
fetched and stored once per worker).  The parent does no DNS work: it forks the
workers, restarts one that dies (after a back-off if it keeps dying right after
starting, so a crash loop cannot become a fork storm), forwards SIGHUP (each
worker reloads its own copy of the configuration) and, on SIGTERM/SIGINT,
forwards SIGTERM and waits for every worker to drain and exit.

Signals are taken synchronously with ``sigtimedwait`` in a plain loop: no event
loop runs in the parent, so the children inherit no loop state across fork.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Callable

log = logging.getLogger("resolver.supervisor")

SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}
FAST_DEATH = 2.0  # a worker that dies sooner than this after starting is crash-looping
BACKOFF_MAX = 30.0


def usable_cores() -> int:
    """Cores this process may run on (cpusets and taskset included), for `workers: auto`."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class Supervisor:
    """Forks ``run_worker(index, restarts) -> exit code`` N times and keeps them alive."""

    def __init__(self, workers: int, run_worker: Callable[[int, int], int], stop_timeout: float):
        self.workers = workers
        self.run_worker = run_worker
        self.stop_timeout = stop_timeout
        self.pids: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}  # index -> monotonic start time
        self.restarts = [0] * workers
        self.backoff = [0.0] * workers
        self.due: dict[int, float] = {}  # index -> monotonic time a restart is due

    def _spawn(self, index: int) -> None:
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
                for sig in SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                code = self.run_worker(index, self.restarts[index])
            except BaseException:  # the child must never return into the parent's loop
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        self.pids[pid] = index
        self.started[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, pid)

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        for index in range(self.workers):
            self._spawn(index)
        while True:
            timeout = 1.0
            if self.due:
                timeout = max(0.0, min(self.due.values()) - time.monotonic())
            info = signal.sigtimedwait(SIGNALS, timeout)
            if info is None:
                pass
            elif info.si_signo in (signal.SIGTERM, signal.SIGINT):
                return self._stop()
            elif info.si_signo == signal.SIGHUP:
                log.info("reload: forwarding SIGHUP to %d workers", len(self.pids))
                self._signal_all(signal.SIGHUP)
            self._reap()
            now = time.monotonic()
            for index, when in list(self.due.items()):
                if when <= now:
                    del self.due[index]
                    self.restarts[index] += 1
                    self._spawn(index)

    def _reap(self) -> None:
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            lived = time.monotonic() - self.started.get(index, 0.0)
            if lived < FAST_DEATH:
                self.backoff[index] = min(BACKOFF_MAX, max(1.0, self.backoff[index] * 2))
            else:
                self.backoff[index] = 0.0
            log.error("worker %d (pid %d) exited (%s); restarting in %.0fs", index, pid,
                      _describe(status), self.backoff[index])
            self.due[index] = time.monotonic() + self.backoff[index]

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def _stop(self) -> int:
        """Forward SIGTERM, wait for every worker to drain and exit, SIGKILL stragglers."""
        log.info("stopping %d workers", len(self.pids))
        self.due.clear()
        self._signal_all(signal.SIGTERM)
        end = time.monotonic() + self.stop_timeout
        while self.pids and time.monotonic() < end:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.pids.pop(pid, None)
            else:
                time.sleep(0.05)
        if self.pids:
            log.error("workers %s did not stop in time; killing them", sorted(self.pids.values()))
            self._signal_all(signal.SIGKILL)
            for pid in list(self.pids):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        return 0


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.WEXITSTATUS(status)}"
