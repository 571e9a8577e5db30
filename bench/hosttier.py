"""The host cache tier's costs: hit path, miss path, start-up, memory and disk, on vs off.

    .venv/bin/python bench/hosttier.py                      # everything, 1M entries on disk
    .venv/bin/python bench/hosttier.py --only hits,misses   # a part (hits, misses, startup, disk)
    .venv/bin/python bench/hosttier.py --entries 100000 --json out.json

* **hits**: ns per datagram through the real UDP callback (as bench/hitpath.py),
  with the host tier attached below the cache (and its writer thread running) vs
  without, alternating on/off so drift on a shared machine hits both alike.  The
  hit path never reads the tier, so the goal is "unchanged within noise".
* **misses**: CPU time per cache miss through a real ``App`` (bench/misspath.py's
  workload: real sockets, 50 in flight, a fake upstream), tier on vs off,
  alternating.  The figure includes the client's and the fake upstream's CPU
  (the same in both), so the relative cost *of the resolver* is somewhat higher
  than the ratio shown; ``bench/misspath.py --config-extra`` gives instruction
  counts under valgrind (pessimistic for the tier: valgrind's ~50x slowdown makes
  the writer's batches ~50x smaller).
* **startup**: a file with ``--entries`` entries (written through the tier's own
  batch writer), then ``python -m resolver`` started on it: milliseconds from the
  spawn to the first answer of a name that is only on disk (UDP probe every 10 ms),
  against the same with the tier off; and the snapshot engine loading the same
  entries, for comparison (``--snapshot``).
* **disk**: bytes on disk per entry (file blocks / entries) and the resolver's RSS
  right after start-up with the file open (opened, not loaded: the map's pages are
  only resident once read) and after 100k of its names were asked (adopted into
  the in-process cache, which then holds them like any entry).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import dns.message  # noqa: E402

from resolver import wire  # noqa: E402
from resolver.cache import snapshot  # noqa: E402
from resolver.cache.host import HostTier  # noqa: E402
from resolver.cache.store import Cache, Entry  # noqa: E402
from resolver.clock import SystemClock  # noqa: E402
from resolver.config import Config, PersistConfig  # noqa: E402

PARTS = ("hits", "misses", "startup", "disk")
TTL = 86_400


def _name(i: int) -> str:
    return f"d{i}.disk.bench.test"


def _template(clock: SystemClock) -> Entry:
    """One cached A answer; the body's owner is a pointer to the question, so it fits every name."""
    q = dns.message.make_query("template.disk.bench.test", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, TTL, "IN", "A", "192.0.2.1"))
    data = q.to_wire()
    parsed = wire.parse_query(data)
    prepared = wire.parse_reply(r.to_wire(), parsed.question, min_ttl=0, max_ttl=TTL, max_negative_ttl=3600)
    return Cache(1).put(parsed.key, prepared, clock.monotonic(), 86_400)


def _key(i: int) -> bytes:
    data = dns.message.make_query(_name(i), "A", use_edns=0).to_wire()
    return wire.parse_query(data).key


def fill(path: str, count: int, map_size: int) -> float:
    """Write ``count`` entries through the tier's batch writer; seconds taken."""
    clock = SystemClock()
    tier = HostTier(PersistConfig(path=path, map_size=map_size, max_bytes=int(map_size * 0.8),
                                  max_entries=count + 1), clock)
    assert tier.open(), "cannot open the bench file"
    entry = _template(clock)
    offset = clock.wall() - clock.monotonic()
    started = time.perf_counter()
    batch = 10_000
    for start in range(0, count, batch):
        values = []
        for i in range(start, min(count, start + batch)):
            key = _key(i)
            values.append((key, snapshot.encode_value(key, entry, offset)))
        assert tier._write_values(tier._env, values) == len(values)
    took = time.perf_counter() - started
    assert tier.entries() == count, (tier.entries(), count)
    tier.stop()
    return took


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dead_upstream() -> tuple[socket.socket, int]:
    """A bound UDP socket that never answers: the names must come from the cache."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def _ask(port: int, name: str, timeout: float) -> bool:
    q = dns.message.make_query(name, "A", use_edns=0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(q.to_wire(), ("127.0.0.1", port))
            reply = dns.message.from_wire(s.recv(4096))
        except (OSError, dns.exception.DNSException):
            return False
    return reply.rcode() == 0 and bool(reply.answer)


def _rss(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def start_and_time(persist_yaml: str, probe: str, workdir: Path, limit: float = 60.0) -> tuple[float | None, subprocess.Popen, int]:
    """Spawn a resolver; ms from spawn to the first answer of ``probe``; the process and its port."""
    up, up_port = _dead_upstream()
    port = _free_port()
    conf = workdir / f"start-{port}.yaml"
    conf.write_text(f'listen: ["127.0.0.1:{port}"]\nupstreams: ["127.0.0.1:{up_port}"]\n'
                    "metrics: {enabled: false}\nadmin: {enabled: false}\n"
                    f"cache:\n  max_entries: 1100000\n{persist_yaml}")
    log = open(workdir / f"start-{port}.log", "w")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "resolver", "--config", str(conf)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=log)
    proc._bench_upstream = up  # kept open while the process runs
    while time.monotonic() - started < limit and proc.poll() is None:
        if _ask(port, probe, 0.01):
            return (time.monotonic() - started) * 1000, proc, port
    return None, proc, port


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- parts
def bench_hits(rounds: int, n: int) -> dict:
    from resolver.serve.acl import AccessControl
    from resolver.serve.listeners import Listeners, _UdpProtocol
    from resolver.serve.ratelimit import RateLimiter
    from resolver.serve.pipeline import Pipeline
    from resolver.stats import Stats

    class _Null:
        def sendto(self, data, addr):
            pass

    class _Pool:
        epoch = 0

    config, clock = Config(), SystemClock()
    with tempfile.TemporaryDirectory() as tmp:
        tier = HostTier(PersistConfig(path=f"{tmp}/c.lmdb"), clock)
        assert tier.open()
        tier.start()  # its writer thread runs, as in the server
        cache = Cache(1000)
        pipeline = Pipeline(config, cache, _Pool(), clock, Stats())
        proto = _UdpProtocol(Listeners(pipeline, config.server, pipeline.stats, AccessControl(config.security),
                                       pipeline.limits, RateLimiter(config.security)))
        proto.transport = _Null()
        data = dns.message.make_query("www.example.com", "A", use_edns=0).to_wire()
        q = wire.parse_query(data)
        r = dns.message.make_response(dns.message.from_wire(data))
        r.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "A", "192.0.2.1"))
        cache.put(q.key, wire.parse_reply(r.to_wire(), q.question, min_ttl=0, max_ttl=86400, max_negative_ttl=3600),
                  clock.monotonic(), 86400)
        addr = ("127.0.0.1", 40000)
        out = {"off": [], "on": []}
        for _ in range(rounds):
            for mode in ("off", "on"):
                cache.lower = tier if mode == "on" else None
                t = time.perf_counter()
                for _ in range(n):
                    proto.datagram_received(data, addr)
                out[mode].append((time.perf_counter() - t) / n * 1e9)
        tier.stop()
    res = {mode: statistics.median(v) for mode, v in out.items()}
    res["ratio"] = res["on"] / res["off"]
    print(f"hits: off {res['off']:.0f} ns, on {res['on']:.0f} ns per datagram (median of {rounds} x {n}), "
          f"on/off {res['ratio']:.3f}")
    return res


def bench_misses(rounds: int, n: int) -> dict:
    extra = 'cache:\n  persist:\n    path: "{tmp}/cache.lmdb"\n'
    out = {"off": [], "on": []}
    for _ in range(rounds):
        for mode in ("off", "on"):
            argv = [sys.executable, str(REPO / "bench" / "misspath.py"), "--plain", str(n)]
            if mode == "on":
                argv += ["--config-extra", extra]
            for _attempt in range(3):  # a port taken meanwhile by another process: try again
                text = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=600).stdout
                if " µs each" in text:
                    break
            else:
                raise RuntimeError(f"bench/misspath.py failed 3 times: {text[-300:]}")
            us = float(text.split(": ")[1].split(" µs")[0])
            out[mode].append(us)
    res = {mode: statistics.median(v) for mode, v in out.items()}
    res["runs"] = out
    res["ratio"] = res["on"] / res["off"]
    print(f"misses: off {res['off']:.1f} µs, on {res['on']:.1f} µs CPU per miss (median of {rounds} x {n}; "
          f"client and fake upstream included), on/off {res['ratio']:.3f}")
    return res


def bench_startup(entries: int, runs: int, workdir: Path, with_snapshot: bool) -> dict:
    path = workdir / "cache.lmdb"
    map_size = max(1 << 30, entries * 1024)
    fill_s = fill(str(path), entries, map_size)
    disk = path.stat().st_blocks * 512
    print(f"disk: {entries:,} entries written in {fill_s:.1f} s; file {disk / 2**20:.0f} MiB on disk, "
          f"{disk / entries:.0f} bytes per entry")
    persist = f'  persist:\n    path: "{path}"\n    map_size: {map_size}\n    max_entries: {entries + 1}\n' \
              f'    max_bytes: {int(map_size * 0.8)}\n'
    res = {"entries": entries, "fill_s": fill_s, "disk_bytes": disk, "disk_bytes_per_entry": disk / entries}
    opens = []
    for _ in range(3):  # what the start-up spends on the tier itself: open, reader_check, checks
        tier = HostTier(PersistConfig(path=str(path), map_size=map_size, max_bytes=int(map_size * 0.8),
                                      max_entries=entries + 1), SystemClock())
        t = time.perf_counter()
        assert tier.open()
        opens.append((time.perf_counter() - t) * 1000)
        tier.stop()
    res["open_ms"] = statistics.median(opens)
    print(f"open: HostTier.open() on the {entries:,}-entry file {res['open_ms']:.2f} ms (median of 3)")
    on, off = [], []
    rss = {}
    for run in range(runs):
        probe = _name((run * 7919) % entries)
        ms, proc, port = start_and_time(persist, probe, workdir)
        try:
            if ms is not None:
                on.append(ms)
            if run == 0:
                time.sleep(0.5)
                rss["after_start"] = _rss(proc.pid)
                asked = min(100_000, entries)
                t = time.monotonic()
                ok = sum(_ask(port, _name(i), 1.0) for i in range(asked))
                rss["after_asking"] = _rss(proc.pid)
                rss["asked"], rss["answered"], rss["ask_s"] = asked, ok, round(time.monotonic() - t, 1)
        finally:
            _stop(proc)
        ms_off, proc, _ = start_and_time("", "localhost", workdir)  # tier off: first (local) answer
        _stop(proc)
        if ms_off is not None:
            off.append(ms_off)
    res.update(first_answer_ms_on=statistics.median(on) if on else None, runs_on=on,
               first_answer_ms_off=statistics.median(off) if off else None, runs_off=off, rss=rss)
    print(f"startup: first answer from a {entries:,}-entry file {res['first_answer_ms_on']:.0f} ms "
          f"(runs {', '.join(f'{x:.0f}' for x in on)}); tier off {res['first_answer_ms_off']:.0f} ms "
          f"(runs {', '.join(f'{x:.0f}' for x in off)})")
    if rss:
        a, b = rss["after_start"], rss["after_asking"]
        per = (b["VmRSS"] - a["VmRSS"]) / max(1, rss["answered"])
        res["rss_bytes_per_adopted_entry"] = per
        print(f"rss: after start {a['VmRSS'] / 2**20:.0f} MiB (file-backed {a['RssFile'] / 2**20:.0f} MiB); "
              f"after asking {rss['answered']:,} names {b['VmRSS'] / 2**20:.0f} MiB (file-backed "
              f"{b['RssFile'] / 2**20:.0f} MiB): {per:.0f} bytes per adopted entry")
    if with_snapshot:
        res["snapshot"] = bench_snapshot_start(entries, runs, workdir)
    return res


def bench_snapshot_start(entries: int, runs: int, workdir: Path) -> dict:
    """The same entries as a snapshot file (engine: snapshot), loaded before the listeners open."""
    clock = SystemClock()
    entry = _template(clock)
    keys = [_key(i) for i in range(entries)]
    path = workdir / "cache.snap"
    path.write_bytes(snapshot.encode(keys, [entry] * entries, clock.wall() - clock.monotonic(), clock.wall()))
    persist = f'  persist:\n    engine: snapshot\n    path: "{path}"\n'
    times = []
    for run in range(runs):
        ms, proc, _ = start_and_time(persist, _name((run * 7919) % entries), workdir)
        _stop(proc)
        if ms is not None:
            times.append(ms)
    med = statistics.median(times) if times else None
    print(f"startup (engine snapshot, same entries): first answer {med:.0f} ms (runs {', '.join(f'{x:.0f}' for x in times)})")
    return {"first_answer_ms": med, "runs": times, "file_bytes": path.stat().st_size}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of: {', '.join(PARTS)}")
    p.add_argument("--entries", type=int, default=1_000_000, help="entries on disk for startup/disk (default 1M)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--hit-datagrams", type=int, default=200_000)
    p.add_argument("--misses", type=int, default=20_000)
    p.add_argument("--snapshot", action="store_true", help="also time the snapshot engine with the same entries")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    parts = a.only.split(",")
    results: dict = {}
    if "hits" in parts:
        results["hits"] = bench_hits(max(3, a.runs), a.hit_datagrams)
    if "misses" in parts:
        results["misses"] = bench_misses(a.runs, a.misses)
    if "startup" in parts or "disk" in parts:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            results["startup"] = bench_startup(a.entries, a.runs, Path(tmp), a.snapshot)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
