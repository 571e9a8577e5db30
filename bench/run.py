#!/usr/bin/env python3
"""Benchmark resolver against Unbound and dnsmasq, all forwarding to a local NSD.

    .venv/bin/python bench/run.py [--quick] [--runs N] [--duration S]

Everything listens on 127.0.0.1 only; nothing leaves the machine.  The server
under test is pinned to one CPU (``--server-cpu``, default 1); this script,
dnsperf, the latency client and NSD share another (``--client-cpu``, default 0).
Server CPU time is read from /proc/PID/stat before and after each load run, so
"QPS per server CPU-second" compares the programs even when the load generator,
not the server, is the bottleneck.  See bench/README.md for what each number means.

Results: a Markdown report on stdout, JSON in bench/results/latest.json, server
logs in bench/results/logs/.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faultproxy  # noqa: E402
import latency  # noqa: E402
import outage  # noqa: E402
import servers  # noqa: E402
from servers import LOOPBACK, Server  # noqa: E402

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
FORWARDERS = ("resolver", "unbound", "dnsmasq")
TESTS = ("hits", "latency", "misses", "stale", "workers", "memory", "startup", "hosttier", "outage")
CEILING = "uvloop-ceiling"  # bench/ceiling.py, in the cache-hit test only
# resolver with server.udp_accelerator off (uvloop's per-datagram callback), in the hit and
# latency tests: "resolver" runs the native batched hit loop (issue 19) and must have it built.
PYTHON_LOOP = "resolver-python"
NATIVE_LOOP = "server:\n  udp_accelerator: on\n"
PYTHON_LOOP_CONFIG = "server:\n  udp_accelerator: off\n"

HIT_QUERIES = 1_000            # distinct questions in the cache-hit query file
LATENCY_RATE = 5_000           # queries per second for the latency test
HIT_RATE = 50_000              # queries per second of the fixed-rate cache-hit test (a1)
MISS_NAMES_PER_SECOND = 50_000  # unique names per second of a miss run (dnsperf stops at the file's end) ...
MISS_NAMES_MAX = 140_000        # ... but fewer than dnsmasq's 150,000 cache entries: a full dnsmasq
                                # cache of unexpired entries makes every miss cost milliseconds
# dnsperf flood settings.  One client socket with 100 queries outstanding keeps a
# single-core server at ~100% CPU without overflowing its socket receive buffer;
# more sockets or more outstanding queries made dnsperf itself slower on this box
# and made the kernel drop bursts (RcvbufErrors), which then show up as "lost".
FLOOD_CLIENTS = 1
HIT_OUTSTANDING = 100
MISS_OUTSTANDING = 100
FILL_BUDGET_PER_100K = 60.0     # seconds allowed per 100k names when filling caches (memory test)
STALE_CONFIG = """upstream:
  attempt_timeout: 0.5
  total_timeout: 0.5
stale:
  client_timeout: 0.2
  recheck: 1h
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------- plumbing
def become_subreaper() -> None:
    """Orphans of our servers (NSD's children) are re-parented to us, so we can reap them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def reap_children() -> None:
    """Collect exited orphans (all Popen children have been waited for by now)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def udp_snmp() -> dict[str, int]:
    """System-wide UDP counters; RcvbufErrors counts datagrams dropped on a full socket."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return dict(zip(rows[0][1:], map(int, rows[1][1:])))


def cpu_busy() -> dict[int, float]:
    """Seconds per CPU since boot spent running processes (user, nice, system) or stolen by
    the hypervisor (steal), from /proc/stat.  Interrupt and softirq time is left out: part
    of it is the kernel delivering the benchmark's own packets."""
    busy = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *ticks = line.split()
            if name.startswith("cpu") and name != "cpu":
                user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, ticks[:8])
                busy[int(name[3:])] = (user + nice + system + steal) / servers.CLK_TCK
    return busy


def wait_for_quiet(limit: float, threshold: float = 0.05) -> float:
    """Wait (at most ``limit`` s) until the server core has been quiet for 0.5 s: nothing of
    ours runs there between load runs, so any use is another process's.  Returns the
    busy share seen last (a shared machine may never be quiet; the run then goes ahead)."""
    deadline = time.monotonic() + limit
    while True:
        b0 = cpu_busy()[SERVER_CPU]
        time.sleep(0.5)
        share = (cpu_busy()[SERVER_CPU] - b0) / 0.5
        if share <= threshold or time.monotonic() >= deadline:
            return share


def write_lines(path: Path, lines) -> Path:
    with open(path, "w") as f:
        for line in lines:
            f.write(line + "\n")
    return path


def dnsperf(port: int, datafile: Path, cpu: int | None, *, duration: float | None = None,
            outstanding: int = 100, clients: int = 1, once: bool = False, rate: int | None = None,
            timeout: float = 2.0) -> dict:
    """Run dnsperf and parse its summary."""
    argv = ["dnsperf", "-s", LOOPBACK, "-p", str(port), "-d", str(datafile), "-c", str(clients),
            "-q", str(outstanding), "-t", str(timeout), "-O", "suppress=timeout,congestion"]
    if duration:
        argv += ["-l", str(duration)]
    if once:
        argv += ["-n", "1"]
    if rate:
        argv += ["-Q", str(rate)]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    limit = (duration or 900) + timeout + 60
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=limit, stdin=subprocess.DEVNULL)
    out = proc.stdout

    def num(label: str, default=None):
        m = re.search(rf"{label}:\s+([\d.]+)", out)
        return float(m.group(1)) if m else default

    if proc.returncode != 0 or num("Queries sent") is None:
        raise RuntimeError(f"dnsperf failed (rc {proc.returncode}): {proc.stderr.strip() or out[-2000:]}")
    rcodes = dict((k, int(v)) for k, v in re.findall(r"([A-Z]+) (\d+) \(", out.split("Response codes:")[1].split("\n")[0]))
    return {
        "sent": int(num("Queries sent")),
        "completed": int(num("Queries completed")),
        "lost": int(num("Queries lost", 0)),
        "qps": num("Queries per second"),
        "runtime_s": num(r"Run time \(s\)"),
        "avg_latency_us": (num(r"Average Latency \(s\)", 0) or 0) * 1e6,
        "rcodes": rcodes,
    }


SERVER_CPU = CLIENT_CPU = None  # set in main()
QUIET_WAIT = 0.0                 # --quiet-wait


def measured(server: Server, work, cores: list[int] | None = None) -> dict:
    """Run ``work()`` and add the server's CPU seconds, RSS and socket drops to its result.

    Also how busy the CPUs were with anything else (other users of a shared box):
    ``foreign_server_core`` is the share of wall time the server's core(s) spent on other
    work; above a few percent the run was disturbed.  ``cores``: the server's cores
    (default: the one server CPU)."""
    cores = cores or [SERVER_CPU]
    if not server.alive():
        raise RuntimeError(f"{server.name} has exited (rc {server.proc.returncode}); log:\n{server.log_tail()}")
    quiet_before = wait_for_quiet(QUIET_WAIT) if QUIET_WAIT > 0 else None
    snmp0, busy0, cpu0, t0 = udp_snmp(), cpu_busy(), server.cpu(), time.monotonic()
    result = work()
    cpu1, t1, busy1, snmp1 = server.cpu(), time.monotonic(), cpu_busy(), udp_snmp()
    if not server.alive():
        raise RuntimeError(f"{server.name} died during the test (rc {server.proc.returncode}); log:\n{server.log_tail()}")
    cpu = cpu1 - cpu0
    result["server_cpu_s"] = round(cpu, 3)
    result["server_cpu_util"] = round(cpu / (t1 - t0) / len(set(cores)), 3) if t1 > t0 else None
    result["qps_per_cpu_s"] = result["completed"] / cpu if cpu > 0 else None
    result["rss_bytes"] = server.rss()
    result["rcvbuf_drops"] = snmp1.get("RcvbufErrors", 0) - snmp0.get("RcvbufErrors", 0)
    wall = max(t1 - t0, 1e-9)
    others = sum(busy1[c] - busy0[c] for c in set(cores)) - cpu
    result["foreign_server_core"] = round(max(0.0, others) / wall / len(set(cores)), 3)
    result["client_core_busy"] = round((busy1[CLIENT_CPU] - busy0[CLIENT_CPU]) / wall, 3)
    result["server_core_busy_before"] = None if quiet_before is None else round(quiet_before, 3)
    return result


DISTURBED = 0.05  # share of the server's core used by other processes that marks a run as disturbed


def foreign_meter(server: Server):
    """Start measuring the share of the server's core that other processes use; returns the
    function that stops and returns it (as ``measured`` does for the load tests)."""
    busy0, cpu0, t0 = cpu_busy()[SERVER_CPU], server.cpu(), time.monotonic()

    def stop() -> float:
        wall = max(time.monotonic() - t0, 1e-9)
        return max(0.0, (cpu_busy()[SERVER_CPU] - busy0) - (server.cpu() - cpu0)) / wall
    return stop


def disturbed(res: dict) -> str:
    foreign = res.get("foreign_server_core") or 0
    return f"  [disturbed: other processes used {foreign:.0%} of the server core]" if foreign > DISTURBED else ""


def median_of(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict]) -> dict:
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {"median": {k: median_of(runs, k) for k in keys}, "runs": runs,
            "disturbed_runs": sum(1 for r in runs if disturbed(r))}


# --------------------------------------------------------------------- the tests
class Bench:
    def __init__(self, args, workdir: Path):
        self.args = args
        self.work = workdir
        self.cpu_client = args.client_cpu
        self.cpu_server = args.server_cpu
        self.started: list[Server] = []
        self.results: dict = {"tests": {}}
        self.notes: list[str] = []

    # ---- process bookkeeping
    def start(self, fn, *a, **kw) -> Server:
        server = fn(*a, **kw)
        self.started.append(server)
        return server

    def stop(self, server: Server) -> None:
        server.stop()
        if server in self.started:
            self.started.remove(server)
        reap_children()

    def stop_all(self) -> None:
        for server in reversed(list(self.started)):
            try:
                server.stop()
            except Exception as e:  # keep stopping the others
                log(f"stopping {server.name}: {e}")
        self.started.clear()
        reap_children()

    def check_log(self, server: Server) -> None:
        """Note tracebacks or errors a server logged (resolver misbehaviour must be visible)."""
        text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
        bad = [line for line in text.splitlines() if re.search(r"Traceback|ERROR|CRITICAL|error:", line)]
        if bad:
            self.notes.append(f"{server.name} logged {len(bad)} error line(s), first: {bad[0][:300]}")

    # ---- files
    def make_files(self) -> None:
        rng = random.Random(1)
        hits = [f"h{n}.bench.test A" for n in range(HIT_QUERIES * 3 // 4)]
        hits += [f"h{n}.bench.test AAAA" for n in range(0, HIT_QUERIES, servers.AAAA_EVERY)][: HIT_QUERIES - len(hits)]
        rng.shuffle(hits)
        self.hit_lines = hits
        self.hits_file = write_lines(self.work / "hits.txt", hits)
        self.stale_file = write_lines(self.work / "stale.txt",
                                      (f"s{n}.short.bench.test A" for n in range(servers.SHORT_NAMES)))

    def miss_file(self) -> Path:
        """Unique names, fewer than dnsmasq's cache size (see test_misses)."""
        path = self.work / "miss.txt"
        if not path.exists():
            count = min(MISS_NAMES_MAX, int(MISS_NAMES_PER_SECOND * self.args.duration))
            write_lines(path, (f"u{i}.miss.bench.test A" for i in range(count)))
        return path

    # ---- a. cache hits
    def warm(self, server: Server, datafile: Path, passes: int = 2) -> dict:
        res = {}
        for _ in range(passes):
            res = dnsperf(server.port, datafile, self.cpu_client, once=True, outstanding=50)
        return res

    def test_hits(self, fwd: dict[str, Server]) -> None:
        log("a. cache hits: warming")
        ceiling = self.start(servers.start_ceiling, self.work, self.cpu_server)
        fwd = {**fwd, CEILING: ceiling}
        for name, server in fwd.items():
            warm = self.warm(server, self.hits_file)
            if warm["lost"] or warm["rcodes"].get("NOERROR", 0) != len(self.hit_lines):
                self.notes.append(f"{name}: warm-up pass not clean: {warm}")
        runs = {name: [] for name in fwd}
        for run in range(self.args.runs):
            for name in self.order(fwd, run):
                res = measured(fwd[name], lambda s=fwd[name]: dnsperf(
                    s.port, self.hits_file, self.cpu_client, duration=self.args.duration,
                    outstanding=HIT_OUTSTANDING, clients=FLOOD_CLIENTS))
                runs[name].append(res)
                log(f"   hits {name} run {run + 1}: {res['qps']:.0f} qps, {res['server_cpu_s']:.2f} CPU-s, "
                    f"{fmt_int(res['qps_per_cpu_s'])} q/CPU-s, lost {res['lost']}, socket drops {res['rcvbuf_drops']}"
                    f"{disturbed(res)}")
        self.results["tests"]["hits"] = {name: summarize(r) for name, r in runs.items()}
        self.check_log(ceiling)
        self.stop(ceiling)
        fwd.pop(CEILING)
        # The same hits offered at a fixed rate below saturation: CPU per query where batches
        # are small (the native loop's batches then hold a few datagrams each).
        runs = {name: [] for name in fwd}
        for run in range(self.args.runs):
            for name in self.order(fwd, run):
                res = measured(fwd[name], lambda s=fwd[name]: dnsperf(
                    s.port, self.hits_file, self.cpu_client, duration=self.args.duration,
                    outstanding=HIT_OUTSTANDING, clients=FLOOD_CLIENTS, rate=HIT_RATE))
                runs[name].append(res)
                log(f"   hits @ {HIT_RATE} q/s {name} run {run + 1}: {res['qps']:.0f} qps, "
                    f"{res['server_cpu_s']:.2f} CPU-s, {fmt_int(res['qps_per_cpu_s'])} q/CPU-s, lost {res['lost']}"
                    f"{disturbed(res)}")
        self.results["tests"]["hits_rate"] = {name: summarize(r) for name, r in runs.items()}

    # ---- b. latency at a fixed rate
    def test_latency(self, fwd: dict[str, Server]) -> None:
        log(f"b. latency at {LATENCY_RATE} q/s")
        questions = [tuple(line.split()) for line in self.hit_lines]
        for server in fwd.values():  # warm the client code path and the server's, unmeasured
            latency.measure(server.port, questions, LATENCY_RATE, 1.0)
        runs = {name: [] for name in fwd}
        for run in range(self.args.runs):
            for name in self.order(fwd, run):
                res = measured(fwd[name], lambda s=fwd[name]: latency.measure(
                    s.port, questions, LATENCY_RATE, self.args.duration))
                runs[name].append(res)
                log(f"   latency {name} run {run + 1}: p50 {res['p50_us']:.0f} µs, p99 {res['p99_us']:.0f} µs, "
                    f"lost {res['lost']}, client send lag p99 {res['send_lag_p99_us']:.0f} µs{disturbed(res)}")
        self.results["tests"]["latency"] = {name: summarize(r) for name, r in runs.items()}

    # ---- c. cache misses
    def test_misses(self, nsd: Server) -> None:
        """Each run on a freshly started server, so every run sees the same empty cache."""
        log("c. cache misses (unique names, NSD behind; a fresh server per run)")
        datafile = self.miss_file()
        starters = self.starters(nsd, "miss")
        runs = {name: [] for name in starters}
        for run in range(self.args.runs):
            for name in self.order(starters, run):
                server = starters[name]()
                self.started.append(server)
                try:
                    server.wait_ready("h1.bench.test")
                    res = measured(server, lambda s=server: dnsperf(
                        s.port, datafile, self.cpu_client, duration=self.args.duration, once=True,
                        outstanding=MISS_OUTSTANDING, clients=FLOOD_CLIENTS))
                finally:
                    self.check_log(server)
                    self.stop(server)
                runs[name].append(res)
                log(f"   misses {name} run {run + 1}: {res['qps']:.0f} qps, {res['server_cpu_s']:.2f} CPU-s, "
                    f"{fmt_int(res['qps_per_cpu_s'])} q/CPU-s, lost {res['lost']}, rcodes {res['rcodes']}"
                    f"{disturbed(res)}")
        self.results["tests"]["misses"] = {name: summarize(r) for name, r in runs.items()}

    def starters(self, nsd: Server, suffix: str) -> dict:
        """Functions that start a fresh, not yet warmed instance of each forwarder."""
        w, port, cpu = self.work, nsd.port, self.cpu_server
        return {
            "resolver": lambda: servers.start_resolver(w, port, cpu, name=f"resolver-{suffix}", wait=False),
            "unbound": lambda: servers.start_unbound(w, port, cpu, name=f"unbound-{suffix}", wait=False),
            "dnsmasq": lambda: servers.start_dnsmasq(w, port, cpu, name=f"dnsmasq-{suffix}", wait=False),
        }

    # ---- d. serve-stale, failure recheck timer path
    def test_stale(self, nsd: Server) -> None:
        """Stale answers from the failure-recheck fast path, interleaved with fresh hits on the
        same instance, so the two are compared under the same conditions."""
        log("d. serve-stale: recheck-timer fast path vs fresh hits, same instance (resolver only)")
        server = self.start(servers.start_resolver, self.work, nsd.port, self.cpu_server,
                            name="resolver-stale", extra=STALE_CONFIG)
        try:
            self.warm(server, self.hits_file, passes=1)
            warm = self.warm(server, self.stale_file, passes=1)
            entries = servers.resolver_metric(server, "resolver_cache_entries")
            detail = {"warm": warm, "entries_after_warm": entries}
            nsd.signal_group(signal.SIGSTOP)  # silent upstream: every refresh times out
            try:
                time.sleep(1.5)  # TTL 1 s: the short names are now stale
                # One query per name: answered stale after client_timeout (0.2 s); the refresh
                # fails at total_timeout (0.5 s) and sets the recheck timer (1 h).
                detail["prime"] = dnsperf(server.port, self.stale_file, self.cpu_client, once=True,
                                          outstanding=100, timeout=3)
                time.sleep(1.0)
                stale_runs, fresh_runs, counted = [], [], 0.0
                for run in range(self.args.runs):
                    fresh = measured(server, lambda: dnsperf(
                        server.port, self.hits_file, self.cpu_client, duration=self.args.duration,
                        outstanding=HIT_OUTSTANDING, clients=FLOOD_CLIENTS))
                    fresh_runs.append(fresh)
                    before = servers.resolver_metric(server, "resolver_stale_answers")
                    res = measured(server, lambda: dnsperf(
                        server.port, self.stale_file, self.cpu_client, duration=self.args.duration,
                        outstanding=HIT_OUTSTANDING, clients=FLOOD_CLIENTS))
                    counted += servers.resolver_metric(server, "resolver_stale_answers") - before
                    stale_runs.append(res)
                    log(f"   run {run + 1}: stale {res['qps']:.0f} qps, {fmt_int(res['qps_per_cpu_s'])} q/CPU-s, "
                        f"lost {res['lost']}, rcodes {res['rcodes']}{disturbed(res)}; fresh hits "
                        f"{fresh['qps']:.0f} qps, {fmt_int(fresh['qps_per_cpu_s'])} q/CPU-s{disturbed(fresh)}")
            finally:
                nsd.signal_group(signal.SIGCONT)
            completed = sum(r["completed"] for r in stale_runs)
            detail["stale_answers_counted"] = counted
            detail["completed"] = completed
            if abs(counted - completed) > 0.01 * completed:
                self.notes.append(f"serve-stale: {completed} answers but resolver_stale_answers grew by "
                                  f"{counted:.0f}: not all answers took the stale path")
            summary = summarize(stale_runs)
            summary["detail"] = detail
            summary["fresh_same_instance"] = summarize(fresh_runs)
            self.results["tests"]["stale"] = {"resolver": summary}
        finally:
            self.check_log(server)
            self.stop(server)

    # ---- e. workers
    def test_workers(self, nsd: Server) -> None:
        """Cache-hit floods against `workers: k` for k = 1, 2, 4 …, k workers on k cores."""
        if not servers.resolver_supports("workers: 2\n", self.work):
            self.results["tests"]["workers"] = {"resolver": "n/a (workers not implemented)"}
            return
        cores = [c for c in self.args.cpus if c != self.cpu_client]
        forced = self.args.workers_force and len(cores) < 2
        if len(cores) < 2 and not forced:
            self.test_workers_shared(nsd)
            return
        limit = min(self.args.workers_max or 8, 2 if forced else len(cores))
        ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= limit]
        log(f"e. workers scaling: workers = {', '.join(map(str, ks))}"
            + (" (forced: all on one CPU, oversubscribed)" if forced else ""))
        out = {}
        for k in ks:
            mine = [cores[0]] if forced else cores[:k]
            server = self.start(servers.start_resolver, self.work, nsd.port, ",".join(map(str, mine)),
                                name=f"resolver-w{k}", extra=f"workers: {k}\n", metrics=False)
            clients = 4 * k  # SO_REUSEPORT spreads client sockets over the workers
            try:
                time.sleep(1.0)  # all workers up
                for _ in range(3):  # each worker keeps its own cache; each client socket maps to one worker
                    dnsperf(server.port, self.hits_file, self.cpu_client, once=True, outstanding=50 * k,
                            clients=clients)
                runs = []
                for run in range(self.args.runs):
                    res = measured(server, lambda s=server: dnsperf(
                        s.port, self.hits_file, self.cpu_client, duration=self.args.duration,
                        outstanding=HIT_OUTSTANDING * k, clients=clients), cores=mine)
                    runs.append(res)
                    log(f"   workers {k} run {run + 1}: {res['qps']:.0f} qps, {res['server_cpu_s']:.2f} CPU-s, "
                        f"{fmt_int(res['qps_per_cpu_s'])} q/CPU-s, server cores {res['server_cpu_util']:.0%} busy"
                        f"{disturbed(res)}")
                out[str(k)] = {**summarize(runs), "cpus": mine}
            finally:
                self.check_log(server)
                self.stop(server)
        base = out["1"]["median"]["qps"]
        for k, entry in out.items():
            qps = entry["median"]["qps"]
            entry["scaling_efficiency"] = qps / (int(k) * base) if base else None
        self.results["tests"]["workers"] = {"resolver": out, "forced_on_one_cpu": forced}

    def test_workers_shared(self, nsd: Server) -> None:
        """Workers on a 2-CPU machine: 1 vs 2 workers, nothing pinned, dnsperf sharing the CPUs.

        Two workers cannot get two whole cores here (dnsperf needs most of one), so
        the QPS gain is capped by what dnsperf leaves.  What this does measure: the
        cost per query with 2 workers against 1 (QPS per server CPU-second: near 1.0
        means a second worker adds no overhead of its own — no shared lock, no
        cross-worker traffic) and how evenly SO_REUSEPORT spreads the load (each
        worker's share of the server CPU).  Same dnsperf settings for both.
        """
        log("e. workers (2 CPUs: 1 vs 2 workers, server and dnsperf unpinned, 64 client sockets)")
        out = self.shared_hits(nsd)
        one, two = out["1"]["median"], out["2"]["median"]
        self.results["tests"]["workers_shared"] = {
            "resolver": out,
            "qps_ratio": two["qps"] / one["qps"] if one.get("qps") else None,
            "cost_ratio": two["qps_per_cpu_s"] / one["qps_per_cpu_s"] if one.get("qps_per_cpu_s") else None,
            "misses": self.workers_misses(nsd),
        }

    def shared_hits(self, nsd: Server, extra: str = "", tag: str = "", max_entries: int | None = 1_100_000,
                    ks: tuple[int, ...] = (1, 2)) -> dict:
        """Cache-hit floods against `workers: 1` and `workers: 2` on the shared CPUs (see test_workers_shared)."""
        clients, outstanding = 64, 2 * HIT_OUTSTANDING  # many sockets: SO_REUSEPORT hashes each to one worker
        out = {}
        for k in ks:
            server = self.start(retry_port_race, lambda k=k: servers.start_resolver(
                self.work, nsd.port, None, max_entries=max_entries, name=f"resolver-shared{tag}-w{k}",
                extra=f"workers: {k}\n{extra}", metrics=False))
            try:
                time.sleep(1.0)  # all workers up
                for _ in range(3):  # each worker keeps its own cache; each client socket maps to one worker
                    dnsperf(server.port, self.hits_file, None, once=True, outstanding=outstanding, clients=clients)
                runs = []
                for run in range(self.args.runs):
                    workers = [pid for pid in servers.group_members(server.pid) if pid != server.pid] or [server.pid]
                    before = {pid: servers.cpu_seconds(pid) for pid in workers}
                    cpu0, t0 = server.cpu(), time.monotonic()
                    res = dnsperf(server.port, self.hits_file, None, duration=self.args.duration,
                                  outstanding=outstanding, clients=clients)
                    cpu, wall = server.cpu() - cpu0, time.monotonic() - t0
                    shares = sorted(servers.cpu_seconds(pid) - before[pid] for pid in workers)
                    res.update(server_cpu_s=round(cpu, 3), qps_per_cpu_s=res["completed"] / cpu if cpu else None,
                               server_cpus_busy=round(cpu / wall, 3), rss_bytes=server.rss(),
                               worker_balance=round(shares[0] / shares[-1], 3) if shares[-1] else None)
                    runs.append(res)
                    log(f"   workers {k} run {run + 1}: {res['qps']:.0f} qps, {cpu:.2f} CPU-s "
                        f"({res['server_cpus_busy']:.2f} CPUs busy), {fmt_int(res['qps_per_cpu_s'])} q/CPU-s, "
                        f"worker balance {res['worker_balance']}")
                out[str(k)] = summarize(runs)
            finally:
                self.check_log(server)
                self.stop(server)
        return out

    def hosttier_misses(self, nsd: Server) -> dict:
        """The miss flood of test_misses (fresh server per run, pinned, NSD behind), tier off vs on,
        alternating: the miss path's real cost with the socket work included."""
        datafile = self.miss_file()
        w, port, cpu = self.work, nsd.port, self.cpu_server
        runs: dict[str, list] = {"off": [], "on": []}
        for run in range(self.args.runs):
            for mode in (("off", "on") if run % 2 == 0 else ("on", "off")):
                extra = ""
                if mode == "on":
                    tier = w / f"tier-miss-{run}.lmdb"
                    extra = f'cache:\n  max_entries: 1100000\n  persist:\n    path: "{tier}"\n'
                server = retry_port_race(lambda: servers.start_resolver(
                    w, port, cpu, name=f"resolver-tiermiss-{mode}-{run}", extra=extra,
                    max_entries=None if mode == "on" else 1_100_000))
                self.started.append(server)
                try:
                    res = measured(server, lambda s=server: dnsperf(
                        s.port, datafile, self.cpu_client, duration=self.args.duration, once=True,
                        outstanding=MISS_OUTSTANDING, clients=FLOOD_CLIENTS))
                finally:
                    self.check_log(server)
                    self.stop(server)
                runs[mode].append(res)
                log(f"   misses, tier {mode}, run {run + 1}: {res['qps']:.0f} qps, {res['server_cpu_s']:.2f} CPU-s, "
                    f"{fmt_int(res['qps_per_cpu_s'])} q/CPU-s, lost {res['lost']}{disturbed(res)}")
        return {mode: summarize(r) for mode, r in runs.items()}

    # ---- g2. the host cache tier (issue 16)
    def test_hosttier(self, nsd: Server) -> None:
        """The host tier on vs off: bench/hosttier.py in-process (hit path ns, miss CPU, start-up to
        first answer with N entries on disk, disk and RSS per entry), then cache-hit floods with
        `workers: 1` and `workers: 2` with the tier on and off (test_workers_shared's method)."""
        entries = self.args.hosttier_entries
        log(f"g2. host cache tier: in-process parts ({entries:,} entries on disk), then workers 1 vs 2 on/off")
        path = self.work / "hosttier.json"
        if not entries:  # --hosttier-entries 0: only the floods
            res = self.hosttier_floods(nsd)
            self.results["tests"]["hosttier"] = res
            return
        argv = [sys.executable, str(BENCH / "hosttier.py"), "--entries", str(entries), "--runs", str(self.args.runs),
                "--snapshot", "--json", str(path)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=3600, cwd=BENCH.parent,
                              env={**os.environ, "BENCH_TMP": str(self.work)})
        for line in done.stdout.splitlines():
            log("   " + line)
        if done.returncode != 0 or not path.exists():
            self.notes.append(f"hosttier.py failed (rc {done.returncode}): {done.stderr[-500:]}")
            res: dict = {}
        else:
            res = json.loads(path.read_text())
        res.update(self.hosttier_floods(nsd))
        self.results["tests"]["hosttier"] = res

    def hosttier_floods(self, nsd: Server) -> dict:
        """The miss flood and the workers 1 vs 2 hit floods, tier off vs on."""
        res: dict = {"flood_misses": self.hosttier_misses(nsd)}
        workers: dict = {"off": {"resolver": {}}, "on": {"resolver": {}}}
        # Alternating (off, on for 1 worker; on, off for 2), so drift on a shared machine does not
        # land on one mode only.
        for k, order in ((1, ("off", "on")), (2, ("on", "off"))):
            for mode in order:
                extra = ""
                if mode == "on":
                    tier = self.work / f"hosttier-{os.getpid()}-w{k}.lmdb"
                    extra = f'cache:\n  max_entries: 1100000\n  persist:\n    path: "{tier}"\n'
                rows = self.shared_hits(nsd, extra, tag=f"-tier{mode}", ks=(k,),
                                        max_entries=None if mode == "on" else 1_100_000)
                workers[mode]["resolver"].update(rows)
        for mode, w in workers.items():
            one, two = w["resolver"]["1"]["median"], w["resolver"]["2"]["median"]
            w["qps_ratio"] = two["qps"] / one["qps"] if one.get("qps") else None
            log(f"   tier {mode}: workers 2 / 1 = {w['qps_ratio']:.2f}x QPS")
        res["workers"] = workers
        return res

    def workers_misses(self, nsd: Server) -> dict:
        """Scaling where the server, not dnsperf, is the bottleneck on 2 CPUs: cache misses.

        A miss costs resolver ~20× what it costs dnsperf and NSD, so one worker
        saturates its CPU while the client side needs a fraction of the other: two
        workers can show whether throughput doubles with cores.  A fresh server per
        run (empty caches), unique names, nothing pinned.
        """
        paths = []
        for j in range(2):  # one dnsperf per worker, each with names of its own
            path = self.work / f"workers-miss-{j}.txt"
            if not path.exists():
                write_lines(path, (f"w{j}x{i}.miss.bench.test A" for i in range(int(25_000 * self.args.duration))))
            paths.append(path)
        log("e. workers, cache misses (2 CPUs: 1 vs 2 workers, one dnsperf per worker, a fresh server per run, "
            "nothing pinned)")
        out: dict[str, dict] = {"resolver": {}, "unbound": {}}
        for name, k in (("resolver", 1), ("resolver", 2), ("unbound", 1), ("unbound", 2)):
            runs = []
            for run in range(self.args.runs):
                if name == "unbound":  # the control: does a C server scale from 1 to 2 threads here?
                    server = self.start(servers.start_unbound, self.work, nsd.port, None,
                                        name=f"unbound-wmiss{k}-{run}", threads=k)
                else:
                    server = self.start(servers.start_resolver, self.work, nsd.port, None,
                                        name=f"resolver-wmiss{k}-{run}", extra=f"workers: {k}\n", metrics=False)
                try:
                    time.sleep(1.0)  # all workers up
                    cpu0, t0 = server.cpu(), time.monotonic()
                    results: list[dict] = [{} for _ in range(k)]

                    def load(j: int, port: int = server.port) -> None:
                        results[j] = dnsperf(port, paths[j], None, duration=self.args.duration, once=True,
                                             outstanding=MISS_OUTSTANDING, clients=8)

                    threads = [threading.Thread(target=load, args=(j,)) for j in range(k)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    cpu, wall = server.cpu() - cpu0, time.monotonic() - t0
                    res = {key: sum(r[key] for r in results) for key in ("sent", "completed", "lost", "qps")}
                    res.update(server_cpu_s=round(cpu, 3), server_cpus_busy=round(cpu / wall, 3),
                               qps_per_cpu_s=res["completed"] / cpu if cpu else None)
                    runs.append(res)
                    log(f"   {name} × {k} misses run {run + 1}: {res['qps']:.0f} qps, "
                        f"{res['server_cpus_busy']:.2f} CPUs busy, lost {res['lost']}")
                finally:
                    self.check_log(server)
                    self.stop(server)
            out[name][str(k)] = summarize(runs)
        ratios = {name: rows["2"]["median"]["qps"] / rows["1"]["median"]["qps"] if rows["1"]["median"].get("qps")
                  else None for name, rows in out.items()}
        return {"servers": out, "qps_ratio": ratios}

    # ---- f. memory
    def fill(self, server: Server, datafile: Path, target: int, count, budget: float) -> dict:
        """Query every name in ``datafile`` (up to 3 passes, at most ``budget`` seconds in all)
        until ``count()`` reaches ``target``."""
        t0 = time.monotonic()
        passes = []
        for _ in range(3):
            left = budget - (time.monotonic() - t0)
            if left < 5:
                break
            res = dnsperf(server.port, datafile, self.cpu_client, once=True, duration=int(left),
                          outstanding=MISS_OUTSTANDING, clients=FLOOD_CLIENTS, timeout=5)
            passes.append({k: res[k] for k in ("sent", "completed", "lost", "qps")})
            if count() >= target:
                break
        return {"fill_s": round(time.monotonic() - t0, 1), "passes": passes}

    def unbound_entries(self, server: Server) -> int:
        out = subprocess.run(["unbound-control", "-c", str(self.work / f"{server.name}.conf"), "stats_noreset"],
                             capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"^msg\.cache\.count=(\d+)", out, re.M)
        return int(m.group(1)) if m else 0

    def test_memory(self, nsd: Server) -> None:
        sizes = [100_000] if self.args.quick else [100_000, 1_000_000]
        log(f"f. memory: fill fresh caches with {', '.join(f'{n:,}' for n in sizes)} unique names")
        files = {n: write_lines(self.work / f"mem-{n}.txt", (f"m{i}.miss.bench.test A" for i in range(n)))
                 for n in sizes}
        out = {}
        for name in ("resolver", "unbound"):
            if name == "resolver":
                server = self.start(servers.start_resolver, self.work, nsd.port, self.cpu_server, name="resolver-mem")
                # The fill goes on until this many *fresh* entries (a SERVFAIL remembered for
                # 1 s is not a filled name); bytes per entry divide by all entries held.
                count = lambda s=server: int(servers.resolver_metric(s, "resolver_cache_entries",  # noqa: E731
                                                                     'state="fresh"'))
                total = lambda s=server: int(servers.resolver_metric(s, "resolver_cache_entries"))  # noqa: E731
            else:
                server = self.start(servers.start_unbound, self.work, nsd.port, self.cpu_server, name="unbound-mem",
                                    extended_stats=True)
                count = total = lambda s=server: self.unbound_entries(s)  # noqa: E731
            try:
                time.sleep(0.5)
                rss_empty, entries_empty = server.rss(), total()
                rows = {"rss_empty": rss_empty, "entries_empty": entries_empty}
                for n in sizes:
                    budget = FILL_BUDGET_PER_100K * n / 100_000
                    fill = self.fill(server, files[n], n, count, budget)
                    fresh, entries, rss = count(), total(), server.rss()
                    per = (rss - rss_empty) / max(1, entries - entries_empty)
                    rows[str(n)] = {"entries": entries, "fresh": fresh, "rss": rss, "bytes_per_entry": per, **fill}
                    if fresh < n:
                        self.notes.append(f"memory {name}: {fresh:,} of {n:,} names cached when the fill stopped "
                                          f"({fill['fill_s']:g} s, budget {budget:g} s, {len(fill['passes'])} "
                                          "pass(es)); bytes/entry uses the entries actually held")
                    log(f"   {name}: {entries:,} entries, RSS {rss / 2**20:.0f} MiB, "
                        f"{per:.0f} B/entry (fill {fill['fill_s']} s)")
                out[name] = rows
            finally:
                self.check_log(server)
                self.stop(server)
        self.results["tests"]["memory"] = out

    # ---- g. start-up to first answer
    def test_startup(self, nsd: Server) -> None:
        log("g. start-up to first answer (UDP probe every 10 ms)")
        starters = self.starters(nsd, "boot")
        out = {}
        for name, starter in starters.items():
            times = []
            for run in range(self.args.runs):
                server = starter()
                self.started.append(server)
                try:
                    waited = servers.wait_answer(server.port, f"boot{run}.miss.bench.test", 30.0)
                    elapsed = time.monotonic() - server.started
                    if waited is None:
                        self.notes.append(f"start-up {name}: no answer within 30 s; log: {server.log_tail(5)}")
                    else:
                        times.append(elapsed * 1000)
                finally:
                    self.check_log(server)
                    self.stop(server)
            out[name] = {"median": {"first_answer_ms": statistics.median(times) if times else None},
                         "runs_ms": times}
            log(f"   {name}: {', '.join(f'{t:.0f}' for t in times)} ms")
        self.results["tests"]["startup"] = out

    # ---- h. outage: the upstream breaks and comes back with new data
    def test_outage(self) -> None:
        """Each forwarder in its best serve-stale mode, a fresh instance per (server, mode),
        behind bench/faultproxy.py in front of two NSDs (old data / new data).  See
        bench/outage.py for the scenario."""
        a = self.args
        names = [outage.name(i) for i in range(a.outage_names)]
        modes = a.outage_modes
        log(f"h. outage: {len(names):,} names (TTL {outage.NAME_TTL} s), modes {', '.join(modes)}; after "
            f"{a.outage_wait:g} s two passes at {a.outage_rate:g} q/s from one socket, then restore with new data")
        nsd_old = self.start(servers.start_nsd, self.work, self.cpu_client, name="nsd-old", zone=outage.ZONE,
                             zone_writer=outage.zone_writer(len(names), 0), probe=outage.READY)
        nsd_new = self.start(servers.start_nsd, self.work, self.cpu_client, name="nsd-new", zone=outage.ZONE,
                             zone_writer=outage.zone_writer(len(names), 1), probe=outage.READY)
        proxy = self.start(servers.start_faultproxy, self.work, nsd_old.port, self.cpu_client)
        control = faultproxy.connect_control(proxy.control_port)
        if control.call("stats")["mode"] != "pass" or servers.wait_answer(proxy.port, outage.READY, 10) is None:
            raise RuntimeError(f"fault proxy not forwarding; log:\n{proxy.log_tail()}")
        w, up, cpu = self.work, proxy.port, self.cpu_server
        starters = {  # resolver with its defaults (no per-client override: one address is the point)
            "resolver": lambda n: servers.start_resolver(w, up, cpu, name=n, max_entries=None, wait=False,
                                                         per_client_override=False),
            "unbound": lambda n: servers.start_unbound(w, up, cpu, name=n, wait=False, extra=outage.UNBOUND_STALE),
            "dnsmasq": lambda n: servers.start_dnsmasq(w, up, cpu, name=n, wait=False, extra=outage.DNSMASQ_STALE),
        }
        starters = {k: v for k, v in starters.items() if k in a.outage_servers}
        runs: dict[str, dict] = {k: {} for k in starters}
        try:
            for i, mode in enumerate(modes):
                for name in self.order(starters, i):
                    server = starters[name](f"{name}-outage-{mode}")
                    self.started.append(server)
                    try:
                        server.wait_ready(outage.READY)
                        runs[name][mode] = outage.run_one(
                            server.port, control, mode, names, nsd_old.port, nsd_new.port, wait=a.outage_wait,
                            rate=a.outage_rate, fresh_limit=a.outage_fresh_limit,
                            log=lambda msg, n=name: log(f"{msg} [{n}]"), meter=lambda s=server: foreign_meter(s))
                        if not server.alive():
                            raise RuntimeError(f"{name} exited during the run; log: {server.log_tail(5)}")
                    except (RuntimeError, OSError, KeyError, ValueError) as e:
                        runs[name][mode] = {"error": f"{type(e).__name__}: {e}"}
                        self.notes.append(f"outage {name}/{mode}: {e}")
                        log(f"   {mode} [{name}] FAILED: {e}")
                        control.call(f"target {nsd_old.port}")
                        control.call("mode pass")
                    finally:
                        self.check_log(server)
                        self.stop(server)
        finally:
            control.close()
            for server in (proxy, nsd_new, nsd_old):
                self.check_log(server)
                self.stop(server)
        self.results["tests"]["outage"] = {
            "config": {"names": len(names), "wait": a.outage_wait, "rate": a.outage_rate, "modes": list(modes),
                       "servers": list(starters), "fresh_limit": a.outage_fresh_limit,
                       "unbound": outage.UNBOUND_STALE.split(), "dnsmasq": outage.DNSMASQ_STALE},
            "runs": runs,
        }

    @staticmethod
    def order(fwd: dict, run: int) -> list[str]:
        """Rotate the order of servers each run so no server always goes first (or last)."""
        names = list(fwd)
        k = run % len(names)
        return names[k:] + names[:k]

    # ---- everything
    def run(self) -> None:
        a = self.args
        self.make_files()
        log(f"workdir {self.work}; servers on CPU {self.cpu_server}, clients on CPU {self.cpu_client}")
        if "outage" not in a.skip:  # first: the longest test, and the one with its own upstreams
            self.test_outage()
        if all(t in a.skip for t in TESTS if t != "outage"):
            return
        nsd = self.start(servers.start_nsd, self.work, self.cpu_client)
        log(f"NSD on 127.0.0.1:{nsd.port}")
        if "hits" not in a.skip or "latency" not in a.skip:
            fwd = {
                "resolver": self.start(servers.start_resolver, self.work, nsd.port, self.cpu_server,
                                       extra=NATIVE_LOOP),
                PYTHON_LOOP: self.start(servers.start_resolver, self.work, nsd.port, self.cpu_server,
                                        name=PYTHON_LOOP, extra=PYTHON_LOOP_CONFIG),
                "unbound": self.start(servers.start_unbound, self.work, nsd.port, self.cpu_server),
                "dnsmasq": self.start(servers.start_dnsmasq, self.work, nsd.port, self.cpu_server),
            }
            log("forwarders: " + ", ".join(f"{n} 127.0.0.1:{s.port} (pid {s.pid})" for n, s in fwd.items()))
            for t, fn in (("hits", self.test_hits), ("latency", self.test_latency)):
                if t not in a.skip:
                    fn(fwd)
            for name, server in fwd.items():
                self.check_log(server)
                self.stop(server)
        if "misses" not in a.skip:
            self.test_misses(nsd)
        if "stale" not in a.skip:
            self.test_stale(nsd)
        if "workers" not in a.skip:
            self.test_workers(nsd)
        if "memory" not in a.skip:
            self.test_memory(nsd)
        if "startup" not in a.skip:
            self.test_startup(nsd)
        if "hosttier" not in a.skip:
            self.test_hosttier(nsd)


# --------------------------------------------------------------------- report
def retry_port_race(start, attempts: int = 3):
    """``start()``, again (new ports) if the port it picked was taken meanwhile by another process
    on a shared machine ("already in use" in the server's log)."""
    for attempt in range(attempts):
        try:
            return start()
        except RuntimeError as e:
            if "already in use" not in str(e) or attempt == attempts - 1:
                raise
            log(f"   port taken meanwhile, starting again: {str(e).splitlines()[0][:120]}")


def hosttier_section(h: dict) -> list[str]:
    """g2: the host cache tier on vs off (README "Cache levels")."""
    rows = []
    if "hits" in h:
        rows.append(["hit path (ns per datagram, in-process)", f"{h['hits']['off']:.0f}", f"{h['hits']['on']:.0f}",
                     f"{h['hits']['ratio']:.3f}"])
    if "misses" in h:
        rows.append(["miss path (µs CPU per miss, in-process)", f"{h['misses']['off']:.1f}",
                     f"{h['misses']['on']:.1f}", f"{h['misses']['ratio']:.3f}"])
    fm = h.get("flood_misses")
    if fm:
        off, on = fm["off"]["median"], fm["on"]["median"]
        rows.append(["cache-miss flood via NSD, QPS (pinned, fresh server per run)", fmt_int(off.get("qps")),
                     fmt_int(on.get("qps")), ratio(on.get("qps"), off.get("qps"))])
        rows.append(["cache-miss flood, QPS per server CPU-s", fmt_int(off.get("qps_per_cpu_s")),
                     fmt_int(on.get("qps_per_cpu_s")), ratio(on.get("qps_per_cpu_s"), off.get("qps_per_cpu_s"))])
    st = h.get("startup") or {}
    if st.get("first_answer_ms_on"):
        rows.append([f"start-up to first answer ({st['entries']:,} entries on disk), ms",
                     f"{st['first_answer_ms_off']:.0f}", f"{st['first_answer_ms_on']:.0f}",
                     f"{st['first_answer_ms_on'] / st['first_answer_ms_off']:.2f}"])
    for mode in ("off", "on"):
        w = h.get("workers", {}).get(mode)
        if w:
            for k, v in w["resolver"].items():
                if mode == "off":
                    other = h["workers"].get("on", {}).get("resolver", {}).get(k, {}).get("median", {})
                    rows.append([f"cache hits/s, workers {k}", fmt_int(v["median"].get("qps")),
                                 fmt_int(other.get("qps")),
                                 ratio(other.get("qps"), v["median"].get("qps"))])
    out = ["**g2. Host cache tier, off vs on** (bench/hosttier.py and cache-hit floods as in e.)", "",
           md_table(["measure", "tier off", "tier on", "on / off"], rows), ""]
    if st:
        rss = st.get("rss", {})
        extra = f"disk {st['disk_bytes_per_entry']:.0f} bytes per entry"
        if rss:
            extra += (f"; RSS right after start {fmt_mib(rss['after_start']['VmRSS'])} with "
                      f"{st['entries']:,} entries on disk, {st.get('rss_bytes_per_adopted_entry', 0):.0f} bytes "
                      f"per entry read into the process cache")
        if st.get("open_ms") is not None:
            extra += f"; opening the {st['entries']:,}-entry file takes {st['open_ms']:.1f} ms"
        if st.get("snapshot"):
            extra += f"; the snapshot engine's first answer with the same entries: {st['snapshot']['first_answer_ms']:.0f} ms"
        out += [extra + ".", ""]
    return out


def fmt_int(x) -> str:
    return "—" if x is None else f"{x:,.0f}"


def fmt_us(x) -> str:
    return "—" if x is None else (f"{x:.0f} µs" if x < 10_000 else f"{x / 1000:.1f} ms")


def fmt_mib(x) -> str:
    return "—" if x is None else f"{x / 2**20:.0f} MiB"


def ratio(a, b, digits: int = 2) -> str:
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.{digits}f}×"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *map(line, rows)])


def report(results: dict) -> str:
    t = results["tests"]
    meta = results["meta"]
    out = [
        f"### Benchmark ({meta['date']}, {'quick' if meta['quick'] else 'full'} run)",
        "",
        f"{meta['nproc']} CPUs ({meta['cpu_model']}), {meta['kernel']}; each server pinned to CPU "
        f"{meta['server_cpu']}, load generators and NSD on CPU {meta['client_cpu']}"
        f"{', all at nice ' + str(meta['nice']) if meta['nice'] else ''}. "
        + (f"Medians of {meta['runs']} run(s) of {meta['duration']:g} s. " if set(t) - {"outage"} else
           "One run per server and mode. ")
        + f"{meta['versions']}.",
        "",
    ]
    head = ["test", "server", "QPS", "QPS per server CPU-s", "server CPU", "p50", "p99", "lost", "RSS"]
    rows = []

    def med(test: str, server: str) -> dict | None:
        entry = t.get(test, {}).get(server)
        return entry["median"] if isinstance(entry, dict) and "median" in entry else None

    def add(label: str, test: str, show_latency: bool = False, fixed: int | None = None) -> None:
        if test not in t:
            return
        show_rate = show_latency or fixed
        fixed = fixed or LATENCY_RATE
        for server in (FORWARDERS[0], PYTHON_LOOP, *FORWARDERS[1:], CEILING):
            m = med(test, server)
            if m is None:
                continue
            rows.append([label, server,
                         fmt_int(m.get("qps")) if not show_rate else f"{fixed:,} (fixed)",
                         fmt_int(m.get("qps_per_cpu_s")),
                         f"{m['server_cpu_util'] * 100:.0f}%" if m.get("server_cpu_util") is not None else "—",
                         fmt_us(m.get("p50_us")), fmt_us(m.get("p99_us")),
                         fmt_int(m.get("lost")), fmt_mib(m.get("rss_bytes"))])
        r = med(test, "resolver")
        for other in (PYTHON_LOOP, "unbound", "dnsmasq", CEILING):
            o = med(test, other)
            if r is None or o is None:
                continue
            rows.append([label, f"**resolver/{other}**",
                         ratio(r.get("qps"), o.get("qps")) if not show_rate else "",
                         ratio(r.get("qps_per_cpu_s"), o.get("qps_per_cpu_s")),
                         "",
                         ratio(r.get("p50_us"), o.get("p50_us")) if show_latency else "",
                         ratio(r.get("p99_us"), o.get("p99_us")) if show_latency else "", "", ""])

    add("a. cache hits (flood)", "hits")
    add(f"a1. cache hits @ {HIT_RATE:,} q/s", "hits_rate", fixed=HIT_RATE)
    add(f"b. latency @ {LATENCY_RATE:,} q/s", "latency", show_latency=True)
    add("c. cache misses (unique names)", "misses")
    s = med("stale", "resolver")
    if s is not None:
        rows.append(["d. serve-stale (recheck timer)", "resolver", fmt_int(s.get("qps")),
                     fmt_int(s.get("qps_per_cpu_s")),
                     f"{s['server_cpu_util'] * 100:.0f}%" if s.get("server_cpu_util") is not None else "—",
                     "", "", fmt_int(s.get("lost")), fmt_mib(s.get("rss_bytes"))])
        f = t["stale"]["resolver"]["fresh_same_instance"]["median"]
        rows.append(["d. serve-stale (recheck timer)", "resolver, fresh hits (same instance)", fmt_int(f.get("qps")),
                     fmt_int(f.get("qps_per_cpu_s")),
                     f"{f['server_cpu_util'] * 100:.0f}%" if f.get("server_cpu_util") is not None else "—",
                     "", "", fmt_int(f.get("lost")), ""])
        rows.append(["d. serve-stale (recheck timer)", "**stale/fresh (same instance)**",
                     ratio(s.get("qps"), f.get("qps")), ratio(s.get("qps_per_cpu_s"), f.get("qps_per_cpu_s")),
                     "", "", "", "", ""])
        h = med("hits", "resolver")
        if h is not None:
            rows.append(["d. serve-stale (recheck timer)", "**stale/resolver hits (test a)**",
                         ratio(s.get("qps"), h.get("qps")), ratio(s.get("qps_per_cpu_s"), h.get("qps_per_cpu_s")),
                         "", "", "", "", ""])
    workers = t.get("workers", {}).get("resolver")
    if isinstance(workers, str):
        rows.append(["e. workers scaling", "resolver", workers, "", "", "", "", "", ""])
    if rows:
        out += [md_table(head, rows), ""]
    if isinstance(workers, dict):
        forced = t["workers"].get("forced_on_one_cpu")
        out += ["**e. Workers scaling** (cache-hit flood, k workers pinned to k cores, dnsperf on CPU "
                f"{meta['client_cpu']}; efficiency = QPS(k) / (k × QPS(1)))"
                + (" — FORCED onto one CPU: exercises the code only, not a measurement" if forced else ""),
                "",
                md_table(["workers", "cores", "QPS", "QPS per server CPU-s", "server cores busy", "efficiency",
                          "RSS (all processes)"],
                         [[k, ",".join(map(str, v["cpus"])), fmt_int(v["median"].get("qps")),
                           fmt_int(v["median"].get("qps_per_cpu_s")),
                           f"{v['median']['server_cpu_util'] * 100:.0f}%" if v["median"].get("server_cpu_util") else "—",
                           f"{v['scaling_efficiency']:.2f}" if v.get("scaling_efficiency") else "—",
                           fmt_mib(v["median"].get("rss_bytes"))] for k, v in workers.items()]), ""]

    shared = t.get("workers_shared")
    if shared:
        out += ["**e. Workers on 2 CPUs** (cache-hit flood; server and dnsperf unpinned and sharing both CPUs, "
                "so 2 workers cannot get 2 whole cores; per-CPU-second cost is the scaling measure here: "
                "1.00 = a second worker adds no overhead; balance = least busy / busiest worker)",
                "",
                md_table(["workers", "QPS", "server CPUs busy", "QPS per server CPU-s", "worker balance", "RSS"],
                         [[k, fmt_int(v["median"].get("qps")), f"{v['median'].get('server_cpus_busy', 0):.2f}",
                           fmt_int(v["median"].get("qps_per_cpu_s")),
                           f"{v['median']['worker_balance']:.2f}" if v["median"].get("worker_balance") else "—",
                           fmt_mib(v["median"].get("rss_bytes"))] for k, v in shared["resolver"].items()]),
                "",
                f"2 workers / 1 worker: QPS {shared['qps_ratio']:.2f}×, QPS per server CPU-s "
                f"{shared['cost_ratio']:.2f}×", ""]
        misses = shared.get("misses")
        if misses:
            out += ["**e. Workers on 2 CPUs, cache misses** (a miss costs resolver far more than it costs dnsperf "
                    "and NSD, so the server rather than the load generator should be the limit; one dnsperf per "
                    "worker, fresh server per run, unique names, nothing pinned)",
                    "",
                    md_table(["server", "workers / threads", "QPS", "server CPUs busy", "QPS per server CPU-s",
                              "lost"],
                             [[name, k, fmt_int(v["median"].get("qps")),
                               f"{v['median'].get('server_cpus_busy', 0):.2f}",
                               fmt_int(v["median"].get("qps_per_cpu_s")), fmt_int(v["median"].get("lost"))]
                              for name, rows in misses["servers"].items() for k, v in rows.items()]),
                    "",
                    "2 / 1: " + ", ".join(f"{name} {r:.2f}×" for name, r in misses["qps_ratio"].items() if r)
                    + " (linear would be 2×; Unbound with `num-threads: 2` is the control for what this machine "
                      "allows)", ""]

    if "memory" in t:
        mem_rows = []
        for server, rowsd in t["memory"].items():
            for key, v in rowsd.items():
                if isinstance(v, dict):
                    mem_rows.append([server, f"{int(key):,}", f"{v['entries']:,}", fmt_mib(rowsd["rss_empty"]),
                                     fmt_mib(v["rss"]), fmt_int(v["bytes_per_entry"]), f"{v['fill_s']:g} s"])
        out += ["**f. Memory** (fresh instance, cache filled with unique names; bytes per entry = "
                "(RSS − RSS empty) / entries; entries from `resolver_cache_entries` / unbound `msg.cache.count`)",
                "",
                md_table(["server", "names queried", "entries", "RSS empty", "RSS full", "bytes/entry", "fill time"],
                         mem_rows), ""]
    if "startup" in t:
        st = t["startup"]
        out += ["**g. Start-up to first answer** (spawn → first NOERROR answer, UDP probe every 10 ms)", "",
                md_table(["server", "median", "runs"],
                         [[n, f"{v['median']['first_answer_ms']:.0f} ms" if v["median"]["first_answer_ms"] else "—",
                           ", ".join(f"{x:.0f}" for x in v["runs_ms"])] for n, v in st.items()]), ""]
    if "hosttier" in t:
        out += hosttier_section(t["hosttier"])
    if "outage" in t:
        out += outage.report_section(t["outage"], md_table)
    notes = list(results.get("notes", []))
    disturbed_tests = []
    for test, per_server in t.items():
        if isinstance(per_server, dict):
            for server, entry in per_server.items():
                if isinstance(entry, dict) and entry.get("disturbed_runs"):
                    disturbed_tests.append(f"{test}/{server} {entry['disturbed_runs']} of {len(entry['runs'])}")
    if disturbed_tests:
        notes.append(
            f"runs during which other processes used more than {DISTURBED:.0%} of the server's core "
            f"(a shared machine): {', '.join(disturbed_tests)}; load average {meta['loadavg_start'][0]:.1f} "
            f"at start, {meta['loadavg_end'][0]:.1f} at end")
    if notes:
        out += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def versions() -> str:
    def first(argv, pattern):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            m = re.search(pattern, p.stdout + p.stderr)
            return m.group(1) if m else "?"
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    unbound = first(["unbound", "-V"], r"Version (\S+)")
    dnsmasq = first(["/usr/sbin/dnsmasq", "-v"], r"version (\S+)")
    nsd = first(["nsd", "-v"], r"NSD version (\S+)")
    dnsperf_version = first(["dnsperf", "-h"], r"Version (\S+)")
    return (f"Python {platform.python_version()}, Unbound {unbound}, dnsmasq {dnsmasq}, NSD {nsd}, "
            f"dnsperf {dnsperf_version}")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 run of 5 s each, memory test at 100k only")
    p.add_argument("--runs", type=int, help="runs per test and server (default 3; --quick 1)")
    p.add_argument("--duration", type=float, help="seconds per load run (default 10; --quick 5)")
    p.add_argument("--server-cpu", type=int, default=1, help="CPU the server under test is pinned to")
    p.add_argument("--client-cpu", type=int, default=0, help="CPU for dnsperf, the latency client and NSD")
    p.add_argument("--skip", action="append", default=[], choices=TESTS, help="skip a test")
    p.add_argument("--only", action="append", default=[], choices=TESTS,
                   help="run only this test (repeatable); e.g. --only outage")
    p.add_argument("--outage-names", type=int, metavar="N",
                   help="outage test: names warmed and asked (default 1000; --quick 200)")
    p.add_argument("--outage-wait", type=float, metavar="S",
                   help="outage test: seconds between breaking the upstream and the first pass (default 10; --quick 3)")
    p.add_argument("--outage-rate", type=float, default=200.0, metavar="QPS",
                   help="outage test: queries per second of the two passes (default 200)")
    p.add_argument("--outage-modes", default=",".join(outage.MODES), metavar="M,M",
                   help=f"outage test: upstream failure modes (default {','.join(outage.MODES)})")
    p.add_argument("--outage-servers", default=",".join(FORWARDERS), metavar="S,S",
                   help=f"outage test: servers (default {','.join(FORWARDERS)})")
    p.add_argument("--outage-fresh-limit", type=float, default=30.0, metavar="S",
                   help="outage test: give up polling for fresh answers after S seconds (default 30)")
    p.add_argument("--hosttier-entries", type=int, metavar="N",
                   help="host tier test: entries on disk for the start-up measure (default 1000000; --quick 100000; "
                        "0 = only the floods)")
    p.add_argument("--workers-max", type=int, default=0, metavar="K",
                   help="largest `workers` value to test (default: the CPUs left after the client's, up to 8)")
    p.add_argument("--workers-force", action="store_true",
                   help="run the workers test even with only 2 CPUs (1 and 2 workers share the server CPU: "
                        "checks the code path, measures nothing)")
    p.add_argument("--quiet-wait", type=float, default=5.0, metavar="S",
                   help="before each load run, wait up to S seconds for other processes to leave the "
                        "server's CPU alone (default 5; 0 = don't wait)")
    p.add_argument("--nice", type=int, default=0, metavar="N",
                   help="run this script and everything it starts at nice level N (e.g. -10 on a shared "
                        "machine to take CPU from other users' processes; needs root; default 0)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--results", default=str(RESULTS), metavar="DIR",
                   help="where latest.json and the servers' logs go (default bench/results)")
    p.add_argument("--report", metavar="JSON", help="only print the Markdown report of a saved run "
                   "(e.g. bench/results/latest.json)")
    args = p.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.duration = args.duration or (5.0 if args.quick else 10.0)
    if args.only:
        args.skip = [t for t in TESTS if t not in args.only]
    args.outage_names = args.outage_names or (200 if args.quick else 1000)
    if args.hosttier_entries is None:
        args.hosttier_entries = 100_000 if args.quick else 1_000_000
    args.outage_wait = args.outage_wait if args.outage_wait is not None else (3.0 if args.quick else 10.0)
    args.outage_modes = [m for m in args.outage_modes.split(",") if m]
    args.outage_servers = [s for s in args.outage_servers.split(",") if s]
    if not set(args.outage_modes) <= set(outage.MODES) or not set(args.outage_servers) <= set(FORWARDERS):
        p.error(f"--outage-modes takes {','.join(outage.MODES)}; --outage-servers takes {','.join(FORWARDERS)}")
    if not 1 <= args.outage_names <= 60_000 or not 0 <= args.outage_wait <= 600 or not 1 <= args.outage_rate <= 50_000:
        p.error("--outage-names must be 1..60000, --outage-wait 0..600 s, --outage-rate 1..50000 q/s")
    if not 1 <= args.runs <= 20 or not 1 <= args.duration <= 120 or not 0 <= args.quiet_wait <= 120:
        p.error("--runs must be 1..20, --duration 1..120 and --quiet-wait 0..120 seconds")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:  # re-print the Markdown report of an earlier run
        print(report(json.loads(Path(args.report).read_text())))
        return 0
    needed = ["nsd", "taskset"]
    if any(t not in args.skip for t in TESTS if t != "outage"):
        needed += ["unbound", "unbound-control", "dnsperf", "/usr/sbin/dnsmasq"]
    if "outage" not in args.skip:
        needed += [{"unbound": "unbound", "dnsmasq": "/usr/sbin/dnsmasq"}[s] for s in args.outage_servers
                   if s != "resolver"]
    for tool in needed:
        if not shutil.which(tool):
            print(f"bench: {tool} not found (apt-get install nsd unbound dnsmasq-base dnsperf)", file=sys.stderr)
            return 2
    cpus = args.cpus = sorted(os.sched_getaffinity(0))
    if args.server_cpu not in cpus or args.client_cpu not in cpus or args.server_cpu == args.client_cpu:
        print(f"bench: need two distinct usable CPUs (have {cpus}); see --server-cpu/--client-cpu", file=sys.stderr)
        return 2
    global SERVER_CPU, CLIENT_CPU, QUIET_WAIT
    SERVER_CPU, CLIENT_CPU, QUIET_WAIT = args.server_cpu, args.client_cpu, args.quiet_wait
    os.sched_setaffinity(0, {args.client_cpu})  # this script (latency client) and everything it starts
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by servers and dnsperf
    become_subreaper()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    signal.signal(signal.SIGHUP, signal.default_int_handler)

    load_start = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="resolver-bench-"))
    bench = Bench(args, workdir)
    t0 = time.monotonic()
    failed = None
    try:
        bench.run()
    except KeyboardInterrupt:
        failed = "interrupted"
        log("interrupted: stopping servers")
    except Exception as e:  # report what we have, then fail
        failed = f"{type(e).__name__}: {e}"
        log(f"FAILED: {failed}")
    finally:
        bench.stop_all()
        logs = Path(args.results) / "logs"
        shutil.rmtree(logs, ignore_errors=True)  # only this run's logs
        logs.mkdir(parents=True, exist_ok=True)
        for f in workdir.glob("*.log"):
            shutil.copy(f, logs / f.name)
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    results = bench.results
    results["notes"] = bench.notes + ([f"run failed: {failed}"] if failed else [])
    results["meta"] = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "quick": args.quick, "runs": args.runs, "duration": args.duration,
        "nproc": os.cpu_count(), "cpu_model": cpu_model(), "kernel": f"Linux {platform.release()}",
        "server_cpu": args.server_cpu, "client_cpu": args.client_cpu, "nice": args.nice, "versions": versions(),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "git": subprocess.run(["git", "-C", str(BENCH.parent), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip(),
    }
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "latest.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(report(results))
    log(f"done in {results['meta']['elapsed_s']:.0f} s; JSON in {results_dir / 'latest.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
