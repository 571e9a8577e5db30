"""The container image as this machine can run it: its files, its command and health check,
and the namespace sandbox that stands in for a container engine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support import dockerfile as df

REPO = Path(__file__).resolve().parents[2]


DOCKERFILE = REPO / "Dockerfile"


CONTAINER_CONFIG = REPO / "config" / "container.yaml"


IMAGE_CONFIG = "/etc/resolver/resolver.yaml"


def image_files() -> dict[str, Path]:
    """Image path -> repository file for the final stage's COPY instructions from the context."""
    instructions = df.parse(DOCKERFILE)
    final = max(i.stage for i in instructions)
    files = {}
    for i in instructions:
        if i.keyword == "COPY" and i.stage == final and not i.args.startswith("--from"):
            source, dest = i.args.split()
            files[dest] = REPO / source
    return files


def image_command(config_path: Path) -> list[str]:
    """ENTRYPOINT + CMD as this machine can run them: the console script's target function
    (from pyproject's [project.scripts]) with this interpreter, the config path swapped."""
    instructions = df.parse(DOCKERFILE)
    entrypoint = df.last(instructions, "ENTRYPOINT").exec_form()
    cmd = df.last(instructions, "CMD").exec_form()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts[entrypoint[0]].split(":")
    argv = [sys.executable, "-c", f"import sys; from {module} import {function}; sys.exit({function}())"]
    return argv + [str(config_path) if a == IMAGE_CONFIG else a for a in entrypoint[1:] + cmd]


def healthcheck_command(config_path: Path) -> list[str]:
    """The HEALTHCHECK CMD with image paths mapped to the repository's files."""
    _, check = df.healthcheck_command(df.last(df.parse(DOCKERFILE), "HEALTHCHECK"))
    files = image_files()
    mapped = [str(config_path) if a == IMAGE_CONFIG else str(files.get(a, a)) for a in check]
    assert mapped[0] in ("python", "python3")
    return [sys.executable] + mapped[1:]


def sandbox_or_skip(uid: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make network and mount namespaces (unshare -m -n)")
    for tool in ("unshare", "setpriv", "ip", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (util-linux, iproute2)")
    probe = subprocess.run(["unshare", "-m", "-n", "--", "sh", "-c",
                            "ip link set lo up && echo 53 > /proc/sys/net/ipv4/ip_unprivileged_port_start"],
                           capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace with its own port sysctl here: {probe.stderr.strip()}")
    # The unprivileged user must be able to run this interpreter and read this checkout.
    can_run = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
                              sys.executable, "-c", "import resolver.cli, yaml"],
                             capture_output=True, text=True, timeout=30,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, cwd="/")
    if can_run.returncode != 0:
        pytest.skip(f"uid {uid} cannot run {sys.executable} on this checkout: {can_run.stderr.strip()[-200:]}")
