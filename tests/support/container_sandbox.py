"""Run inside ``unshare -m -n`` (as root) by test_container_runtime.py and test_systemd.py: a
container's or a systemd service's runtime conditions without a container engine or a booted
systemd.

    python -m tests.support.container_sandbox SPEC_JSON

SPEC: {"port_start": 53 | 1024, "uid": 10053, "caps": [] | ["net_bind_service"],
       "binds": {target path: file} (e.g. {"/etc/resolv.conf": ...}), "tmpfs": [dirs],
       "command": [...], "healthcheck": [...] (optional), "metrics": "127.0.0.1:9153",
       "env": {...}}

In the fresh network namespace only loopback exists (brought up here), so nothing bound in it —
even on 0.0.0.0 — is reachable from outside.  Steps: set net.ipv4.ip_unprivileged_port_start
for this namespace (Docker sets 0), bind-mount the given resolv.conf over /etc/resolv.conf (the
mount namespace is private), start an upstream on 127.0.0.2:53, then run ``command`` as ``uid``
with no capabilities but ``caps`` (ambient, as systemd's AmbientCapabilities= gives them) and
no_new_privs, query 127.0.0.1:53, GET /healthz, run ``healthcheck`` as the same user, stop with
SIGTERM.  Prints one JSON object with what happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import dns.message
import dns.query

from tests.support import fake_upstream


def unprivileged(uid: int, caps: list[str] = ()) -> list[str]:
    keep = "".join(f",+{c}" for c in caps)
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", f"--inh-caps=-all{keep}",
            f"--bounding-set=-all{keep}", "--no-new-privs"]
    if caps:
        argv.append(f"--ambient-caps={keep[1:]}")
    return argv + ["--"]


def main(spec: dict) -> dict:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", "w") as f:
        f.write(str(spec["port_start"]))
    for directory in spec.get("tmpfs", []):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "sandbox", directory], check=True)
    for target, source in spec["binds"].items():
        if not os.path.exists(target):  # only inside a tmpfs mounted above
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "w").close()
        subprocess.run(["mount", "--bind", source, target], check=True)

    fake_upstream.HOST = "127.0.0.2"  # this process only: 127.0.0.1:53 is the forwarder's
    upstream = fake_upstream.FakeUpstream(port=53).start()
    upstream.answer("www.test", "A", "192.0.2.1")
    result: dict = {"upstream": upstream.address}
    proc = subprocess.Popen(unprivileged(spec["uid"], spec.get("caps", [])) + spec["command"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=spec["env"], cwd="/")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                reply = dns.query.udp(dns.message.make_query("www.test", "A"), "127.0.0.1",
                                      port=53, timeout=0.3)
                result["answer"] = [rr.to_text() for rrset in reply.answer for rr in rrset]
                break
            except (dns.exception.Timeout, OSError):
                time.sleep(0.05)
        if proc.poll() is None:
            try:
                url = f"http://{spec.get('metrics', '127.0.0.1:9153')}/healthz"
                with urllib.request.urlopen(url, timeout=3) as reply:
                    result["healthz"] = reply.status
            except OSError as exc:
                result["healthz"] = str(exc)
            if spec.get("healthcheck"):
                health = subprocess.run(unprivileged(spec["uid"]) + spec["healthcheck"],
                                        capture_output=True, text=True, env=spec["env"], timeout=10,
                                        cwd="/")
                result["health"] = {"rc": health.returncode, "out": health.stdout + health.stderr}
            result["upstream_calls"] = [list(c) for c in upstream.calls]
            proc.send_signal(signal.SIGTERM)
        result["exit"] = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        upstream.stop()
    result["stderr"] = proc.stderr.read()
    return result


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
