"""A real DNS-over-HTTPS server on loopback: dnsdist (PowerDNS) with a DoH frontend.

    server = DnsdistDoh(tmp_path, backend="127.0.0.1:5300", pki=pki_dir).start()
    server.url("doh.test")   # "https://127.0.0.1:PORT/dns-query#doh.test"
    server.kill()            # the DoH server dies (SIGKILL): an outage
    server.close()

dnsdist forwards every query to ``backend`` (a FakeUpstream or Unbound on
loopback).  It sends nothing anywhere else: the security poll is off
(``setSecurityPollSuffix("")``), there is no console, carbon or web server, and
its plain DNS listener (it always has one) is on another free loopback port.
Its health checks of the backend ask ``a.root-servers.net. A`` once a second, so a
test that counts what reached the backend looks at its own names only.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.unbound import free_port

HAVE_DNSDIST = shutil.which("dnsdist") is not None
HEALTH_CHECK_NAME = "a.root-servers.net"


class DnsdistDoh:
    def __init__(self, tmpdir: str | Path, backend: str, pki: Path, host: str = "127.0.0.1",
                 path: str = "/dns-query", idle_timeout: float = 30.0, cert: str = "server"):
        self.dir = Path(tmpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.backend = backend
        self.pki = Path(pki)
        self.host = host
        self.path = path
        self.idle_timeout = idle_timeout
        self.cert = cert  # "server" (signed by the CA the tests trust) or "other" (an untrusted CA)
        self.port = free_port(host)
        self.dns_port = free_port()
        self.conf_path = self.dir / "dnsdist.conf"
        self.log_path = self.dir / "dnsdist.log"
        self.proc: subprocess.Popen | None = None

    def url(self, server_name: str = "doh.test") -> str:
        suffix = f"#{server_name}" if server_name else ""
        return f"https://{self.host}:{self.port}{self.path}{suffix}"

    def _config_text(self) -> str:
        pem, key = self.pki / f"{self.cert}.pem", self.pki / f"{self.cert}.key"
        return "\n".join([
            'setSecurityPollSuffix("")',  # no security-status lookups (DNS to the internet)
            f'setLocal("127.0.0.1:{self.dns_port}")',
            f'newServer({{address="{self.backend}"}})',
            f'addDOHLocal("{self.host}:{self.port}", "{pem}", "{key}", "{self.path}", '
            f'{{idleTimeout={int(self.idle_timeout)}}})',
            "",
        ])

    def start(self, timeout: float = 10.0) -> "DnsdistDoh":
        self.conf_path.write_text(self._config_text())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["dnsdist", "--supervised", "--disable-syslog", "-C", str(self.conf_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsdist exited with {self.proc.returncode}:\n{self.diagnostics()}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError(f"dnsdist did not listen on {self.host}:{self.port}:\n{self.diagnostics()}")

    def diagnostics(self) -> str:
        try:
            return self.log_path.read_text()[-3000:]
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def close(self) -> None:
        if self.running:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "DnsdistDoh":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
