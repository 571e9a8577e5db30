"""A throw-away certificate authority for the TLS tests, minted with the ``openssl`` command.

``mint(directory)`` writes ``ca.pem`` (the CA to trust), ``server.pem``/``server.key``
(a server certificate signed by it), and ``other-ca.pem``/``other.pem``/``other.key`` (the
same names signed by a second CA nobody trusts).  The server certificate carries
``dot.test``, ``doh.test`` and the loopback addresses 127.0.0.1 and 127.0.1.1 as SANs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HAVE_OPENSSL = shutil.which("openssl") is not None
SERVER_NAMES = ("dot.test", "doh.test")
SERVER_IPS = ("127.0.0.1", "127.0.1.1")


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN=resolver test {name}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _server(d: Path, ca: str, out: str) -> None:
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", *ec, "-keyout", f"{out}.key", "-out", f"{out}.csr", "-subj", f"/CN={SERVER_NAMES[0]}", cwd=d)
    sans = ",".join([*(f"DNS:{n}" for n in SERVER_NAMES), *(f"IP:{ip}" for ip in SERVER_IPS)])
    (d / "ext.cnf").write_text(f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", f"{out}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{out}.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)


def mint(d: Path) -> Path:
    """Write the CAs and certificates into ``d``; returns ``d``."""
    _ca(d, "ca")
    _server(d, "ca", "server")
    _ca(d, "other-ca")
    _server(d, "other-ca", "other")
    return d
