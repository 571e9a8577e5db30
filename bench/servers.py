"""Start and stop the servers the benchmark compares, all on 127.0.0.1 only.

* NSD: the local authoritative server for ``bench.test.`` (zone generated here);
* Unbound, dnsmasq and ``resolver``: three caching forwarders sending every
  query to that NSD.

Every server runs in its own process group (``start_new_session``) so that
``Server.stop`` can signal the whole group (NSD forks helpers) and nothing
outlives the benchmark.  Each can be pinned to one CPU with ``taskset``.

Also here: a minimal DNS wire encoder/decoder used for readiness probes, the
start-up timing and the latency client, and readers for /proc CPU time and RSS.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

LOOPBACK = "127.0.0.1"
ZONE = "bench.test"
TYPES = {"A": 1, "AAAA": 28}
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent

# The generated zone: hN A for N < HIT_NAMES, AAAA for every AAAA_EVERY-th;
# sN.short with TTL 1 (serve-stale test); a wildcard under miss. (misses, memory).
HIT_NAMES = 20_000
AAAA_EVERY = 4
SHORT_NAMES = 1_000


# --------------------------------------------------------------------- wire
def build_query(qid: int, name: str, qtype: str = "A") -> bytes:
    """A plain recursive query (RD=1, no EDNS), like dnsperf's default."""
    labels = b"".join(bytes((len(p),)) + p.encode() for p in name.rstrip(".").split(".") if p)
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack(">HH", TYPES[qtype], 1)


def reply_summary(data: bytes) -> tuple[int, int, int]:
    """(id, rcode, ancount) of a reply; raises ValueError if it is not a reply."""
    if len(data) < 12 or not data[2] & 0x80:
        raise ValueError("not a DNS reply")
    qid, flags, _qd, an = struct.unpack(">HHHH", data[:8])
    return qid, flags & 0x0F, an


def query_once(port: int, name: str, qtype: str = "A", timeout: float = 0.01) -> tuple[int, int] | None:
    """(rcode, ancount) of one UDP query to 127.0.0.1:port, or None (no answer / refused)."""
    qid = random.getrandbits(16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((LOOPBACK, port))
            s.send(build_query(qid, name, qtype))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                rid, rcode, an = reply_summary(s.recv(4096))
                if rid == qid:
                    return rcode, an
        except (OSError, ValueError):  # timeout, ICMP port unreachable, garbage
            return None
    return None


def wait_answer(port: int, name: str, limit: float, interval: float = 0.01) -> float | None:
    """Poll every ``interval`` until a NOERROR answer with records; seconds waited, or None."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        t0 = time.monotonic()
        got = query_once(port, name, timeout=interval)
        if got is not None and got[0] == 0 and got[1] > 0:
            return time.monotonic() - start
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))
    return None


# --------------------------------------------------------------------- /proc
def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (the kernel's pick, checked for TCP)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((LOOPBACK, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((LOOPBACK, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port found on 127.0.0.1")


# --------------------------------------------------------------------- processes
class Server:
    """One started server process (group), its port, its log."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path, cpu: int | str | None):
        self.name = name
        self.port = port
        self.log_path = workdir / f"{name}.log"
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]  # taskset execs: the PID is the server's
            # (``cpu`` may be a taskset list such as "1-3" for a resolver with workers)
        self.argv = argv
        self._log = open(self.log_path, "wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=workdir, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu(self) -> float:
        """CPU seconds of the whole process group (a resolver with workers is several processes)."""
        return sum(_quiet(cpu_seconds, pid, 0.0) for pid in group_members(self.pid))

    def rss(self) -> int:
        """Resident memory of the process group (shared pages of forked workers counted per process)."""
        return sum(_quiet(rss_bytes, pid, 0) for pid in group_members(self.pid))

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, probe: str, limit: float = 20.0) -> None:
        if wait_answer(self.port, probe, limit) is None or not self.alive():
            self.stop()
            raise RuntimeError(f"{self.name} did not answer {probe} within {limit:g}s; log:\n{self.log_tail()}")

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the leader (NSD and resolver's supervisor stop their own children), then
        SIGKILL whatever is left of the process group after ``grace``."""
        if self.proc.returncode is None:
            self.signal_group(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.signal_group(signal.SIGKILL)  # helpers (NSD's xfrd, server children) too
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._reap_group(limit=5.0)
        self._log.close()

    def _reap_group(self, limit: float) -> None:
        """Wait until no process of the group is left, reaping orphans re-parented to us
        (run.py makes itself a child subreaper), so that no zombie outlives the run."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            members = group_members(self.proc.pid)
            if not members:
                return
            for pid in members:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:  # not ours (no subreaper): nothing more we can do
                    pass
            time.sleep(0.02)


def _quiet(fn, pid: int, default):
    try:
        return fn(pid)
    except (OSError, ValueError, IndexError):  # the process went away meanwhile
        return default


def group_members(pgid: int) -> list[int]:
    """PIDs (zombies included) whose process group is ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                found.append(int(entry))
    return found


# --------------------------------------------------------------------- NSD
def write_zone(path: Path) -> None:
    lines = [
        "$ORIGIN bench.test.",
        "$TTL 86400",
        "@ IN SOA ns.bench.test. hostmaster.bench.test. 1 3600 900 604800 86400",
        "@ IN NS ns.bench.test.",
        "ns IN A 127.0.0.1",
        "*.miss IN A 192.0.2.1",  # TEST-NET-1: data only, never contacted
    ]
    for n in range(HIT_NAMES):
        lines.append(f"h{n} IN A 10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
        if n % AAAA_EVERY == 0:
            lines.append(f"h{n} IN AAAA 2001:db8::{n:x}")
    for n in range(SHORT_NAMES):
        lines.append(f"s{n}.short 1 IN A 10.200.{n >> 8 & 255}.{n & 255}")
    path.write_text("\n".join(lines) + "\n")


def start_nsd(workdir: Path, cpu: int | None, name: str = "nsd", zone: str = ZONE,
              zone_writer=write_zone, probe: str = "h1.bench.test") -> Server:
    """NSD serving one zone, written by ``zone_writer(path)``; ``name`` keeps the files of
    several instances apart (the outage test runs two: old data and new)."""
    port = free_port()
    zone_writer(workdir / f"{name}.{zone}.zone")
    conf = workdir / f"{name}.conf"
    conf.write_text(f"""server:
    ip-address: {LOOPBACK}@{port}
    port: {port}
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "{workdir}"
    pidfile: "{workdir}/{name}.pid"
    database: ""
    zonelistfile: "{workdir}/{name}.zone.list"
    xfrdfile: "{workdir}/{name}.xfrd.state"
    xfrdir: "{workdir}"
    logfile: "{workdir}/{name}-internal.log"
    verbosity: 0
    hide-version: yes
    minimal-responses: yes
    refuse-any: yes
    # Debian builds NSD with response rate limiting (200 q/s per "source and answer
    # kind"): wildcard answers would be slipped as TC=1 and retried over TCP.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "{zone}"
    zonefile: "{name}.{zone}.zone"
""")
    server = Server(name, ["nsd", "-d", "-c", str(conf)], port, workdir, cpu)
    server.wait_ready(probe, limit=30.0)
    return server


# --------------------------------------------------------------------- forwarders
def start_unbound(workdir: Path, nsd_port: int, cpu: int | None, name: str = "unbound",
                  wait: bool = True, extended_stats: bool = False, threads: int = 1, extra: str = "") -> Server:
    """Unbound as a caching forwarder; ``extended_stats`` adds cache counts to
    ``unbound-control stats`` (only for the memory test: it costs a little per query);
    ``extra``: more ``server:`` lines, each indented by four spaces (the outage test's
    serve-expired settings)."""
    port, control_port = free_port(), free_port()
    conf = workdir / f"{name}.conf"
    conf.write_text(f"""server:
    interface: {LOOPBACK}
    port: {port}
    outgoing-interface: {LOOPBACK}
    interface-automatic: no
    do-ip6: no
    access-control: 127.0.0.0/8 allow
    num-threads: {threads}
    so-reuseport: yes
    username: ""
    chroot: ""
    directory: "{workdir}"
    pidfile: "{workdir}/{name}.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    module-config: "iterator"
    do-not-query-localhost: no
    domain-insecure: "{ZONE}"
    local-zone: "test." nodefault  # Unbound serves test. (RFC 6761) as an empty zone by default
    qname-minimisation: no
    prefetch: no
    extended-statistics: {"yes" if extended_stats else "no"}
    # Room for the 1M-name memory test (memory is allocated as entries arrive).
    msg-cache-size: 1g
    rrset-cache-size: 2g
    msg-cache-slabs: 1
    rrset-cache-slabs: 1
    num-queries-per-thread: 4096
    outgoing-range: 8192
{extra}remote-control:  # for `unbound-control stats_noreset` (cache entry counts)
    control-enable: yes
    control-interface: {LOOPBACK}
    control-port: {control_port}
    control-use-cert: no
forward-zone:
    name: "."
    forward-addr: {LOOPBACK}@{nsd_port}
""")
    server = Server(name, ["unbound", "-d", "-c", str(conf)], port, workdir, cpu)
    if wait:
        server.wait_ready("h1.bench.test")
    return server


def start_dnsmasq(workdir: Path, nsd_port: int, cpu: int | None, name: str = "dnsmasq",
                  wait: bool = True, extra: list[str] = ()) -> Server:
    """dnsmasq as a caching forwarder; ``extra``: more options (e.g. ``--use-stale-cache``)."""
    port = free_port()
    argv = [
        "/usr/sbin/dnsmasq",
        "--conf-file=/dev/null",  # ignore /etc/dnsmasq.conf
        "--keep-in-foreground",
        "--log-facility=-",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        f"--server={LOOPBACK}#{nsd_port}",
        f"--port={port}",
        f"--listen-address={LOOPBACK}",
        "--bind-interfaces",
        "--cache-size=150000",
        "--dns-forward-max=1000",
        "--user=root",
        f"--pid-file={workdir}/{name}.pid",
        *extra,
    ]
    server = Server(name, argv, port, workdir, cpu)
    if wait:
        server.wait_ready("h1.bench.test")
    return server


# Only if this version of resolver knows the key (its configuration is strict): dnsperf
# is one client address standing in for many clients, so the per-client cap on cache
# misses in flight (a defence against one hostile client) would drop its queries.
PER_CLIENT_OVERRIDE = "security:\n  max_inflight_per_client: 4096\n"
_supported: dict[str, bool] = {}


def resolver_supports(snippet: str, workdir: Path) -> bool:
    """Does ``python -m resolver --check-config`` accept this YAML (added to a minimal config)?"""
    if snippet not in _supported:
        path = workdir / "check.yaml"
        path.write_text(f'listen: ["{LOOPBACK}:{free_port()}"]\nupstreams: ["{LOOPBACK}:53"]\n{snippet}')
        proc = subprocess.run([sys.executable, "-m", "resolver", "--config", str(path), "--check-config"],
                              capture_output=True, text=True, timeout=60, cwd=workdir)
        _supported[snippet] = proc.returncode == 0
    return _supported[snippet]


def write_resolver_config(path: Path, port: int, nsd_port: int, metrics_port: int | None, max_entries: int | None,
                          extra: str = "", per_client_override: bool = True) -> None:
    """``max_entries=None`` and ``per_client_override=False`` keep resolver's defaults for
    both (the outage test measures the defaults, one client address and all)."""
    metrics = (f'metrics:\n  enabled: true\n  listen: "{LOOPBACK}:{metrics_port}"\n' if metrics_port
               else "metrics:\n  enabled: false\n")
    security = (PER_CLIENT_OVERRIDE if per_client_override and resolver_supports(PER_CLIENT_OVERRIDE, path.parent)
                else "")
    cache = f"cache:\n  max_entries: {max_entries}\n" if max_entries is not None else ""
    path.write_text(f"""listen: ["{LOOPBACK}:{port}"]
upstreams: ["{LOOPBACK}:{nsd_port}"]
{cache}{metrics}{security}logging:
  level: info
{extra}""")


def start_resolver(workdir: Path, nsd_port: int, cpu: int | str | None, name: str = "resolver",
                   max_entries: int | None = 1_100_000, extra: str = "", wait: bool = True,
                   metrics: bool = True, per_client_override: bool = True) -> Server:
    port = free_port()
    metrics_port = free_port() if metrics else None
    conf = workdir / f"{name}.yaml"
    write_resolver_config(conf, port, nsd_port, metrics_port, max_entries, extra, per_client_override)
    argv = [sys.executable, "-m", "resolver", "--config", str(conf)]
    server = Server(name, argv, port, workdir, cpu)
    server.metrics_port = metrics_port
    if wait:
        server.wait_ready("h1.bench.test")
    return server


def start_faultproxy(workdir: Path, target_port: int, cpu: int | None, seed: int = 1) -> Server:
    """bench/faultproxy.py in front of ``target_port``; its control port is ``.control_port``."""
    port, control_port = free_port(), free_port()
    argv = [sys.executable, str(REPO / "bench" / "faultproxy.py"), "--port", str(port),
            "--control-port", str(control_port), "--target", str(target_port), "--seed", str(seed)]
    server = Server("faultproxy", argv, port, workdir, cpu)
    server.control_port = control_port
    return server


def start_ceiling(workdir: Path, cpu: int | None) -> Server:
    """bench/ceiling.py: the bare uvloop server the hit path is compared with."""
    port = free_port()
    server = Server("uvloop-ceiling", [sys.executable, str(REPO / "bench" / "ceiling.py"), str(port)],
                    port, workdir, cpu)
    server.wait_ready("h0.bench.test")
    return server


def resolver_metric(server: Server, metric: str, label: str = "") -> float:
    """Sum of the samples of ``metric`` (or counter ``metric_total``) on the resolver's
    /metrics page whose labels contain ``label`` (e.g. 'state="fresh"')."""
    url = f"http://{LOOPBACK}:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=30) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in (metric, metric + "_total") and label in line.rsplit(" ", 1)[0]:
            total += float(line.rsplit(" ", 1)[1])
    return total
