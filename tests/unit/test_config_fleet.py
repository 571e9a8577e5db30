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


# -- fleet.mode: a Redis Cluster, or a master found through Sentinel ------------------------


def test_standalone_is_the_default_mode(resolv, secret):
    c = parse({"url": "redis://h:6379/0", "secret_file": secret}, resolv).fleet
    assert (c.mode, c.sentinels, c.sentinel_service, c.enabled) == ("standalone", (), "", True)


def test_cluster_mode_takes_a_seed_node(resolv, secret):
    c = parse({"mode": "cluster", "url": "redis://10.0.0.5:6379", "secret_file": secret}, resolv).fleet
    assert (c.mode, c.url, c.enabled) == ("cluster", "redis://10.0.0.5:6379", True)


def test_sentinel_mode_is_on_without_a_url(resolv, secret):
    c = parse({"mode": "sentinel", "sentinels": ["10.0.0.5:26379", "sentinel.redis.svc:26379", "[::1]:26380"],
               "sentinel_service": "mymaster", "secret_file": secret}, resolv).fleet
    assert c.sentinels == (("10.0.0.5", 26379), ("sentinel.redis.svc", 26379), ("::1", 26380))
    assert (c.url, c.sentinel_service, c.enabled) == ("", "mymaster", True)


def test_sentinel_mode_url_gives_only_password_database_and_tls(resolv, secret):
    c = parse({"mode": "sentinel", "sentinels": ["10.0.0.5:26379"], "sentinel_service": "mymaster",
               "url": "rediss://:pw@/2", "secret_file": secret}, resolv).fleet
    assert c.url == "rediss://:pw@/2"


SENTINEL = {"mode": "sentinel", "sentinels": ["10.0.0.5:26379"], "sentinel_service": "mymaster"}


@pytest.mark.parametrize("fleet, key, problem", [
    ({"mode": "replicated"}, "fleet.mode", "must be one of: standalone, cluster, sentinel"),
    ({"mode": "cluster"}, "fleet.url", "required with fleet.mode: cluster"),
    ({"mode": "cluster", "url": "unix:///run/redis.sock"}, "fleet.url", "redis:// or rediss:// in cluster mode"),
    ({"mode": "cluster", "url": "redis://h:6379/1"}, "fleet.url", "database 0 only"),
    ({"mode": "cluster", "url": "redis://"}, "fleet.url", "seed node's host"),
    ({"mode": "cluster", "url": "redis://h:6379"}, "fleet.secret_file", "required when fleet.url is set"),
    ({"mode": "sentinel"}, "fleet.sentinels", "required with fleet.mode: sentinel"),
    ({"mode": "sentinel", "sentinels": ["10.0.0.5:26379"]}, "fleet.sentinel_service", "the master's name"),
    ({**SENTINEL}, "fleet.secret_file", "required when fleet.sentinels is set"),
    ({**SENTINEL, "url": "redis://10.0.0.9:6379/0"}, "fleet.url", "comes from fleet.sentinels"),
    ({**SENTINEL, "url": "unix:///run/redis.sock"}, "fleet.url", "redis:// or rediss:// in sentinel mode"),
    ({"mode": "sentinel", "sentinels": ["10.0.0.5"]}, "fleet.sentinels[0]", "expected host:port"),
    ({"mode": "sentinel", "sentinels": ["10.0.0.5:0"]}, "fleet.sentinels[0]", "expected host:port"),
    ({"mode": "sentinel", "sentinels": ["[nothex]:26379"]}, "fleet.sentinels[0]", "expected host:port"),
    ({"mode": "sentinel", "sentinels": ["[10.0.0.5]:26379"]}, "fleet.sentinels[0]", "only for IPv6"),
    ({"mode": "sentinel", "sentinels": ["a:1", "a:1"]}, "fleet.sentinels[1]", "duplicate of fleet.sentinels[0]"),
    ({"mode": "sentinel", "sentinels": [26379]}, "fleet.sentinels[0]", "host:port"),
    ({"url": "redis://h", "sentinels": ["a:1"]}, "fleet.sentinels", "only used with fleet.mode: sentinel"),
    ({"url": "redis://h", "sentinel_service": "m"}, "fleet.sentinel_service", "only used with fleet.mode: sentinel"),
])
def test_mode_errors_name_the_key(fleet, key, problem, resolv):
    e = error(fleet, resolv)
    assert e.key == key and problem in e.problem
    assert "\n" not in str(e)


def test_a_password_in_the_url_is_not_repeated_in_an_error(resolv):
    e = error({**SENTINEL, "url": "redis://:hunter2@10.0.0.9/0"}, resolv)
    assert e.key == "fleet.url" and "hunter2" not in str(e)
