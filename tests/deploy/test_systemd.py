"""deploy/systemd/: the unit file and its config.

``systemd-analyze verify`` runs on the unmodified unit inside a scratch root (a copy of the
system's unit directory plus stand-ins for the executables it names), so it checks every
directive without installing anything; ``systemd-analyze security --offline`` scores the
sandbox.  A structural test of the directives that matter runs everywhere.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from resolver.config import parse_config
from tests.support.image import sandbox_or_skip
from tests.support.process import resolv_conf

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "resolver.service"
HOST_CONFIG = REPO / "deploy" / "systemd" / "resolver.yaml"
SYSTEM_UNITS = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                     if (p / "sysinit.target").exists()), None)


def directives(path: Path) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    assert key in section, f"missing {key}="
    return section[key][-1]


def test_unit_hardening_and_lifecycle():
    unit = directives(UNIT)
    service = unit["Service"]
    assert one(service, "DynamicUser") == "yes" or "User" in service
    assert one(service, "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert one(service, "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one(service, "NoNewPrivileges") == "yes"
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "ProtectHome") == "yes"
    assert one(service, "PrivateTmp") == "yes"
    assert one(service, "StateDirectory") == "resolver"  # /var/lib/resolver: the cache snapshot
    assert one(service, "Restart") == "on-failure"
    assert "2" in one(service, "RestartPreventExitStatus").split()  # bad config: no restart loop
    assert service["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    families = set(one(service, "RestrictAddressFamilies").split())
    assert families <= {"AF_INET", "AF_INET6", "AF_UNIX"} and {"AF_INET", "AF_INET6"} <= families
    assert "multi-user.target" in one(unit["Install"], "WantedBy")
    assert "nss-lookup.target" in one(unit["Unit"], "Before")


def test_unit_commands_use_the_shipped_config_path_and_real_options():
    service = directives(UNIT)["Service"]
    start = shlex.split(one(service, "ExecStart"))
    assert start[0].endswith("/resolver")
    config = start[start.index("--config") + 1]
    assert config == "/etc/resolver/resolver.yaml"
    assert one(service, "ConfigurationDirectory") == "resolver"
    check = shlex.split(service["ExecReload"][0])
    assert check[0] == start[0] and "--check-config" in check and config in check
    # The options exist: the real argument parser accepts them.
    from resolver.cli import parse_args
    parse_args(check[1:])
    parse_args(start[1:])


def test_host_config_is_valid_and_loopback_only(tmp_path):
    data = yaml.safe_load(HOST_CONFIG.read_text())
    config = parse_config(data, str(resolv_conf(tmp_path, "192.0.2.53")))
    assert [str(a) for a in config.listen] == ["127.0.0.1:53", "[::1]:53"]
    assert [u.label for u in config.upstreams] == ["udp://192.0.2.53:53"]
    # A resolv.conf that points only at ourselves (as /etc/resolv.conf will) is refused.
    from resolver.errors import ConfigError
    with pytest.raises(ConfigError, match="upstreams"):
        parse_config(data, str(resolv_conf(tmp_path, "127.0.0.1", "::1")))


def scratch_root(tmp_path: Path, unit_text: str, name: str) -> Path:
    """A root directory in which every executable the unit names exists and the system's
    units (sysinit.target, ...) are present."""
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system" / name).write_text(unit_text)
    for key, values in directives(UNIT)["Service"].items():
        if key.startswith("Exec"):
            for value in values:
                exe = root / shlex.split(value)[0].lstrip("-@+!:").lstrip("/")
                exe.parent.mkdir(parents=True, exist_ok=True)
                exe.write_text("#!/bin/sh\n")
                exe.chmod(0o755)
    return root


def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None or SYSTEM_UNITS is None:
        pytest.skip("systemd-analyze or the system unit directory is missing "
                    "(apt-get install systemd; `make test` does it)")
    return exe


def verify(tmp_path: Path, unit_text: str, name: str = "resolver.service") -> subprocess.CompletedProcess:
    root = scratch_root(tmp_path, unit_text, name)
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""}
    return subprocess.run([systemd_analyze(), "verify", f"--root={root}", name],
                          capture_output=True, text=True, timeout=60, env=env)


def test_systemd_analyze_verify_is_clean(tmp_path):
    out = verify(tmp_path, UNIT.read_text())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "" and out.stderr.strip() == "", out.stdout + out.stderr


def test_systemd_analyze_verify_catches_a_typo(tmp_path):
    """The verify test can fail: a misspelt directive is reported (as a warning: we require none)."""
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
    out = verify(tmp_path, broken)
    assert "ProtectSytem" in out.stdout + out.stderr


def test_systemd_analyze_security_exposure_is_low(tmp_path):
    root = scratch_root(tmp_path, UNIT.read_text(), "resolver.service")
    out = subprocess.run([systemd_analyze(), "security", "--offline=true", f"--root={root}",
                          "--no-pager", "resolver.service"], capture_output=True, text=True, timeout=60)
    if "--offline" in out.stderr and out.returncode != 0:
        pytest.skip(f"this systemd-analyze has no offline security scoring: {out.stderr.strip()}")
    match = re.search(r"Overall exposure level for resolver\.service: ([0-9.]+)", out.stdout)
    assert match, out.stdout + out.stderr
    assert float(match.group(1)) <= 2.0, out.stdout  # systemd's scale: 0 = locked down, 10 = none


# -- the unit's privilege model, run for real ------------------------------------------------
# No booted systemd here, so the service manager's part is emulated with setpriv in private
# network and mount namespaces: a DynamicUser-range uid, CAP_NET_BIND_SERVICE as the only
# (ambient) capability, no_new_privs, the kernel's default unprivileged-port floor (1024).  The
# command is the unit's ExecStart, the config deploy/systemd/resolver.yaml unmodified, its
# resolv_conf (/run/systemd/resolve/resolv.conf) the test's own, naming an upstream on 127.0.0.2.

DYNAMIC_UID = 61234  # systemd's DynamicUser= range is 61184-65519


def exec_start_command() -> list[str]:
    start = shlex.split(one(directives(UNIT)["Service"], "ExecStart"))
    config = start[start.index("--config") + 1]
    entry = "import sys; from resolver.cli import main; sys.exit(main())"
    return [sys.executable, "-c", entry] + [str(HOST_CONFIG) if a == config else a for a in start[1:]]


def run_service(tmp_path: Path, caps: list[str]) -> dict:
    sandbox_or_skip(DYNAMIC_UID)
    resolved_conf = yaml.safe_load(HOST_CONFIG.read_text())["resolv_conf"]
    rc = resolv_conf(tmp_path, "127.0.0.2")
    rc.chmod(0o644)
    spec = {"port_start": 1024, "uid": DYNAMIC_UID, "caps": caps,
            "tmpfs": [str(Path(resolved_conf).parent.parent)], "binds": {resolved_conf: str(rc)},
            "command": exec_start_command(), "metrics": "127.0.0.1:9153",
            "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
                    "PYTHONDONTWRITEBYTECODE": "1"}}
    out = subprocess.run(["unshare", "-m", "-n", "--", sys.executable, "-m", "tests.support.container_sandbox",
                          json.dumps(spec)], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.netns
def test_exec_start_with_only_ambient_cap_net_bind_service_serves_port_53(tmp_path):
    assert one(directives(UNIT)["Service"], "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    result = run_service(tmp_path, ["net_bind_service"])
    assert result.get("answer") == ["192.0.2.1"], result
    assert ["udp", "www.test", "A"] in result["upstream_calls"]
    assert result["healthz"] == 200
    assert result["exit"] == 0, result["stderr"]  # SIGTERM, as systemctl stop sends (KillSignal=)
    assert "Traceback" not in result["stderr"]


@pytest.mark.netns
def test_exec_start_without_the_capability_cannot_bind_port_53(tmp_path):
    result = run_service(tmp_path, [])
    assert "answer" not in result
    assert result["exit"] == 1, result
    assert "cannot start" in result["stderr"]


def test_host_config_keeps_its_snapshot_in_the_state_directory():
    """StateDirectory=resolver is the only writable place under ProtectSystem=strict."""
    import yaml

    from resolver.config import parse_config

    data = yaml.safe_load((REPO / "deploy" / "systemd" / "resolver.yaml").read_text())
    data["upstreams"] = ["192.0.2.53"]
    unit = (REPO / "deploy" / "systemd" / "resolver.service").read_text()
    assert "StateDirectory=resolver" in unit
    assert parse_config(data).cache.persist.path.startswith("/var/lib/resolver/")
