#!/usr/bin/env python3
"""Cache misses through a DNS-over-HTTPS upstream vs plain UDP, and queries per TLS handshake.

    .venv/bin/python bench/doh.py                     # 3 alternated runs of 10 s per transport
    .venv/bin/python bench/doh.py --runs 1 --duration 5 --steady 10

Set-up (all on 127.0.0.1): NSD serves ``*.miss.bench.test`` (bench/servers.py); dnsdist
sits in front of it with a plain DNS listener and a DoH listener (RFC 8484, HTTP/2,
certificate from a test CA minted with openssl), no packet cache.  resolver (pinned to
the server CPU) forwards to dnsdist once over UDP and once over DoH, so both paths
have the same hops and differ only in the transport.  dnsperf sends unique names
(every query a cache miss).  As a peer, dnsdist itself forwards the same load to the
same DoH listener (``newServer{dohPath=...}``, outgoing DoH over nghttp2) and over UDP.

Measured per transport: QPS, QPS per server CPU-second (the server's utime+stime
from /proc), and for DoH the TLS connections opened (resolver's
``resolver_upstream_connections_opened_total``): queries per handshake, in the
flood and in a steady-rate run (``--steady`` seconds at ``--rate`` q/s).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run  # noqa: E402  (dnsperf, measured, CPU pinning)
import servers  # noqa: E402
from servers import LOOPBACK, Server, free_port, resolver_metric  # noqa: E402

from tests.support.pki import mint  # noqa: E402  (the one test-CA helper: openssl)


def start_dnsdist_front(workdir: Path, nsd_port: int, pki: Path, cpu) -> Server:
    """dnsdist: plain DNS on ``.port``, DoH on ``.doh_port``, both to NSD; sends nothing elsewhere."""
    port, doh_port = free_port(), free_port()
    conf = workdir / "dnsdist-front.conf"
    conf.write_text("\n".join([
        'setSecurityPollSuffix("")',
        f'setLocal("{LOOPBACK}:{port}")',
        f'newServer({{address="{LOOPBACK}:{nsd_port}"}})',
        f'addDOHLocal("{LOOPBACK}:{doh_port}", "{pki / "server.pem"}", "{pki / "server.key"}", "/dns-query")',
        "setMaxUDPOutstanding(65535)",
        "",
    ]))
    server = Server("dnsdist-front", ["dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)],
                    port, workdir, cpu)
    server.doh_port = doh_port
    server.wait_ready("h1.bench.test")
    return server


def start_dnsdist_peer(workdir: Path, front: Server, pki: Path, transport: str, cpu) -> Server:
    """dnsdist as the peer forwarder: to the front's DoH listener (outgoing DoH) or its UDP one."""
    port = free_port()
    if transport == "https":
        backend = (f'newServer({{address="{LOOPBACK}:{front.doh_port}", tls="openssl", subjectName="doh.test", '
                   f'dohPath="/dns-query", caStore="{pki / "ca.pem"}", validateCertificates=true}})')
    else:
        backend = f'newServer({{address="{LOOPBACK}:{front.port}"}})'
    conf = workdir / f"dnsdist-peer-{transport}.conf"
    conf.write_text("\n".join(['setSecurityPollSuffix("")', f'setLocal("{LOOPBACK}:{port}")', backend,
                               "setMaxUDPOutstanding(65535)", ""]))
    server = Server(f"dnsdist-peer-{transport}", ["dnsdist", "--supervised", "--disable-syslog", "-C", str(conf)],
                    port, workdir, cpu)
    server.wait_ready("h1.bench.test")
    return server


def start_resolver(workdir: Path, upstream: str, pki: Path, cpu) -> Server:
    port, metrics_port = free_port(), free_port()
    conf = workdir / "resolver-doh-bench.yaml"
    conf.write_text(f"""listen: ["{LOOPBACK}:{port}"]
upstreams: ["{upstream}"]
upstream:
  tls_ca_file: "{pki / 'ca.pem'}"
cache:
  max_entries: 1100000
metrics:
  enabled: true
  listen: "{LOOPBACK}:{metrics_port}"
{servers.PER_CLIENT_OVERRIDE}logging:
  level: warning
""")
    server = Server("resolver", [sys.executable, "-m", "resolver", "--config", str(conf)], port, workdir, cpu)
    server.metrics_port = metrics_port
    server.wait_ready("h1.bench.test")
    return server


def miss_file(path: Path, start: int, count: int) -> Path:
    path.write_text("".join(f"d{i}.miss.bench.test A\n" for i in range(start, start + count)))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--steady", type=float, default=20.0, help="seconds of the steady-rate DoH run")
    p.add_argument("--rate", type=int, default=2000, help="queries per second of the steady-rate run")
    p.add_argument("--server-cpu", type=int, default=1)
    p.add_argument("--client-cpu", type=int, default=0)
    p.add_argument("--no-peer", action="store_true", help="skip dnsdist as the peer forwarder")
    p.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    run.SERVER_CPU, run.CLIENT_CPU = args.server_cpu, args.client_cpu
    started_at = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    results: dict[str, list[dict]] = {}
    steady = {}
    with tempfile.TemporaryDirectory(prefix="doh-bench-") as tmp:
        work = Path(tmp)
        (work / "pki").mkdir()
        pki = mint(work / "pki")
        nsd = servers.start_nsd(work, args.client_cpu)
        front = start_dnsdist_front(work, nsd.port, pki, args.client_cpu)
        targets = {"udp": f"{LOOPBACK}:{front.port}",
                   "https": f"https://{LOOPBACK}:{front.doh_port}/dns-query#doh.test"}
        names = int(run.MISS_NAMES_PER_SECOND * args.duration)
        offset = 0
        try:
            for i in range(args.runs):
                for transport in ("udp", "https"):
                    kinds = [("resolver", transport)] + ([] if args.no_peer else [("dnsdist", transport)])
                    for who, t in kinds:
                        run.log(f"run {i + 1}/{args.runs}: {who} over {t}")
                        server = (start_resolver(work, targets[t], pki, args.server_cpu) if who == "resolver"
                                  else start_dnsdist_peer(work, front, pki, t, args.server_cpu))
                        try:
                            data = miss_file(work / "miss.txt", offset, names)
                            offset += names
                            result = run.measured(server, lambda: run.dnsperf(
                                server.port, data, args.client_cpu, duration=args.duration,
                                outstanding=run.MISS_OUTSTANDING))
                            if who == "resolver" and t == "https":
                                result["connections"] = resolver_metric(server, "resolver_upstream_connections_opened")
                                result["upstream_requests"] = resolver_metric(server, "resolver_upstream_requests")
                            results.setdefault(f"{who} {t}", []).append(result)
                        finally:
                            server.stop()
            run.log(f"steady load: resolver over DoH, {args.rate} q/s for {args.steady:g} s")
            server = start_resolver(work, targets["https"], pki, args.server_cpu)
            try:
                data = miss_file(work / "steady.txt", offset, int(args.rate * args.steady) + 1000)
                result = run.dnsperf(server.port, data, args.client_cpu, duration=args.steady, rate=args.rate)
                steady = {"completed": result["completed"], "lost": result["lost"],
                          "connections": resolver_metric(server, "resolver_upstream_connections_opened"),
                          "upstream_requests": resolver_metric(server, "resolver_upstream_requests"),
                          "avg_latency_us": result["avg_latency_us"]}
            finally:
                server.stop()
        finally:
            front.stop()
            nsd.stop()
    load_after = os.getloadavg()

    def med(rows, key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return statistics.median(values) if values else None

    print(f"## DoH upstream benchmark ({started_at:%Y-%m-%d %H:%M} UTC)\n")
    print(f"`.venv/bin/python bench/doh.py --runs {args.runs} --duration {args.duration:g} --steady {args.steady:g}"
          f" --rate {args.rate}`; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          f"(the machine is shared); medians of {args.runs} alternated runs, unique names (all misses).\n")
    print("| forwarder, upstream transport | QPS | QPS per server CPU-second | server CPU | lost "
          "| queries per TLS handshake |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for key, rows in results.items():
        per_handshake = ""
        if key == "resolver https":
            conns = sum(r["connections"] for r in rows)
            per_handshake = f"{sum(r['upstream_requests'] for r in rows) / conns:,.0f}" if conns else "n/a"
        print(f"| {key} | {med(rows, 'qps'):,.0f} | {med(rows, 'qps_per_cpu_s'):,.0f} | "
              f"{med(rows, 'server_cpu_util'):.0%} | {sum(r['lost'] for r in rows)} | {per_handshake} |")
    ratio = {}
    for who in ("resolver", "dnsdist"):
        if f"{who} udp" in results and f"{who} https" in results:
            ratio[who] = med(results[f"{who} https"], "qps_per_cpu_s") / med(results[f"{who} udp"], "qps_per_cpu_s")
    print()
    for who, r in ratio.items():
        print(f"- {who}: a miss over DoH costs {1 / r:.2f}× the CPU of one over UDP")
    if steady:
        per = steady["upstream_requests"] / steady["connections"] if steady["connections"] else float("nan")
        print(f"- steady load ({args.rate} q/s for {args.steady:g} s, resolver over DoH): "
              f"{steady['upstream_requests']:,.0f} upstream queries on {steady['connections']:.0f} TLS connection(s) "
              f"= {per:,.0f} queries per handshake (goal ≥ 100); {steady['lost']} lost")
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "doh.json").write_text(json.dumps(
        {"started": started_at.isoformat(), "load": [load_before, load_after], "runs": results,
         "steady": steady, "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
