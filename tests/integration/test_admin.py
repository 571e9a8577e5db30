"""The admin API and `resolver ctl` against a running forwarder, on real sockets.

* every route the server has, asked on the public metrics listener: only /metrics,
  /healthz and /readyz are served (the table is walked, so a new route is covered);
* `resolver ctl` drives a running instance over its Unix socket (mode 0600);
* bounds: 1,500 idle HTTP connections leave DNS answering over UDP and TCP under a
  1,024 open-files limit; clients that never read their replies do not grow memory.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resolver.ops import ctl
from tests.support.client import ask
from tests.support.forwarder import http_request
from tests.support.unbound import free_port

REPO = Path(__file__).resolve().parents[2]
PUBLIC = {"/metrics", "/healthz", "/readyz"}
KNOWN_PRIVILEGED = {"/cache": "GET", "/cache/flush": "POST", "/lkg/pin": "POST", "/lkg/unpin": "POST",
                    "/lkg/pins": "GET", "/status": "GET", "/reload": "POST"}


# -- one gate, every route -------------------------------------------------------------------

def test_metrics_listener_refuses_every_privileged_route(fake_upstream, start_forwarder):
    """Walk the real route table (and the routes known today, in case the table shrank):
    on the metrics listener a privileged route is refused whatever the method, and
    nothing changes; the public ones are served."""
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=300)
    fwd = start_forwarder([fake_upstream.address])
    ask(fwd.port, "www.test")
    requests = {(path, method) for path, method in KNOWN_PRIVILEGED.items()}
    for route in fwd.app.http_routes.routes.values():
        requests |= {(route.path, method) for method in route.methods}
    for path, method in sorted(requests):
        target = path + ("?name=www.test&type=A" if path in ("/cache", "/lkg/pin", "/lkg/unpin") else "")
        status, _ = http_request(fwd.metrics_port, target, method)
        assert status == (200 if path in PUBLIC else 403), (path, method)
    assert fwd.app.pipeline.lkg_pins == set() and len(fwd.app.cache) == 1
    # The same requests on the admin listener (loopback, no token configured) are served.
    assert fwd.admin_http("/lkg/pin?name=www.test&type=A", "POST")[0] == 200
    assert fwd.admin_http("/cache?name=www.test")[0] == 200
    assert fwd.metric("resolver_admin_requests_denied_total", listener="metrics") >= len(KNOWN_PRIVILEGED)
    assert fwd.metric("resolver_admin_actions_total", action="pin") == 1


def test_admin_tcp_listener_with_a_token(fake_upstream, start_forwarder, tmp_path):
    token = tmp_path / "token"
    token.write_text("correct-horse-battery-staple\n")
    fwd = start_forwarder([fake_upstream.address], admin={"token_file": str(token)})
    # The App read the token at construction: a new forwarder sees it.
    assert fwd.admin_http("/status")[0] == 401
    assert fwd.admin_http("/status", headers={"Authorization": "Bearer nope"})[0] == 401
    status, body = fwd.admin_http("/status", headers={"Authorization": "Bearer correct-horse-battery-staple"})
    assert status == 200 and json.loads(body)["cache"]["entries"] == 0


# -- resolver ctl against a running instance -------------------------------------------------

def run_ctl(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = ctl.main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def ctl_forwarder(fake_upstream, start_forwarder, tmp_path):
    sock = str(tmp_path / "state" / "admin.sock")
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=300)
    fake_upstream.answer("a.zone.test", "A", "192.0.2.2", ttl=300)
    fake_upstream.answer("b.zone.test", "A", "192.0.2.3", ttl=300)
    fwd = start_forwarder([fake_upstream.address], admin={"socket": sock, "max_pins": 2})
    return fwd, sock


def test_admin_socket_is_private(ctl_forwarder):
    _, sock = ctl_forwarder
    st = os.lstat(sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(os.path.dirname(sock)).st_mode) == 0o700


def test_ctl_status_lookup_flush(ctl_forwarder, fake_upstream):
    fwd, sock = ctl_forwarder
    ask(fwd.port, "www.test")
    code, out, _ = run_ctl("--socket", sock, "status")
    assert code == 0
    assert out.startswith("resolver ") and fake_upstream.address in out and "outage: none" in out
    assert "cache: 1 entries (1 fresh, 0 stale)" in out
    code, out, _ = run_ctl("--socket", sock, "--json", "status")
    doc = json.loads(out)
    assert code == 0 and doc["upstreams"][0]["up"] is True and doc["upstreams"][0]["latency_ms"] is not None
    assert doc["outage"] == {"covering": False, "since": None, "stale_answers": 0, "upstreams_down": []}

    fwd.advance(400)  # past the TTL: stale
    code, out, _ = run_ctl("--socket", sock, "lookup", "www.test")
    # The harness clock flows in real time as well: 100 s and a fraction.
    assert code == 0 and re.search(r"stale for 100(\.\d+)?s", out) and "192.0.2.1" in out
    code, out, _ = run_ctl("--socket", sock, "--json", "lookup", "www.test", "A")
    assert code == 0 and json.loads(out)["entries"][0]["state"] == "stale"
    assert run_ctl("--socket", sock, "lookup", "nothing.test")[0] == ctl.NOT_FOUND
    code, _, err = run_ctl("--socket", sock, "lookup", "bad..name")
    assert code == ctl.FAILED and "invalid domain name" in err

    ask(fwd.port, "a.zone.test")
    ask(fwd.port, "b.zone.test")
    assert run_ctl("--socket", sock, "flush", "--zone", "zone.test")[1] == "flushed 2 entries\n"
    assert run_ctl("--socket", sock, "flush", "www.test", "AAAA")[1] == "flushed 0 entries\n"
    assert run_ctl("--socket", sock, "--json", "flush", "--all") == (0, '{\n "flushed": 1\n}\n', "")
    assert len(fwd.app.cache) == 0
    assert fwd.metric("resolver_admin_actions_total", action="flush") == 3


def test_ctl_pins_are_bounded(ctl_forwarder):
    fwd, sock = ctl_forwarder
    assert run_ctl("--socket", sock, "pin", "www.test")[0] == 0
    assert run_ctl("--socket", sock, "pin", "v6.test", "AAAA")[0] == 0
    code, _, err = run_ctl("--socket", sock, "pin", "third.test")
    assert code == ctl.FAILED and "pin limit reached (2" in err
    assert run_ctl("--socket", sock, "pins") == (0, "v6.test. AAAA\nwww.test. A\n", "")
    assert json.loads(run_ctl("--socket", sock, "--json", "pins")[1]) == {
        "pins": [{"name": "v6.test.", "type": "AAAA"}, {"name": "www.test.", "type": "A"}]}
    assert run_ctl("--socket", sock, "unpin", "www.test")[1] == "unpinned\n"
    assert run_ctl("--socket", sock, "unpin", "www.test")[1] == "was not pinned\n"
    assert fwd.metric("resolver_lkg_pins") == 1
    assert fwd.metric("resolver_admin_actions_total", action="pin") == 2
    assert fwd.metric("resolver_admin_actions_total", action="unpin") == 1


def test_ctl_reload(ctl_forwarder, tmp_path, fake_upstream):
    from resolver.config import load_config
    from resolver.ops import reload as live_reload

    fwd, sock = ctl_forwarder
    code, _, err = run_ctl("--socket", sock, "reload")
    assert code == ctl.FAILED and "started without --config" in err
    path = tmp_path / "resolver.yaml"
    path.write_text(f'listen: ["127.0.0.1:{fwd.port}"]\nupstreams: ["{fake_upstream.address}"]\n'
                    "cache: {max_entries: 5}\n")

    def load():
        import dataclasses
        # Restart-only sections as running (the harness binds ephemeral ports).
        return dataclasses.replace(load_config(str(path)), listen=fwd.app.config.listen,
                                   metrics=fwd.app.config.metrics, admin=fwd.app.config.admin)

    def source():  # what the command line installs (cli.serve), with this test's file
        return live_reload.reload(load, fwd.app.reload, fwd.app.reloads, fwd.app.clock.wall)

    fwd.app.reload_source = source
    assert run_ctl("--socket", sock, "reload") == (0, "configuration reloaded\n", "")
    assert fwd.app.cache.max_entries == 5
    path.write_text("cache: {max_entries: 0}\n")
    code, _, err = run_ctl("--socket", sock, "reload")
    assert code == ctl.FAILED and "cache.max_entries" in err


def test_ctl_exit_codes_for_scripts(tmp_path):
    assert run_ctl("--socket", str(tmp_path / "none.sock"), "status")[0] == ctl.UNREACHABLE
    with pytest.raises(SystemExit) as e:
        run_ctl("flush")  # neither NAME, --zone nor --all
    assert e.value.code == ctl.USAGE
    (tmp_path / "bad.yaml").write_text("cache: {max_entrys: 1}\n")
    code, _, err = run_ctl("--config", str(tmp_path / "bad.yaml"), "status")
    assert code == ctl.USAGE and "cache.max_entrys" in err


def test_ctl_as_a_command(ctl_forwarder):
    """`resolver ctl` through the real entry point (as in `docker exec … resolver ctl status`)."""
    fwd, sock = ctl_forwarder
    done = subprocess.run([sys.executable, "-m", "resolver", "ctl", "--socket", sock, "--json", "status"],
                          capture_output=True, text=True, timeout=30, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cache"]["max_entries"] == fwd.app.cache.max_entries
    env = {**os.environ, "RESOLVER_ADMIN_SOCKET": sock}  # what the container image sets
    done = subprocess.run([sys.executable, "-m", "resolver", "ctl", "pins"], capture_output=True, text=True,
                          timeout=30, cwd=REPO, env=env)
    assert (done.returncode, done.stdout) == (0, "no pins\n")


# -- bounds: file descriptors and memory -----------------------------------------------------

def _limit_open_files():
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def start_limited(tmp_path: Path, upstream: str, admin_timeout: str = "30s") -> tuple[subprocess.Popen, dict]:
    ports = {"dns": free_port(), "metrics": free_port(), "admin": free_port()}
    path = tmp_path / "resolver.yaml"
    path.write_text(f"""
listen: ["127.0.0.1:{ports['dns']}"]
upstreams: ["{upstream}"]
metrics: {{listen: "127.0.0.1:{ports['metrics']}", timeout: {admin_timeout}}}
admin: {{socket: "{tmp_path}/admin.sock", listen: "127.0.0.1:{ports['admin']}", timeout: {admin_timeout}}}
""")
    # stderr to a file: a pipe nobody reads would fill up with log lines and block the server.
    proc = subprocess.Popen([sys.executable, "-m", "resolver", "--config", str(path)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "stderr.log", "w"),
                            preexec_fn=_limit_open_files)
    end = time.monotonic() + 15
    while True:
        try:
            ask(ports["dns"], "probe.invalid", timeout=0.3)
            break
        except Exception:
            if time.monotonic() > end or proc.poll() is not None:
                proc.kill()
                raise AssertionError(f"forwarder did not start: {(tmp_path / 'stderr.log').read_text()}")
            time.sleep(0.1)
    return proc, ports


def open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send nothing (non-blocking connects: past the server's
    backlog the kernel holds them half-open, as it would for a real flood)."""
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    return socks


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_http_connections_leave_dns_answering_under_1024_open_files(tmp_path, fake_upstream):
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=300)
    for i in range(20):
        fake_upstream.answer(f"n{i}.test", "A", "192.0.2.2", ttl=300)
    proc, ports = start_limited(tmp_path, fake_upstream.address)
    idle = []
    try:
        assert open(f"/proc/{proc.pid}/limits").read().count("1024") >= 2  # soft and hard
        idle += open_idle(ports["admin"], 1500)
        idle += open_idle(ports["metrics"], 1500)
        time.sleep(1.0)  # let the server accept all it will
        assert proc.poll() is None
        assert fds_of(proc.pid) < 200  # 16 admin + 32 metrics connections at most, plus its own
        # DNS over UDP and TCP, cache hits and misses (new upstream sockets) alike.
        assert ask(ports["dns"], "www.test").answer[0][0].address == "192.0.2.1"
        for i in range(20):
            assert ask(ports["dns"], f"n{i}.test", tcp=i % 2 == 0).answer[0][0].address == "192.0.2.2"
        assert ask(ports["dns"], "www.test", tcp=True).answer[0][0].address == "192.0.2.1"
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        proc.wait(10)
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_clients_that_never_read_do_not_grow_memory(tmp_path, fake_upstream):
    """60 clients ask for the largest replies (metrics, a full pin list) and never read:
    each holds at most a chunk of the reply, and is cut off after the write timeout."""
    proc, ports = start_limited(tmp_path, fake_upstream.address, admin_timeout="2s")
    try:
        for i in range(1000):  # admin.max_pins (default): the longest /lkg/pins there can be
            assert http_request(ports["admin"], f"/lkg/pin?name=pinned-name-{i:04d}.example.test&type=AAAA",
                                "POST")[0] == 200
        before = rss_kib(proc.pid)
        stuck = []
        for i in range(60):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", ports["admin"] if i % 2 else ports["metrics"]))
            s.sendall(b"GET /lkg/pins HTTP/1.1\r\nHost: x\r\n\r\n" if i % 2 else b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            stuck.append(s)
        time.sleep(1.0)
        during = rss_kib(proc.pid)
        assert during - before < 16 * 1024, (before, during)  # KiB
        time.sleep(3.0)  # past the 2 s write timeout: the server has let go of every one
        assert fds_of(proc.pid) < 60
        for s in stuck:
            s.close()
        assert ask(ports["dns"], "probe.invalid").rcode() is not None
        assert http_request(ports["admin"], "/status")[0] == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_unusable_admin_socket_does_not_stop_dns(fake_upstream, start_forwarder, tmp_path):
    """A regular file where the socket should go is left alone; DNS is served without the admin API."""
    fake_upstream.answer("www.test", "A", "192.0.2.1", ttl=300)
    squatter = tmp_path / "admin.sock"
    squatter.write_text("not a socket")
    fwd = start_forwarder([fake_upstream.address], admin={"socket": str(squatter), "listen": ""})
    assert ask(fwd.port, "www.test").answer[0][0].address == "192.0.2.1"
    assert squatter.read_text() == "not a socket"
    assert fwd.metric("resolver_admin_listener_up") == 0
    assert run_ctl("--socket", str(squatter), "status")[0] == ctl.UNREACHABLE


def test_a_reply_is_produced_only_as_fast_as_the_client_takes_it():
    """A 256 MB streamed reply to a client that never reads: the listener produces at most
    what the kernel buffers absorb plus one chunk, then cuts the client at the write
    timeout (counted), and serves the next client."""
    import asyncio

    from resolver.ops.admin import Gate, HttpListener, Reply, Route, Router

    produced = []

    def big(request):
        def chunks():
            for _ in range(4096):
                produced.append(65536)
                yield b"x" * 65536
        return Reply(200, "text/plain", chunks())

    async def scenario():
        router = Router()
        router.add(Route("/big", ("GET",), big, public=True))
        router.add(Route("/small", ("GET",), lambda r: Reply(200, "text/plain", b"ok\n"), public=True))
        listener = HttpListener(router, Gate(False), "admin", max_connections=4, timeout=0.5)
        await listener.start_tcp("127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", listener.port))
        await loop.sock_sendall(client, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(1.5)  # past the write timeout
        cut = router.stats.timed_out.get("admin", 0)
        open_after = listener.open_connections
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = await reader.read()
        writer.close()
        client.close()
        listener.close()
        return cut, open_after, reply

    cut, open_after, reply = asyncio.run(scenario())
    assert cut == 1 and open_after == 0
    print(f"produced {sum(produced) / 2**20:.1f} MiB of 256 MiB")
    assert sum(produced) < 32 * 2**20, sum(produced)  # of 256 MB: the kernel's buffers and one chunk
    assert reply.endswith(b"ok\n")


def test_ctl_status_shows_an_outage_being_covered(ctl_forwarder, fake_upstream):
    fwd, sock = ctl_forwarder
    ask(fwd.port, "www.test")
    fwd.advance(400)  # expired: only a stale answer is left
    fake_upstream.mode("servfail")
    assert ask(fwd.port, "www.test").answer[0][0].address == "192.0.2.1"

    async def tick():  # the periodic sweep's "serving stale" bookkeeping, without waiting 10 s
        fwd.app.episodes.tick()

    fwd.call(tick())
    code, out, _ = run_ctl("--socket", sock, "status")
    assert code == 0 and "outage: COVERING since " in out and "1 stale answers so far" in out
    doc = json.loads(run_ctl("--socket", sock, "--json", "status")[1])
    assert doc["outage"]["covering"] is True and fwd.clock.wall() - 5 < doc["outage"]["since"] <= fwd.clock.wall()
    assert doc["cache"]["stale"] == 1 and doc["cache"]["fresh"] == 0
