"""Latency at a fixed query rate, with percentiles (dnsperf 2.10 prints only mean and std dev).

One thread, non-blocking UDP sockets, queries paced on a schedule
(``start + i / rate``) by spinning on ``epoll(0)``.  Latency is measured from
``time.time_ns()`` taken just before ``send`` to the kernel's receive timestamp
of the reply (``SO_TIMESTAMPNS``, the same CLOCK_REALTIME), so a client that is
late to read a reply does not inflate the figure; only the pacing suffers, and
that is reported (``send_lag_p99_us``).  Replies are matched to queries by
(socket, ID); with ``total / sockets < 65536`` every pair is unique.
"""

from __future__ import annotations

import math
import select
import socket
import struct
import time
from array import array

from servers import LOOPBACK, build_query

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux: SO_TIMESTAMPNS_OLD == SCM_TIMESTAMPNS
_TS = struct.Struct("@qq")  # struct timespec on 64-bit Linux


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None if empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def measure(port: int, questions: list[tuple[str, str]], rate: float, duration: float,
            timeout: float = 1.0) -> dict:
    """Send ``rate`` queries per second for ``duration`` seconds; latency percentiles in µs."""
    total = int(rate * duration)
    nsock = max(16, math.ceil(total / 60_000))
    socks = []
    epoll = select.epoll()
    by_fd = {}
    try:
        for k in range(nsock):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((LOOPBACK, 0))
            s.connect((LOOPBACK, port))
            s.setblocking(False)
            socks.append(s)
            by_fd[s.fileno()] = (k, s)
            epoll.register(s.fileno(), select.EPOLLIN)
        # Pre-built queries; the ID (first two bytes) is patched in at send time.
        bodies = [build_query(0, name, qtype)[2:] for name, qtype in questions]
        sent_at = array("q", bytes(8 * total))
        latency_ns = array("q")
        lags = array("q")
        seen = bytearray(total)
        errors = 0
        kernel_ts = 0
        cmsg_size = socket.CMSG_SPACE(_TS.size)
        interval = 1e9 / rate
        send = [s.send for s in socks]

        def drain() -> None:
            nonlocal errors, kernel_ts
            for fd, _ in epoll.poll(0):
                k, s = by_fd[fd]
                while True:
                    try:
                        data, anc, _flags, _addr = s.recvmsg(4096, cmsg_size)
                    except BlockingIOError:
                        break
                    except OSError:  # ICMP error from an earlier send: server gone
                        errors += 1
                        break
                    rx = None
                    for level, kind, payload in anc:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= _TS.size:
                            sec, nsec = _TS.unpack_from(payload)
                            rx = sec * 1_000_000_000 + nsec
                    if rx is None:
                        rx = time.time_ns()
                    else:
                        kernel_ts += 1
                    if len(data) < 12:
                        errors += 1
                        continue
                    seq = (data[0] << 8 | data[1]) * nsock + k
                    if seq >= total or seen[seq] or rx - sent_at[seq] > timeout * 1e9:
                        continue  # unknown, duplicate or too late (counted as lost)
                    seen[seq] = 1
                    if data[3] & 0x0F:  # rcode other than NOERROR
                        errors += 1
                    latency_ns.append(rx - sent_at[seq])

        start = time.perf_counter_ns()
        i = 0
        nq = len(bodies)
        while i < total:
            now = time.perf_counter_ns()
            while i < total:
                due = start + int(i * interval)
                if now < due:
                    break
                k = i % nsock
                qid = i // nsock
                sent_at[i] = time.time_ns()
                try:
                    send[k](bytes((qid >> 8, qid & 0xFF)) + bodies[i % nq])
                except OSError:
                    errors += 1
                lags.append(now - due)
                i += 1
            drain()
        end = time.monotonic() + timeout
        while len(latency_ns) < total and time.monotonic() < end:
            drain()
            time.sleep(0.0005)
        elapsed = (time.perf_counter_ns() - start) / 1e9
    finally:
        epoll.close()
        for s in socks:
            s.close()
    lat = sorted(x / 1000 for x in latency_ns)
    lag = sorted(x / 1000 for x in lags)
    return {
        "rate": rate,
        "sent": total,
        "completed": len(lat),
        "lost": total - len(lat),
        "errors": errors,
        "p50_us": percentile(lat, 50),
        "p90_us": percentile(lat, 90),
        "p99_us": percentile(lat, 99),
        "p999_us": percentile(lat, 99.9),
        "max_us": lat[-1] if lat else None,
        "send_lag_p99_us": percentile(lag, 99),
        "kernel_rx_timestamps": kernel_ts,
        "elapsed_s": elapsed,
    }
