"""The image's runtime conditions, emulated without Docker (see container_sandbox.py).

The unmodified config/container.yaml and the image's ENTRYPOINT + CMD, run as the image's
numeric USER with *no* capabilities and no_new_privs, in a private network namespace whose
net.ipv4.ip_unprivileged_port_start is 53 (Docker sets 0; Kubernetes pods set it through
securityContext.sysctls) and whose /etc/resolv.conf is the test's own: the forwarder binds
127.0.0.1:53, answers through the upstream named in resolv.conf, and the image's HEALTHCHECK,
run as the same user, passes.  With the sysctl at the kernel default (1024) the same command
cannot start — so the Dockerfile's claim that the sysctl, not a capability, is what lets it
serve port 53 is checked both ways.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import dockerfile as df
from tests.support.image import CONTAINER_CONFIG, DOCKERFILE, REPO, healthcheck_command, image_command, sandbox_or_skip
from tests.support.process import resolv_conf


def image_uid() -> int:
    return int(df.last(df.parse(DOCKERFILE), "USER").args.split(":")[0])


def run_sandbox(tmp_path: Path, port_start: int) -> dict:
    uid = image_uid()
    sandbox_or_skip(uid)
    rc = resolv_conf(tmp_path, "127.0.0.2")
    rc.chmod(0o644)
    spec = {
        "port_start": port_start,
        "uid": uid,
        "binds": {"/etc/resolv.conf": str(rc)},
        # the config file exactly as the image has it: config/container.yaml, unmodified
        "command": image_command(CONTAINER_CONFIG),
        "healthcheck": healthcheck_command(CONTAINER_CONFIG),
        "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO),
                "PYTHONDONTWRITEBYTECODE": "1"},
    }
    out = subprocess.run(["unshare", "-m", "-n", "--", sys.executable, "-m", "tests.support.container_sandbox",
                          json.dumps(spec)], capture_output=True, text=True, timeout=60, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.netns
def test_non_root_without_capabilities_serves_port_53_through_the_sysctl(tmp_path):
    result = run_sandbox(tmp_path, port_start=53)
    assert result.get("answer") == ["192.0.2.1"], result
    assert ["udp", "www.test", "A"] in result["upstream_calls"]  # via resolv.conf's 127.0.0.2:53
    assert result["healthz"] == 200
    assert result["health"]["rc"] == 0, result["health"]
    assert "127.0.0.1:9153/healthz: 200" in result["health"]["out"]
    assert result["exit"] == 0, result["stderr"]
    assert "Traceback" not in result["stderr"]


@pytest.mark.netns
def test_without_the_sysctl_the_same_command_cannot_bind_port_53(tmp_path):
    result = run_sandbox(tmp_path, port_start=1024)
    assert "answer" not in result
    assert result["exit"] == 1, result
    assert "cannot start" in result["stderr"] and "53" in result["stderr"], result["stderr"]
