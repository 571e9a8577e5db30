"""The outage scenario of bench/run.py (test ``outage``): each forwarder, in its best
serve-stale mode, through an upstream that breaks and comes back with new data.

Per (server, mode), on a fresh instance of the server:

1. warm ``names`` names (TTL 2 s) through the fault proxy (bench/faultproxy.py) in
   ``pass`` mode, in front of NSD "old" (addresses 10.201.x.y);
2. break the upstream (proxy mode ``drop``, ``servfail``, ``closed``, ``delay`` 1.5 s or
   ``loss`` 30%) and reset the proxy's counters;
3. after ``wait`` seconds (10), query every name twice, in two passes, at ``rate`` q/s
   (200) from ONE client socket on 127.0.0.1 (a sidecar's application: one address);
4. read the proxy's count (upstream queries during the outage), then restore: target
   NSD "new" (addresses 10.202.x.y), mode ``pass``;
5. poll until every name's answer carries the new address: sweeps over the names not yet
   fresh at ``POLL_RATE`` q/s, the time of the last name's first fresh answer counts.

Everything is on 127.0.0.1.  The client is one non-blocking UDP socket: a paced sender
(``start + i / rate``) and a receiver that matches replies by ID and question name;
latency runs from ``time.time_ns()`` before ``send`` to the kernel's receive timestamp
(``SO_TIMESTAMPNS``), as in bench/latency.py.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import time

from latency import _TS, SO_TIMESTAMPNS, percentile
from servers import LOOPBACK, build_query

ZONE = "outage.test"
READY = f"ready.{ZONE}"
MODES = ("drop", "servfail", "closed", "delay", "loss")
MODE_LABELS = {"drop": "blackhole", "servfail": "SERVFAIL", "closed": "killed (port closed)",
               "delay": "1.5 s slow", "loss": "30% loss"}
NAME_TTL = 2
REPLY_TIMEOUT = 5.0     # a stub resolver's timeout (glibc's default): later replies are not answers
POLL_RATE = 2_000       # q/s while polling for fresh data: one sweep of 1,000 names takes 0.5 s
POLL_TIMEOUT = 0.5      # per query while polling (a name not answered is asked again next sweep)
WARM_RATE = 500

# Goals (issue 13): every query answered, cached answers fast, recovery in seconds, and no
# more upstream work than Unbound.
GOAL_P99_S = 0.005
GOAL_FRESH_S = 2.0
DISTURBED = 0.05  # share of the server's core taken by other processes during the passes (as run.py)

# Each forwarder in its best serve-stale configuration.  Unbound: answer expired data
# once the upstream has had 1.8 s (RFC 8767's client response timer), keep it a day.
UNBOUND_STALE = """    serve-expired: yes
    serve-expired-ttl: 86400
    serve-expired-client-timeout: 1800
"""
DNSMASQ_STALE = ["--use-stale-cache"]  # answer expired data at once, refresh in the background


def name(i: int) -> str:
    return f"o{i}.{ZONE}"


def address(i: int, generation: int) -> str:
    """Generation 0 (old data, before the outage) is 10.201.x.y, generation 1 (new) 10.202.x.y."""
    return f"10.{201 + generation}.{i >> 8 & 255}.{i & 255}"


def zone_writer(names: int, generation: int):
    def write(path) -> None:
        lines = [f"$ORIGIN {ZONE}.", "$TTL 86400",
                 f"@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. {generation + 1} 3600 900 604800 86400",
                 f"@ IN NS ns.{ZONE}.", "ns IN A 127.0.0.1", "ready IN A 192.0.2.2"]
        lines += [f"o{i} {NAME_TTL} IN A {address(i, generation)}" for i in range(names)]
        path.write_text("\n".join(lines) + "\n")
    return write


# --------------------------------------------------------------------- wire
def parse_reply(data: bytes) -> tuple[int, int, str, list[tuple[int, str]]]:
    """(id, rcode, question name, [(ttl, address) of each A record in the answer]).
    Raises ValueError (or IndexError/struct.error) on anything that is not a readable reply."""
    if len(data) < 12 or not data[2] & 0x80:
        raise ValueError("not a reply")
    qid, flags, qd, an = struct.unpack(">HHHH", data[:8])
    pos, labels = 12, []
    if qd != 1:
        raise ValueError("no question")
    while data[pos]:
        labels.append(data[pos + 1:pos + 1 + data[pos]].decode("ascii", "replace").lower())
        pos += 1 + data[pos]
    pos += 5
    records = []
    for _ in range(an):
        while True:  # owner name: labels, then a terminator or a compression pointer
            length = data[pos]
            if length & 0xC0:
                pos += 2
                break
            pos += 1 + length
            if length == 0:
                break
        rtype, _rclass, ttl, rdlen = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            records.append((ttl, socket.inet_ntoa(data[pos:pos + 4])))
        pos += rdlen
    return qid, flags & 0x0F, ".".join(labels), records


class Reply:
    __slots__ = ("latency", "rcode", "records")

    def __init__(self, latency: float, rcode: int, records: list[tuple[int, str]]):
        self.latency, self.rcode, self.records = latency, rcode, records


def paced(port: int, names: list[str], rate: float, timeout: float) -> list[Reply | None]:
    """Ask each name once (type A) at ``rate`` q/s from one UDP socket; the reply of each
    (None: none within ``timeout``).  Waits at most ``timeout`` after the last send."""
    total = len(names)
    if total == 0:
        return []
    if total > 65_000:
        raise ValueError("one socket, 16-bit IDs: at most 65,000 queries per call")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    epoll = select.epoll()
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((LOOPBACK, 0))
        sock.connect((LOOPBACK, port))
        sock.setblocking(False)
        epoll.register(sock.fileno(), select.EPOLLIN)
        first_id = random.getrandbits(16)
        sent_ns = [0] * total
        replies: list[Reply | None] = [None] * total
        pending = total
        start = time.monotonic()
        i = 0
        while True:
            now = time.monotonic()
            while i < total and start + i / rate <= now:
                sent_ns[i] = time.time_ns()
                try:
                    sock.send(build_query((first_id + i) & 0xFFFF, names[i]))
                except OSError:  # ECONNREFUSED from an earlier ICMP: the query is lost
                    pass
                i += 1
            if i == total and (pending == 0 or now > start + (total - 1) / rate + timeout):
                break
            wait = start + i / rate - now if i < total else 0.05
            if epoll.poll(max(0.0, wait)):
                pending -= _drain(sock, first_id, names, sent_ns, replies, timeout)
        return replies
    finally:
        epoll.close()
        sock.close()


def _drain(sock, first_id: int, names: list[str], sent_ns: list[int], replies: list, timeout: float) -> int:
    got = 0
    while True:
        try:
            data, ancdata, _flags, _addr = sock.recvmsg(4096, 64)
        except (BlockingIOError, InterruptedError):
            return got
        except OSError:  # ICMP port unreachable reported on the connected socket
            continue
        try:
            qid, rcode, qname, records = parse_reply(data)
        except (ValueError, IndexError, struct.error):
            continue
        index = (qid - first_id) & 0xFFFF
        if index >= len(names) or replies[index] is not None or qname != names[index] or not sent_ns[index]:
            continue
        received_ns = time.time_ns()
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = _TS.unpack(payload[:_TS.size])
                received_ns = sec * 1_000_000_000 + nsec
        latency = (received_ns - sent_ns[index]) / 1e9
        if latency <= timeout:
            replies[index] = Reply(latency, rcode, records)
            got += 1


def answered(reply: Reply | None) -> bool:
    return reply is not None and reply.rcode == 0 and bool(reply.records)


def summarize_pass(replies: list[Reply | None], old: set, new: set) -> dict:
    """Counts, latency percentiles (over the replies that came, whatever their RCODE) and the
    TTLs of the A records answered."""
    lat = sorted(r.latency for r in replies if r is not None)
    ttls = [rec[0] for r in replies if answered(r) for rec in r.records]
    rcodes: dict[str, int] = {}
    for r in replies:
        if r is not None:
            rcodes[str(r.rcode)] = rcodes.get(str(r.rcode), 0) + 1
    addresses = [rec[1] for r in replies if answered(r) for rec in r.records]
    return {
        "queries": len(replies),
        "answered": sum(1 for r in replies if answered(r)),
        "no_reply": sum(1 for r in replies if r is None),
        "rcodes": rcodes,
        "p50_ms": None if not lat else percentile(lat, 50) * 1000,
        "p99_ms": None if not lat else percentile(lat, 99) * 1000,
        "max_ms": None if not lat else lat[-1] * 1000,
        "ttl_min": min(ttls) if ttls else None,
        "ttl_max": max(ttls) if ttls else None,
        "old_data": sum(1 for a in addresses if a in old),
        "new_data": sum(1 for a in addresses if a in new),
    }


def warm(port: int, names: list[str], old: set, rounds: int = 3) -> dict:
    """Ask every name until it is answered with the old data (at most ``rounds`` sweeps)."""
    left = list(names)
    for _ in range(rounds):
        replies = paced(port, left, WARM_RATE, 2.0)
        left = [n for n, r in zip(left, replies) if not (answered(r) and r.records[0][1] in old)]
        if not left:
            break
    return {"names": len(names), "not_warmed": len(left)}


def poll_fresh(port: int, names: list[str], new: set, limit: float) -> dict:
    """Sweep over the names not yet seen with new data until all are (or ``limit`` s pass)."""
    t0 = time.monotonic()
    wall0 = time.time_ns()
    left = list(names)
    last_fresh, sweeps = 0.0, 0
    while left and time.monotonic() - t0 < limit:
        sweep_start = time.time_ns()
        replies = paced(port, left, POLL_RATE, POLL_TIMEOUT)
        sweeps += 1
        still = []
        for i, (n, r) in enumerate(zip(left, replies)):
            if answered(r) and any(rec[1] in new for rec in r.records):
                # when that reply arrived: sent on schedule + its latency
                at = (sweep_start - wall0) / 1e9 + i / POLL_RATE + r.latency
                last_fresh = max(last_fresh, at)
            else:
                still.append(n)
        left = still
    return {"fresh_s": None if left else round(last_fresh, 3), "not_fresh": len(left),
            "names": len(names), "sweeps": sweeps, "limit_s": limit}


def run_one(port: int, proxy, mode: str, names: list[str], nsd_old: int, nsd_new: int, *,
            wait: float, rate: float, fresh_limit: float, log=lambda msg: None, meter=None) -> dict:
    """One (server, mode) scenario against a fresh server on ``port``; ``proxy`` is a
    faultproxy.ProxyControl already in mode ``pass`` towards ``nsd_old``.  ``meter()``, if
    given, starts measuring how much of the server's core other processes took and returns
    a function that stops and returns that share (a shared machine: latency suffers)."""
    old = {address(i, 0) for i in range(len(names))}
    new = {address(i, 1) for i in range(len(names))}
    out: dict = {"mode": mode}
    out["warm"] = warm(port, names, old)
    proxy.call(f"mode {mode}")
    proxy.call("reset")
    broke = time.monotonic()
    time.sleep(max(0.0, wait - (time.monotonic() - broke)))
    t_pass = time.monotonic()
    stop_meter = meter() if meter else None
    replies = paced(port, names + names, rate, REPLY_TIMEOUT)
    out["foreign_server_core"] = round(stop_meter(), 3) if stop_meter else None
    n = len(names)
    out["pass1"] = summarize_pass(replies[:n], old, new)
    out["pass2"] = summarize_pass(replies[n:], old, new)
    stats = proxy.call("stats")
    out["outage_s"] = round(time.monotonic() - broke, 2)
    out["passes_s"] = round(time.monotonic() - t_pass, 2)
    out["upstream_queries"] = stats["received"]
    out["client_queries"] = 2 * n
    out["upstream_per_client_query"] = (None if stats["received"] is None
                                        else stats["received"] / (2 * n))
    out["proxy"] = stats
    proxy.call(f"target {nsd_new}")
    proxy.call("mode pass")
    out["restore"] = poll_fresh(port, names, new, fresh_limit)
    proxy.call(f"target {nsd_old}")
    p1, p2 = out["pass1"], out["pass2"]
    log(f"   {mode}: answered {p1['answered']}/{n} + {p2['answered']}/{n}, "
        f"p99 {fmt_ms(p1['p99_ms'])} / {fmt_ms(p2['p99_ms'])}, TTL {ttl_range(p1, p2)}, "
        f"upstream {stats['received']} for {2 * n} queries, fresh after {fmt_fresh(out['restore'])}"
        + (f"  [disturbed: other processes used {out['foreign_server_core']:.0%} of the server core]"
           if (out["foreign_server_core"] or 0) > DISTURBED else ""))
    return out


# --------------------------------------------------------------------- report
def fmt_ms(x) -> str:
    if x is None:
        return "—"
    return f"{x:.1f} ms" if x < 100 else f"{x / 1000:.2f} s"


def fmt_fresh(r: dict) -> str:
    if r["fresh_s"] is None:
        return f"> {r['limit_s']:g} s ({r['names'] - r['not_fresh']} of {r['names']})"
    return f"{r['fresh_s']:.2f} s"


def ttl_range(*passes: dict) -> str:
    lo = [p["ttl_min"] for p in passes if p["ttl_min"] is not None]
    hi = [p["ttl_max"] for p in passes if p["ttl_max"] is not None]
    if not lo:
        return "—"
    return f"{min(lo)}" if min(lo) == max(hi) else f"{min(lo)}–{max(hi)}"


def pct(part: int, whole: int) -> str:
    if not whole:
        return "—"
    value = 100 * part / whole
    return f"{value:.0f}%" if part in (0, whole) else f"{min(value, 99.9):.1f}%"


def report_section(outage: dict, md_table) -> list[str]:
    """The Markdown lines for test h (``md_table`` is run.py's table renderer)."""
    cfg = outage["config"]
    runs = outage["runs"]  # server -> mode -> result
    out = [f"**h. Outage** ({cfg['names']:,} names, TTL {NAME_TTL} s, warmed; upstream broken; after "
           f"{cfg['wait']:g} s every name asked twice at {cfg['rate']:g} q/s from one client socket; then the "
           "upstream restored with new addresses and polled until every name is fresh. Latency over the "
           f"replies that came within {REPLY_TIMEOUT:g} s; answered = NOERROR with the A record; TTLs seen: the A records' TTLs in both passes (stale answers "
           "carry 30 s, RFC 8767 4, or dnsmasq's 0; where some refreshes get through, fresh ones carry ≤ 2 s); "
           "upstream q/q = queries reaching the upstream from the break to the end of the passes, per client "
           "query. One run per server and mode, a fresh server each time)", ""]
    rows = []
    for mode in cfg["modes"]:
        for server in cfg["servers"]:
            r = runs.get(server, {}).get(mode)
            if r is None:
                continue
            if "error" in r:
                rows.append([MODE_LABELS[mode], server, f"failed: {r['error'][:80]}", "", "", "", "", "", ""])
                continue
            p1, p2 = r["pass1"], r["pass2"]
            rows.append([MODE_LABELS[mode], server,
                         f"{pct(p1['answered'], p1['queries'])} / {pct(p2['answered'], p2['queries'])}",
                         ttl_range(p1, p2),
                         f"{fmt_ms(p1['p50_ms'])} / {fmt_ms(p1['p99_ms'])}",
                         f"{fmt_ms(p2['p50_ms'])} / {fmt_ms(p2['p99_ms'])}",
                         fmt_fresh(r["restore"]),
                         "—" if r["upstream_per_client_query"] is None else f"{r['upstream_per_client_query']:.2f}",
                         f"{p1['no_reply'] + p2['no_reply']}"])
    out += [md_table(["mode", "server", "answered (pass 1 / 2)", "TTLs seen", "pass 1 p50 / p99",
                      "pass 2 p50 / p99", "all fresh after restore", "upstream q/q", "no reply"], rows), ""]
    disturbed = [f"{server}/{MODE_LABELS[mode]} {r['foreign_server_core']:.0%}"
                 for server, per_mode in runs.items() for mode, r in per_mode.items()
                 if (r.get("foreign_server_core") or 0) > DISTURBED]
    if disturbed:
        out += [f"Runs during whose passes other processes used more than {DISTURBED:.0%} of the server's core "
                f"(latency suspect): {', '.join(disturbed)}.", ""]
    verdicts = goal_rows(outage)
    if verdicts:
        out += [f"Goals for resolver: 100% answered in both passes, pass-2 p99 ≤ {GOAL_P99_S * 1000:g} ms, every "
                f"name fresh ≤ {GOAL_FRESH_S:g} s after restore, upstream queries ≤ Unbound's (ratio "
                "resolver/unbound).", "",
                md_table(["mode", "answered", "pass-2 p99", "fresh", "upstream vs unbound", "verdict"], verdicts), ""]
    return out


def goal_rows(outage: dict) -> list[list[str]]:
    cfg, runs = outage["config"], outage["runs"]
    rows = []
    for mode in cfg["modes"]:
        r = runs.get("resolver", {}).get(mode)
        if r is None or "error" in r:
            continue
        u = runs.get("unbound", {}).get(mode)
        p1, p2 = r["pass1"], r["pass2"]
        all_answered = p1["answered"] == p1["queries"] and p2["answered"] == p2["queries"]
        fast = p2["p99_ms"] is not None and p2["p99_ms"] <= GOAL_P99_S * 1000
        fresh = r["restore"]["fresh_s"] is not None and r["restore"]["fresh_s"] <= GOAL_FRESH_S
        mine = r["upstream_queries"]
        theirs = None if not u or "error" in u else u["upstream_queries"]
        if mine is None or theirs is None:
            cheap, ratio_text = None, "—"
        else:
            cheap = mine <= theirs
            ratio_text = f"{mine / theirs:.2f}× ({mine} vs {theirs})" if theirs else f"{mine} vs 0"
        mark = lambda ok: "—" if ok is None else ("pass" if ok else "FAIL")  # noqa: E731
        checks = [all_answered, fast, fresh, cheap]
        verdict = "PASS" if all(c is not False for c in checks) else "FAIL"
        rows.append([MODE_LABELS[mode],
                     f"{mark(all_answered)} ({pct(p1['answered'] + p2['answered'], p1['queries'] + p2['queries'])})",
                     f"{mark(fast)} ({fmt_ms(p2['p99_ms'])})",
                     f"{mark(fresh)} ({fmt_fresh(r['restore'])})",
                     f"{mark(cheap)} {ratio_text}", verdict])
    return rows

