"""A real Unbound process used as the upstream in integration tests.

Unbound serves the zone ``test.`` from an auth-zone file (``for-downstream``), so
answers look like a real server's: CNAMEs inside the zone are followed, unknown
names get NXDOMAIN and missing types NODATA, both with the zone's SOA (minimum 60,
so the SOA in negative answers has TTL 60).  Every other name is REFUSED by a
``local-zone: "." refuse`` (so ". NS" too: it is an authoritative-only upstream,
as a corporate or a Kubernetes zone's server is; tests/integration/test_recovery.py
relies on it), so Unbound never sends a query anywhere: it also
listens on 127.0.0.1 only, its outgoing interface is 127.0.0.1 and its root hints
point at 127.0.0.1.  Records are changed while it runs by rewriting the zone file
and ``unbound-control auth_zone_reload test.`` over a unix socket in its directory
(local-data was not used because Unbound does not follow local-data CNAMEs).

    with UnboundServer(tmp_path, ["www.test. 300 IN A 192.0.2.1"]) as ub:
        ub.address                     # "127.0.0.1:PORT"
        ub.set_record("www.test. 300 IN A 192.0.2.9")
        ub.kill(); ub.restart()        # restart keeps the port
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rdataclass
import dns.rdatatype
import pytest

HOST = "127.0.0.1"

# The SOA of the zone test.: negative answers carry it, with minimum 60.
ZONE_SOA = "test. 3600 IN SOA ns.test. admin.test. 1 3600 600 86400 60"

# big.test: 40 TXT strings of 50 characters: the answer is ~2.4 kB, well over 512 bytes
# (and over the 1232-byte EDNS default), so UDP replies come back with TC=1.
BIG_TXT = [f"txt-{i:02d}-" + "x" * 43 for i in range(40)]

# What the ``unbound`` fixture (tests/conftest.py) serves in the zone test.
DEFAULT_RECORDS = [
    "www.test. 300 IN A 192.0.2.1",
    "short.test. 2 IN A 192.0.2.2",
    "v6.test. 300 IN AAAA 2001:db8::1",
    "alias.test. 300 IN CNAME www.test.",
    *[f'big.test. 300 IN TXT "{s}"' for s in BIG_TXT],
]

_CLASSES = {"IN", "CH", "HS", "CS", "ANY"}


def find_unbound(tool: str = "unbound") -> str | None:
    """Path of an Unbound binary (``unbound``, ``unbound-control``), or None."""
    found = shutil.which(tool)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        p = os.path.join(d, tool)
        if os.access(p, os.X_OK):
            return p
    return None


def free_port(host: str = HOST) -> int:
    """A port that is free on ``host`` for both UDP and TCP (bound, then released)."""
    for _ in range(200):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            try:
                tcp.bind((host, port))
            except OSError:
                continue
            return port
        finally:
            udp.close()
            tcp.close()
    raise RuntimeError("no port free for both UDP and TCP on %s" % host)


def _rr_key(rr_text: str) -> tuple[str, str]:
    """(owner lowercase with trailing dot, TYPE) of a zone-file style record."""
    tokens = rr_text.split()
    if len(tokens) < 3:
        raise ValueError(f"not a resource record: {rr_text!r}")
    name = tokens[0].lower()
    if not name.endswith("."):
        name += "."
    for tok in tokens[1:]:
        if tok.isdigit() or tok.upper() in _CLASSES:
            continue
        return name, tok.upper()
    raise ValueError(f"no type in resource record: {rr_text!r}")


def _norm_name(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


def _quote(s: str) -> str:
    if '"' in s:
        if "'" in s:
            raise ValueError(f"cannot quote for unbound.conf: {s!r}")
        return f"'{s}'"
    return f'"{s}"'


class UnboundServer:
    """An Unbound process bound to 127.0.0.1:``port`` serving ``records`` in ``test.``."""

    def __init__(self, tmpdir: str | os.PathLike, records: list[str] | tuple[str, ...] = (),
                 port: int | None = None, *, verbosity: int = 1):
        self.dir = Path(tmpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.records: list[str] = list(records)
        self.port: int = port if port is not None else free_port()
        self.verbosity = verbosity
        self.conf_path = self.dir / "unbound.conf"
        self.log_path = self.dir / "unbound.log"
        self.stderr_path = self.dir / "unbound.stderr"
        self.hints_path = self.dir / "root.hints"
        self.zone_path = self.dir / "test.zone"
        self._serial = 1
        sock = self.dir / "control.sock"
        self._sockdir: str | None = None
        if len(str(sock)) > 100:  # sun_path is 108 bytes
            self._sockdir = tempfile.mkdtemp(prefix="ub-")
            sock = Path(self._sockdir) / "c.sock"
        self.control_path = sock
        self.proc: subprocess.Popen | None = None
        self._binary = find_unbound("unbound")
        self._control = find_unbound("unbound-control")

    # -- addresses -----------------------------------------------------------
    @property
    def host(self) -> str:
        return HOST

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- configuration -------------------------------------------------------
    def _config_text(self) -> str:
        lines = [
            "server:",
            f"    interface: {HOST}",
            f"    port: {self.port}",
            f"    outgoing-interface: {HOST}",
            "    do-ip4: yes",
            "    do-ip6: no",
            "    do-udp: yes",
            "    do-tcp: yes",
            "    so-reuseport: no",
            "    num-threads: 1",
            "    do-daemonize: no",
            "    use-systemd: no",
            '    chroot: ""',
            '    username: ""',
            f"    directory: {_quote(str(self.dir))}",
            '    pidfile: ""',
            "    use-syslog: no",
            f"    logfile: {_quote(str(self.log_path))}",
            f"    verbosity: {self.verbosity}",
            "    log-queries: no",
            '    module-config: "iterator"',
            "    do-not-query-localhost: no",
            f"    root-hints: {_quote(str(self.hints_path))}",
            "    access-control: 127.0.0.0/8 allow",
            "    msg-cache-size: 1m",
            "    rrset-cache-size: 2m",
            "    key-cache-size: 1m",
            "    neg-cache-size: 1m",
            "    outgoing-range: 64",
            "    num-queries-per-thread: 64",
            # Never recurse: every name outside test. is refused locally; test. is
            # let through (transparent, no local data) to the auth-zone below.
            '    local-zone: "." refuse',
            '    local-zone: "test." transparent',
            "",
            "auth-zone:",
            '    name: "test."',
            f"    zonefile: {_quote(str(self.zone_path))}",
            "    for-downstream: yes",
            "    for-upstream: no",
            "    fallback-enabled: no",
            "",
            "remote-control:",
            "    control-enable: yes",
            f"    control-interface: {_quote(str(self.control_path))}",
            "    control-use-cert: no",
            "",
        ]
        return "\n".join(lines)

    def _write_config(self) -> None:
        # Root hints pointing at loopback: a second guard against ever querying out.
        self.hints_path.write_text(
            ".                3600000  IN NS a.root-servers.test.\n"
            f"a.root-servers.test. 3600000 IN A {HOST}\n"
        )
        self.conf_path.write_text(self._config_text())
        self._write_zone()

    def _write_zone(self) -> None:
        soa = ZONE_SOA.replace(" 1 3600 ", f" {self._serial} 3600 ")
        tmp = self.zone_path.with_suffix(".tmp")
        tmp.write_text("\n".join([soa, *self.records]) + "\n")
        tmp.replace(self.zone_path)

    def _change(self, records: list[str]) -> None:
        old, self.records = self.records, records
        self._serial += 1
        self._write_zone()
        if self.running:
            try:
                self.control("auth_zone_reload", "test.")
            except Exception:
                self.records = old
                self._serial += 1
                self._write_zone()
                self.control("auth_zone_reload", "test.")
                raise

    # -- lifecycle -----------------------------------------------------------
    def start(self, timeout: float = 5.0) -> "UnboundServer":
        if self.running:
            return self
        if self._binary is None:
            raise RuntimeError("the unbound binary is not installed")
        self._write_config()
        try:
            self.control_path.unlink()
        except FileNotFoundError:
            pass
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [self._binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True,
            )
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                rc = self.proc.returncode if self.proc else None
                raise RuntimeError(f"unbound exited with {rc} during start-up\n{self.diagnostics()}")
            try:
                q = dns.message.make_query("test.", "SOA")
                dns.query.udp(q, HOST, port=self.port, timeout=0.2)
                if self.control_path.exists():
                    return
            except Exception as e:  # noqa: BLE001 - retried until the deadline
                last = e
            time.sleep(0.05)
        self._terminate(signal.SIGKILL)
        raise RuntimeError(f"unbound on {self.address} not ready after {timeout}s ({last!r})\n"
                           f"{self.diagnostics()}")

    def diagnostics(self) -> str:
        """The configuration file, stderr and log file, for error messages."""
        parts = []
        for label, path in (("stderr", self.stderr_path), ("log", self.log_path)):
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                text = "(none)"
            parts.append(f"--- unbound {label} ({path}) ---\n{text[-8000:]}")
        return "\n".join(parts)

    def _terminate(self, sig: int, timeout: float = 5.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
            except ProcessLookupError:
                pass
        self.proc = None

    def stop(self) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after 5 s)."""
        self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the port goes dead at once (UDP queries get ICMP refusals)."""
        self._terminate(signal.SIGKILL)

    def restart(self, timeout: float = 5.0) -> "UnboundServer":
        """Stop (if running) and start again on the same port with the current records."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        self.stop()
        if self._sockdir:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None

    def __enter__(self) -> "UnboundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- live changes --------------------------------------------------------
    def control(self, *args: str) -> str:
        """Run ``unbound-control`` with ``args``; returns its output, raises on failure."""
        if self._control is None:
            raise RuntimeError("unbound-control is not installed")
        res = subprocess.run(
            [self._control, "-c", str(self.conf_path), *args],
            capture_output=True, text=True, timeout=10,
        )
        out = (res.stdout + res.stderr).strip()
        if res.returncode != 0 or out.startswith("error"):
            raise RuntimeError(f"unbound-control {' '.join(args)} failed ({res.returncode}): {out}")
        return out

    def add_record(self, rr_text: str) -> None:
        """Add one record, keeping the others of the same name and type."""
        _rr_key(rr_text)
        self._change(self.records + [rr_text])

    def set_record(self, rr_text: str) -> None:
        """Replace every record of the same name and type by ``rr_text``.

        Records of other types at that name are kept.  Survives :meth:`restart`.
        """
        key = _rr_key(rr_text)
        self._change([r for r in self.records if _rr_key(r) != key] + [rr_text])

    def remove_record(self, name: str, rtype: str | None = None) -> None:
        """Remove every record at ``name`` (or only those of ``rtype``): with none
        left the name answers NXDOMAIN."""
        name = _norm_name(name)
        rtype = rtype.upper() if rtype else None
        self._change([r for r in self.records
                      if not (_rr_key(r)[0] == name and rtype in (None, _rr_key(r)[1]))])

    # -- convenience ---------------------------------------------------------
    def query(self, name: str, rdtype: str = "A", *, tcp: bool = False,
              timeout: float = 1.0) -> dns.message.Message:
        """Ask this server directly with dnspython (UDP, or TCP)."""
        q = dns.message.make_query(name, rdtype)
        if tcp:
            return dns.query.tcp(q, HOST, port=self.port, timeout=timeout)
        return dns.query.udp(q, HOST, port=self.port, timeout=timeout)

    def __repr__(self) -> str:
        return f"<UnboundServer {self.address} {'running' if self.running else 'stopped'}>"


HAVE_UNBOUND = find_unbound("unbound") is not None and find_unbound("unbound-control") is not None

requires_unbound = pytest.mark.skipif(
    not HAVE_UNBOUND,
    reason="the unbound binary is not installed (apt-get install unbound; `make test` does it)",
)
