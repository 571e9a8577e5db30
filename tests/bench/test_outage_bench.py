"""The outage benchmark's tools (bench/faultproxy.py, bench/outage.py, test ``outage`` of
bench/run.py) do what their reports claim: every proxy mode breaks the upstream the way
it says and counts what reaches it, the client measures what came back, and the report
states every goal with its verdict.  No timing of the forwarders is asserted here; the
only time bound checked is the proxy's own injected delay (a lower bound).
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import faultproxy  # noqa: E402
import outage  # noqa: E402
import run as bench_run  # noqa: E402
import servers  # noqa: E402


class TinyAuthority:
    """A UDP authoritative server for one zone on 127.0.0.1:0, in a thread: ``oN.outage.test A``
    answers generation ``generation``'s address (TTL 2), anything else is REFUSED, as a real
    authoritative server answers names outside its zones."""

    def __init__(self, generation: int):
        self.generation = generation
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries += 1
            self.sock.sendto(self.answer(data), addr)

    def answer(self, query: bytes) -> bytes:
        end = 12
        labels = []
        while query[end]:
            labels.append(query[end + 1:end + 1 + query[end]].decode())
            end += 1 + query[end]
        end += 5
        name = ".".join(labels).lower()
        qtype = struct.unpack(">H", query[end - 4:end - 2])[0]
        rd = query[2] & 0x01
        if name.endswith("." + outage.ZONE) and name.split(".")[0][1:].isdigit() and qtype == 1:
            index = int(name.split(".")[0][1:])
            rdata = socket.inet_aton(outage.address(index, self.generation))
            record = struct.pack(">HHHIH", 0xC00C, 1, 1, outage.NAME_TTL, 4) + rdata
            return query[:2] + struct.pack(">BBHHHH", 0x84 | rd, 0x00, 1, 1, 0, 0) + query[12:end] + record
        return query[:2] + struct.pack(">BBHHHH", 0x84 | rd, 0x05, 1, 0, 0, 0) + query[12:end]  # REFUSED

    def close(self) -> None:
        self.running = False
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def proxy(tmp_path):
    old, new = TinyAuthority(0), TinyAuthority(1)
    server = servers.start_faultproxy(tmp_path, old.port, None, seed=7)
    control = faultproxy.connect_control(server.control_port)
    try:
        yield server, control, old, new
    finally:
        control.close()
        server.stop()
        old.close()
        new.close()


def ask(port: int, index: int, timeout: float = 1.0):
    """(reply or None, error): one query for oINDEX.outage.test from a connected socket."""
    replies = outage.paced(port, [outage.name(index)], 1000, timeout)
    return replies[0]


def test_proxy_pass_servfail_drop_and_restore_with_new_data(proxy):
    server, control, old, new = proxy
    reply = ask(server.port, 5)
    assert reply is not None and reply.rcode == 0 and reply.records == [(2, "10.201.0.5")]
    assert control.call("stats")["received"] == 1 and old.queries == 1

    control.call("mode servfail")
    control.call("reset")
    reply = ask(server.port, 5)
    assert reply is not None and reply.rcode == 2 and reply.records == []
    assert old.queries == 1  # SERVFAIL comes from the proxy: the upstream never hears of it
    stats = control.call("stats")
    assert (stats["received"], stats["servfail"]) == (1, 1)

    control.call("mode drop")
    assert ask(server.port, 6, timeout=0.3) is None
    stats = control.call("stats")
    assert (stats["received"], stats["dropped"]) == (2, 1) and old.queries == 1

    control.call(f"target {new.port}")
    control.call("mode pass")
    reply = ask(server.port, 6)
    assert reply is not None and reply.records == [(2, "10.202.0.6")]
    assert new.queries == 1


def test_proxy_delay_holds_each_query_for_its_delay(proxy):
    server, control, old, _ = proxy
    control.call("mode delay")
    reply = ask(server.port, 1, timeout=4.0)
    assert reply is not None and reply.records == [(2, "10.201.0.1")]
    assert reply.latency >= 1.4  # the injected 1.5 s (a lower bound: nothing can make it earlier)
    assert old.queries == 1


def test_proxy_loss_drops_the_seeded_share_of_udp_queries(proxy):
    server, control, old, _ = proxy
    control.call("mode loss")
    replies = outage.paced(server.port, [outage.name(i) for i in range(100)], 2000, 1.0)
    rng = random.Random(7)  # the proxy's seed: the same draws in the same order
    expected_lost = sum(rng.random() < 0.3 for _ in range(100))
    assert 15 <= expected_lost <= 45
    assert sum(r is None for r in replies) == expected_lost
    stats = control.call("stats")
    assert (stats["received"], stats["dropped"], stats["answered"]) == (100, expected_lost, 100 - expected_lost)


def test_proxy_closed_port_refuses_udp_and_tcp_and_reopens(proxy):
    server, control, old, _ = proxy
    control.call("mode closed")
    control.call("reset")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.connect(("127.0.0.1", server.port))
        for i in range(3):
            s.send(servers.build_query(i, outage.name(i)))
            with pytest.raises(ConnectionRefusedError):  # ICMP port unreachable, as from a killed server
                s.recv(512)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    received = control.call("stats")["received"]
    if received is not None:  # counted on the wire (needs CAP_NET_RAW)
        assert received == 3
    assert old.queries == 0
    control.call("mode pass")
    reply = ask(server.port, 3)
    assert reply is not None and reply.records == [(2, "10.201.0.3")]


def test_proxy_answers_over_tcp_in_pass_and_servfail(proxy):
    server, control, _, _ = proxy
    for mode, rcode in (("pass", 0), ("servfail", 2)):
        control.call(f"mode {mode}")
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
            query = servers.build_query(4242, outage.name(9))
            s.sendall(struct.pack(">H", len(query)) + query)
            size = struct.unpack(">H", s.recv(2))[0]
            data = b""
            while len(data) < size:
                data += s.recv(size - len(data))
        qid, got_rcode, qname, records = outage.parse_reply(data)
        assert (qid, got_rcode, qname) == (4242, rcode, outage.name(9))
        assert records == ([(2, "10.201.0.9")] if rcode == 0 else [])


def test_servfail_reply_keeps_id_question_and_rd():
    query = servers.build_query(0xBEEF, "o1.outage.test")
    reply = faultproxy.servfail_for(query)
    assert reply[:2] == b"\xbe\xef" and reply[2] & 0x80 and reply[2] & 0x01 and reply[3] & 0x0F == 2
    assert reply[12:] == query[12:]
    assert faultproxy.servfail_for(query[:14]) is None  # an unreadable question is dropped


def _result(answered2=1000, p99=1.0, fresh=0.5, upstream=10, no_reply=0) -> dict:
    def one(answered, p99_ms, fresh_s, up):
        p = {"queries": 1000, "answered": answered, "no_reply": no_reply, "rcodes": {"0": answered},
             "p50_ms": 0.1, "p99_ms": p99_ms, "max_ms": p99_ms, "ttl_min": 30, "ttl_max": 30,
             "old_data": answered, "new_data": 0}
        return {"mode": "drop", "pass1": dict(p, answered=1000, no_reply=0), "pass2": p,
                "upstream_queries": up, "client_queries": 2000, "upstream_per_client_query": up / 2000,
                "restore": {"fresh_s": fresh_s, "not_fresh": 0 if fresh_s is not None else 10, "names": 1000,
                            "sweeps": 2, "limit_s": 30.0}}
    return {"config": {"names": 1000, "wait": 10, "rate": 200, "modes": ["drop"], "servers": ["resolver", "unbound"],
                       "fresh_limit": 30.0},
            "runs": {"resolver": {"drop": one(answered2, p99, fresh, upstream)},
                     "unbound": {"drop": one(1000, 0.2, 12.9, 20)}}}


@pytest.mark.parametrize("kwargs, failing", [
    ({}, None),
    ({"answered2": 999, "no_reply": 1}, "answered"),
    ({"p99": 6.0}, "pass-2 p99"),
    ({"fresh": 2.5}, "fresh"),
    ({"fresh": None}, "fresh"),
    ({"upstream": 21}, "upstream vs unbound"),
])
def test_goal_verdicts(kwargs, failing):
    [row] = outage.goal_rows(_result(**kwargs))
    header = ["mode", "answered", "pass-2 p99", "fresh", "upstream vs unbound", "verdict"]
    cells = dict(zip(header, row))
    assert cells["verdict"] == ("PASS" if failing is None else "FAIL")
    for column in header[1:5]:
        assert cells[column].startswith("FAIL") == (column == failing), (column, cells[column])


def test_report_shows_every_mode_server_and_goal():
    """``bench-outage.json`` is a real ``bench/run.py --only outage`` result (2026-12-07 03:04 UTC,
    on 92d51e7's resolver code): resolver left 101 of 2,000 blackhole queries unanswered."""
    results = json.loads((Path(__file__).parent / "bench-outage.json").read_text())
    text = bench_run.report(results)
    assert "**h. Outage**" in text
    section = text.split("**h. Outage**")[1]
    for mode in outage.MODES:
        label = outage.MODE_LABELS[mode]
        assert section.count(f"| {label}") >= 4, label  # three servers + the goal row
    for server in ("resolver", "unbound", "dnsmasq"):
        assert f"| {server}" in section
    assert "Goals for resolver" in section
    goals = section.split("Goals for resolver")[1]
    blackhole = next(line for line in goals.splitlines() if line.startswith("| blackhole"))
    assert "FAIL (95.0%)" in blackhole and blackhole.rstrip(" |").endswith("FAIL")


def test_only_selects_one_test_and_quick_shrinks_the_outage():
    args = bench_run.parse_args(["--only", "outage", "--quick"])
    assert set(args.skip) == set(bench_run.TESTS) - {"outage"}
    assert (args.outage_names, args.outage_wait) == (200, 3.0)
    args = bench_run.parse_args(["--skip", "outage"])
    assert "outage" in args.skip and (args.outage_names, args.outage_wait) == (1000, 10.0)
    assert args.outage_modes == list(outage.MODES) and args.outage_servers == ["resolver", "unbound", "dnsmasq"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nsd") is None, reason="needs NSD (apt-get install nsd)")
def test_tiny_outage_run_end_to_end(tmp_path):
    """bench/run.py --only outage on a tiny configuration: NSD pair, proxy, resolver, report."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--only", "outage", "--outage-names", "20",
         "--outage-wait", "0.5", "--outage-modes", "servfail", "--outage-servers", "resolver",
         "--outage-fresh-limit", "2", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "**h. Outage**" in proc.stdout and "| SERVFAIL" in proc.stdout
    run = json.loads((tmp_path / "latest.json").read_text())["tests"]["outage"]["runs"]["resolver"]["servfail"]
    assert run["warm"] == {"names": 20, "not_warmed": 0}
    assert run["pass1"]["queries"] == run["pass2"]["queries"] == 20
    assert run["client_queries"] == 40 and run["upstream_queries"] == run["proxy"]["received"]
    assert run["restore"]["names"] == 20
