#!/usr/bin/env python3
"""Container HEALTHCHECK: GET /healthz on the admin listener named in the config.

    resolver-healthcheck [CONFIG]        (default /etc/resolver/resolver.yaml)

Exit 0 when /healthz answers 200 within 2 s, 1 otherwise (Docker's contract), with one
line on stdout that `docker inspect` shows.  The address is read from the config's
``metrics`` section (with the package's own defaults and parser), so changing
``metrics.listen`` does not silently break the health check; a wildcard listen address
is probed on loopback of the same family.
"""

from __future__ import annotations

import ipaddress
import sys
import urllib.request

import yaml

from resolver.config import MetricsConfig, parse_address

DEFAULT_CONFIG = "/etc/resolver/resolver.yaml"


def healthz_url(config_path: str) -> str:
    with open(config_path, encoding="utf-8") as file:
        data = yaml.safe_load(file) or {}
    section = data.get("metrics") or {}
    if not section.get("enabled", MetricsConfig().enabled):
        raise ValueError("metrics.enabled is false: no /healthz to probe")
    listen = MetricsConfig().listen
    if "listen" in section:
        listen = parse_address(section["listen"], "metrics.listen")
    ip = ipaddress.ip_address(listen.host)
    host = ("::1" if ip.version == 6 else "127.0.0.1") if ip.is_unspecified else str(ip)
    return f"http://{f'[{host}]' if ip.version == 6 else host}:{listen.port}/healthz"


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else DEFAULT_CONFIG
    try:
        url = healthz_url(path)
        with urllib.request.urlopen(url, timeout=2) as reply:
            status = reply.status
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, said in one line
        print(f"unhealthy: {exc}")
        return 1
    print(f"{url}: {status}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
