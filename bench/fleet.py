#!/usr/bin/env python3
"""The fleet cache tier (README "Fleet"): what it costs, and what it buys in an outage.

    .venv/bin/python bench/fleet.py                       # everything
    .venv/bin/python bench/fleet.py --only hits,misses    # a part: hits, misses, outage
    .venv/bin/python bench/fleet.py --runs 3 --duration 5 --json out.json

Everything on 127.0.0.1: NSD (bench/servers.py's zone) as the upstream, a real
redis-server (``--save '' --appendonly no``) as the fleet, resolvers started as
``python -m resolver`` processes, dnsperf as the load.

* **hits**: dnsperf over 1,000 cached names, fleet off vs on (Redis up), runs
  alternated so drift on a shared machine hits both alike.  A hit never reaches
  the fleet tier, so the goal is "unchanged within noise".
* **misses**: dnsperf over unique names (NSD's wildcard), fleet off vs on: every
  miss also reads one key (raced against the upstream) and writes one behind.
* **outage**: three resolvers sharing the Redis.  A and B warm different halves of
  1,000 names (TTL 1 s, bench.test's ``sN.short``); their TTLs pass; the upstream
  is blackholed (NSD SIGSTOPped: queries go unanswered); C starts empty and is
  asked all 1,000 names (32 in flight, one client address): answered % (NOERROR
  with the record), EDE 3 %, p50/p99.  Then the same with C's fleet off: the node
  that never saw the names has nothing to serve.  Default settings otherwise
  (``stale.client_timeout`` 1.8 s, the pool marks the upstream down after its
  failures, after which stale answers go out at once).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import dns.edns  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402

import servers  # noqa: E402
from servers import LOOPBACK, Server, free_port  # noqa: E402

PARTS = ("hits", "misses", "outage")
SECRET = "bench-fleet-secret-0123456789abcdef0123456789"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_redis(workdir: Path) -> Server:
    port = free_port()
    argv = ["redis-server", "--bind", LOOPBACK, "--port", str(port), "--dir", str(workdir), "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--maxmemory", "256mb",
            "--maxmemory-policy", "volatile-ttl"]
    server = Server("redis", argv, port, workdir, None)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() \
                == "PONG":
            return server
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def fleet_extra(redis: Server | None, workdir: Path) -> str:
    """The fleet section for a resolver (none: the tier off)."""
    if redis is None:
        return ""
    key = workdir / "fleet.key"
    key.write_text(SECRET + "\n")
    return f'fleet:\n  url: "redis://{LOOPBACK}:{redis.port}/0"\n  secret_file: "{key}"\n'


def start_resolver(workdir: Path, nsd: Server, name: str, redis: Server | None, cpu, wait: bool = True,
                   extra: str = "") -> Server:
    return servers.start_resolver(workdir, nsd.port, cpu, name=name, extra=fleet_extra(redis, workdir) + extra,
                                  wait=wait)


def dnsperf(port: int, datafile: Path, duration: float, cpu) -> dict:
    argv = ["dnsperf", "-s", LOOPBACK, "-p", str(port), "-d", str(datafile), "-c", "1", "-q", "100",
            "-t", "2", "-l", str(duration), "-O", "suppress=timeout,congestion"]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60).stdout
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if not qps:
        raise RuntimeError(f"dnsperf failed: {out[-1500:]}")
    return {"qps": float(qps.group(1)), "lost": int(lost.group(1)) if lost else 0}


def alternate(args, workdir: Path, nsd: Server, redis: Server, datafile_for, warm) -> dict:
    """Runs alternated off/on; each run on a fresh resolver (so misses stay misses)."""
    out = {"off": [], "on": []}
    for run in range(args.runs):
        for mode in ("off", "on") if run % 2 == 0 else ("on", "off"):
            name = f"resolver-{mode}-{run}-{len(out[mode])}"
            r = start_resolver(workdir, nsd, name, redis if mode == "on" else None, args.server_cpu)
            try:
                warm(r)
                res = dnsperf(r.port, datafile_for(run, mode), args.duration, args.client_cpu)
                res["cpu_s"] = r.cpu()
                if mode == "on":
                    reads = servers.resolver_metric(r, "resolver_fleet_read_duration_seconds_count")
                    total = servers.resolver_metric(r, "resolver_fleet_read_duration_seconds_sum")
                    res["fleet_reads"] = reads
                    res["fleet_read_mean_ms"] = 1000 * total / reads if reads else None
                    res["fleet_timeouts"] = servers.resolver_metric(r, "resolver_fleet_timeouts")
                out[mode].append(res)
                log(f"  {name}: {res['qps']:.0f} q/s, lost {res['lost']}")
            finally:
                r.stop()
    return {mode: {"qps_median": statistics.median(x["qps"] for x in runs), "runs": runs}
            for mode, runs in out.items()}


def part_hits(args, workdir, nsd, redis) -> dict:
    names = [f"h{i}.bench.test" for i in range(1000)]
    datafile = workdir / "hits.txt"
    datafile.write_text("".join(f"{n} A\n" for n in names))

    def warm(r):
        ask_all(r.port, names, 32)

    return alternate(args, workdir, nsd, redis, lambda run, mode: datafile, warm)


def part_misses(args, workdir, nsd, redis) -> dict:
    count = int(args.duration * 40_000)

    def datafile_for(run, mode):
        path = workdir / f"misses-{run}-{mode}.txt"
        path.write_text("".join(f"u{run}-{mode}-{i}.miss.bench.test A\n" for i in range(count)))
        return path

    return alternate(args, workdir, nsd, redis, datafile_for, lambda r: None)


def ask_one(port: int, name: str, timeout: float = 6.0) -> tuple[float, int | None, bool, list[int]]:
    q = dns.message.make_query(name, "A", use_edns=0)
    started = time.perf_counter()
    try:
        r = dns.query.udp(q, LOOPBACK, port=port, timeout=timeout)
    except Exception:  # a timeout: counted as unanswered
        return time.perf_counter() - started, None, False, []
    ede = [o.code for o in r.options if isinstance(o, dns.edns.EDEOption)]
    return time.perf_counter() - started, r.rcode(), bool(r.answer), ede


def ask_all(port: int, names: list[str], inflight: int) -> list[tuple]:
    with concurrent.futures.ThreadPoolExecutor(inflight) as pool:
        return list(pool.map(lambda n: ask_one(port, n), names))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def outage_once(args, workdir: Path, fleet_on_c: bool) -> dict:
    nsd_dir = workdir / ("nsd-on" if fleet_on_c else "nsd-off")
    nsd_dir.mkdir()
    nsd = servers.start_nsd(nsd_dir, None)
    redis = start_redis(workdir)
    started = []
    try:
        names = [f"s{i}.short.bench.test" for i in range(1000)]
        a = start_resolver(workdir, nsd, "outage-a", redis, args.server_cpu)
        b = start_resolver(workdir, nsd, "outage-b", redis, args.server_cpu)
        started += [a, b]
        ask_all(a.port, names[:500], 32)
        ask_all(b.port, names[500:], 32)
        deadline = time.monotonic() + 30
        while int(subprocess.run(["redis-cli", "-p", str(redis.port), "dbsize"], capture_output=True,
                                 text=True).stdout.strip() or 0) < 1000 and time.monotonic() < deadline:
            time.sleep(0.1)
        stored = int(subprocess.run(["redis-cli", "-p", str(redis.port), "dbsize"], capture_output=True,
                                    text=True).stdout.strip())
        time.sleep(2.0)  # every TTL (1 s) has passed: what the fleet holds is stale
        nsd.signal_group(signal.SIGSTOP)  # the blackhole: queries are taken in and never answered
        c = start_resolver(workdir, nsd, "outage-c", redis if fleet_on_c else None, args.server_cpu, wait=False)
        started.append(c)
        if servers.wait_answer(c.port, "localhost", 20) is None:  # answered locally: up without the upstream
            raise RuntimeError(f"node C did not start: {c.log_tail()}")
        t0 = time.perf_counter()
        results = ask_all(c.port, names, 32)
        wall = time.perf_counter() - t0
        latencies = [r[0] for r in results]
        answered = sum(1 for r in results if r[1] == dns.rcode.NOERROR and r[2])
        stale = sum(1 for r in results if 3 in r[3])
        fleet_metrics = {m: servers.resolver_metric(c, f"resolver_fleet_{m}") for m in
                         ("reads", "read_skips", "timeouts", "errors", "breaker_opened")} if fleet_on_c else {}
        return {"c_fleet_metrics": fleet_metrics,
                "fleet_on_c": fleet_on_c, "names": len(names), "stored_in_fleet": stored,
                "answered_pct": 100.0 * answered / len(names), "ede3_pct": 100.0 * stale / len(names),
                "servfail": sum(1 for r in results if r[1] == dns.rcode.SERVFAIL),
                "p50_ms": pct(latencies, 0.5) * 1000, "p99_ms": pct(latencies, 0.99) * 1000,
                "max_ms": max(latencies) * 1000, "wall_s": wall}
    finally:
        for s in started:
            s.stop()
        nsd.signal_group(signal.SIGCONT)
        nsd.stop()
        redis.stop()


def part_outage(args, workdir, nsd, redis) -> dict:
    return {"fleet_on": outage_once(args, workdir, True), "fleet_off": outage_once(args, workdir, False)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(PARTS))
    p.add_argument("--runs", type=int, default=4, help="runs per mode (alternated)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per dnsperf run")
    p.add_argument("--server-cpu", default=None)
    p.add_argument("--client-cpu", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    parts = [x for x in args.only.split(",") if x]
    for tool in ("nsd", "redis-server", "redis-cli", "dnsperf"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    results = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "load": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        workdir = Path(tmp)
        nsd = redis = None
        try:
            if {"hits", "misses"} & set(parts):
                nsd = servers.start_nsd(workdir, None)
                redis = start_redis(workdir)
            for part in parts:
                log(f"part {part}")
                results[part] = globals()[f"part_{part}"](args, workdir, nsd, redis)
        finally:
            for s in (redis, nsd):
                if s is not None:
                    s.stop()
    results["load_after"] = os.getloadavg()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
