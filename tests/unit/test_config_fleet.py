"""The ``fleet:`` section: off by default, the secret required with a URL, one-line errors with the key path."""

from __future__ import annotations

import pytest

from resolver.config import FleetConfig, parse_config, read_fleet_secret
from resolver.errors import ConfigError


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "fleet.key"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    return str(path)


def parse(fleet: dict, resolv):
    return parse_config({"fleet": fleet}, resolv_conf=resolv)


def error(fleet: dict, resolv) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(fleet, resolv)
    return info.value


def test_off_by_default(resolv):
    assert parse_config({}, resolv_conf=resolv).fleet == FleetConfig()
    assert FleetConfig().url == ""


def test_a_full_section(resolv, secret):
    c = parse({"url": "rediss://cache.internal:6380/0", "secret_file": secret, "key_prefix": "dns:",
               "read_budget": "20ms", "write_timeout": "2s", "write_queue": 500, "max_connections": 4,
               "breaker_failures": 3, "breaker_reset": "30s"}, resolv).fleet
    assert (c.url, c.read_budget, c.write_timeout, c.write_queue, c.breaker_reset) == \
        ("rediss://cache.internal:6380/0", 0.02, 2.0, 500, 30.0)
    assert read_fleet_secret(secret) == b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("url", ["redis://10.0.0.5:6379/0", "unix:///run/redis/redis.sock", "rediss://h:6380"])
def test_url_schemes(url, resolv, secret):
    assert parse({"url": url, "secret_file": secret}, resolv).fleet.url == url


@pytest.mark.parametrize("fleet, key, problem", [
    ({"url": "redis://127.0.0.1:6379"}, "fleet.secret_file", "required when fleet.url is set"),
    ({"url": "http://127.0.0.1:6379", "secret_file": "/x"}, "fleet.url", "redis://, rediss:// or unix://"),
    ({"url": "redis://h", "secret_file": "/nonexistent/fleet.key"}, "fleet.secret_file", "cannot read"),
    ({"read_budget": 0}, "fleet.read_budget", "above 0 and at most 1s"),
    ({"read_budget": "2s"}, "fleet.read_budget", "above 0 and at most 1s"),
    ({"read_budget": "soon"}, "fleet.read_budget", "duration"),
    ({"write_queue": 0}, "fleet.write_queue", "at least 1"),
    ({"breaker_failures": 0}, "fleet.breaker_failures", "at least 1"),
    ({"breaker_reset": 0}, "fleet.breaker_reset", "greater than 0"),
    ({"max_connections": 0}, "fleet.max_connections", "1 to 1024"),
    ({"password": "x"}, "fleet.password", "unknown key"),
])
def test_errors_name_the_key(fleet, key, problem, resolv):
    e = error(fleet, resolv)
    assert e.key == key and problem in e.problem
    assert "\n" not in str(e)


def test_a_short_secret_is_refused(tmp_path, resolv):
    short = tmp_path / "short.key"
    short.write_text("too-short\n")
    e = error({"url": "redis://h", "secret_file": str(short)}, resolv)
    assert e.key == "fleet.secret_file" and "16 to 4096 bytes" in e.problem


def test_an_unreadable_tls_ca_is_refused(resolv, secret):
    e = error({"url": "rediss://h", "secret_file": secret, "tls_ca_file": "/nonexistent/ca.pem"}, resolv)
    assert e.key == "fleet.tls_ca_file"
