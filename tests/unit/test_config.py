"""Unit tests for resolver.config: pure parsing, temp files only, no sockets."""

import dataclasses
from pathlib import Path

import pytest
import yaml

from resolver.config import (
    Address,
    CacheConfig,
    Config,
    LoggingConfig,
    MetricsConfig,
    ServerConfig,
    StaleConfig,
    UpstreamAddress,
    UpstreamOptions,
    load_config,
    parse_address,
    parse_config,
    parse_duration,
    parse_upstream,
    read_resolv_conf,
)
from resolver.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "resolver.yaml"


def parse(data, resolv_conf):
    return parse_config(data, resolv_conf=resolv_conf)


def error(data, resolv_conf) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, resolv_conf=resolv_conf)
    return info.value


# -- defaults and the example file ---------------------------------------------------------


def test_no_file_means_defaults(resolv):
    config = load_config(None, resolv_conf=resolv)
    assert config == dataclasses.replace(Config(), upstreams=config.upstreams, resolv_conf=resolv)
    assert config.listen == (Address("127.0.0.1", 5353),)
    assert config.upstreams == (UpstreamAddress("127.0.0.1", 53, "udp"),)


@pytest.mark.parametrize("data", [None, {}])
def test_empty_document_means_defaults(data, resolv):
    assert parse(data, resolv).cache == CacheConfig()


def test_dataclass_defaults():
    config = Config()
    assert config.upstream == UpstreamOptions(1.0, 4.0, 3, 1.0, 30.0, 1232)
    assert config.cache == CacheConfig(100_000, 0, 86_400, 3_600, 1)
    assert config.stale == StaleConfig(True, 86_400.0, 30, 1.8, 30.0)
    assert config.server == ServerConfig(10.0, 256, 4096, 2.0)
    assert config.metrics == MetricsConfig(True, Address("127.0.0.1", 9153))
    assert config.logging == LoggingConfig("info", "text")
    assert config.resolv_conf == "/etc/resolv.conf"


def test_example_file_loads(resolv):
    config = load_config(str(EXAMPLE), resolv_conf=resolv)
    assert config.listen == (Address("127.0.0.1", 5353), Address("::1", 5353))
    assert config.upstreams == (UpstreamAddress("127.0.0.1", 53, "udp"),)
    assert config.resolv_conf == resolv


def test_example_file_states_every_default(resolv):
    """The example may not drift from the dataclass defaults, nor leave a key out."""
    data = yaml.safe_load(EXAMPLE.read_text())
    config = parse(data, resolv)
    expected = dataclasses.replace(
        Config(), listen=config.listen, upstreams=config.upstreams, resolv_conf=resolv
    )
    assert config == expected
    assert data["resolv_conf"] == Config().resolv_conf
    assert data["upstreams"] == []
    for field in dataclasses.fields(Config):
        assert field.name in data, field.name
        section = getattr(Config(), field.name)
        if dataclasses.is_dataclass(section):
            assert set(data[field.name]) == {f.name for f in dataclasses.fields(section)}


# -- durations ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, seconds",
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0),
     (5, 5.0), (0.25, 0.25), ("1.5s", 1.5), ("30", 30.0), (" 10s ", 10.0), (0, 0.0)],
)
def test_parse_duration(value, seconds):
    assert parse_duration(value, "stale.recheck") == seconds


@pytest.mark.parametrize(
    "value, problem",
    [("abc", "expected a duration"), ("10 parsecs", "expected a duration"), ("", "expected a duration"),
     ("5x", "expected a duration"), (True, "expected a duration"), (None, "expected a duration"),
     ([1], "expected a duration"), (-1, "must be non-negative"), ("-2s", "must be non-negative"),
     (float("inf"), "must be finite"), (float("nan"), "must be finite")],
)
def test_parse_duration_rejects(value, problem):
    with pytest.raises(ConfigError) as info:
        parse_duration(value, "stale.recheck")
    assert info.value.key == "stale.recheck"
    assert problem in info.value.problem
    assert str(info.value).startswith("stale.recheck: ")


def test_durations_in_sections(resolv):
    config = parse({"upstream": {"attempt_timeout": "500ms", "total_timeout": 3},
                    "stale": {"max_age": "2h", "client_timeout": 0}}, resolv)
    assert config.upstream.attempt_timeout == 0.5
    assert config.upstream.total_timeout == 3.0
    assert config.stale.max_age == 7200.0
    assert config.stale.client_timeout == 0.0


def test_ttls_accept_durations_and_become_ints(resolv):
    config = parse({"cache": {"max_ttl": "1d", "max_negative_ttl": "15m", "min_ttl": 60.0}}, resolv)
    assert config.cache.max_ttl == 86400 and isinstance(config.cache.max_ttl, int)
    assert config.cache.max_negative_ttl == 900
    assert config.cache.min_ttl == 60 and isinstance(config.cache.min_ttl, int)
    e = error({"stale": {"answer_ttl": "1500ms"}}, resolv)
    assert e.key == "stale.answer_ttl"
    assert "whole number of seconds" in e.problem


# -- addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, address, shown",
    [("127.0.0.1:5353", Address("127.0.0.1", 5353), "127.0.0.1:5353"),
     ("[::1]:5353", Address("::1", 5353), "[::1]:5353"),
     ("[2001:DB8::0:1]:53", Address("2001:db8::1", 53), "[2001:db8::1]:53"),
     ("0.0.0.0:53", Address("0.0.0.0", 53), "0.0.0.0:53"),
     ("[::]:65535", Address("::", 65535), "[::]:65535")],
)
def test_parse_address(text, address, shown):
    assert parse_address(text, "listen[0]") == address
    assert str(address) == shown


def test_parse_address_default_port():
    assert parse_address("192.0.2.1", "k", default_port=53) == Address("192.0.2.1", 53)
    assert parse_address("[::1]", "k", default_port=53) == Address("::1", 53)
    assert parse_address("::1", "k", default_port=53) == Address("::1", 53)


@pytest.mark.parametrize(
    "text, problem",
    [("127.0.0.1", "missing port"), ("::1", "IPv6 needs brackets"), ("::1:5353", "IPv6 needs brackets"),
     ("localhost:53", "not a hostname"), ("example.com:53", "not a hostname"),
     ("[127.0.0.1]:53", "brackets are only for IPv6"), ("127.0.0.1:0", "1 to 65535"),
     ("127.0.0.1:65536", "1 to 65535"), ("127.0.0.1:dns", "1 to 65535"), ("[::1]:", "1 to 65535"),
     ("256.0.0.1:53", "expected an IP address"), (5353, "expected an address"),
     (None, "expected an address")],
)
def test_parse_address_rejects(text, problem):
    with pytest.raises(ConfigError) as info:
        parse_address(text, "listen[2]")
    assert info.value.key == "listen[2]"
    assert problem in info.value.problem


@pytest.mark.parametrize(
    "text, upstream, label",
    [("192.0.2.53", UpstreamAddress("192.0.2.53", 53, "udp"), "udp://192.0.2.53:53"),
     ("192.0.2.53:5300", UpstreamAddress("192.0.2.53", 5300, "udp"), "udp://192.0.2.53:5300"),
     ("[2001:db8::1]:53", UpstreamAddress("2001:db8::1", 53, "udp"), "udp://[2001:db8::1]:53"),
     ("2001:db8::1", UpstreamAddress("2001:db8::1", 53, "udp"), "udp://[2001:db8::1]:53"),
     ("udp://192.0.2.53", UpstreamAddress("192.0.2.53", 53, "udp"), "udp://192.0.2.53:53"),
     ("tcp://198.51.100.53:53", UpstreamAddress("198.51.100.53", 53, "tcp"), "tcp://198.51.100.53:53"),
     ("tcp://[2001:db8::1]:853", UpstreamAddress("2001:db8::1", 853, "tcp"), "tcp://[2001:db8::1]:853")],
)
def test_parse_upstream(text, upstream, label):
    assert parse_upstream(text, "upstreams[0]") == upstream
    assert upstream.label == label


@pytest.mark.parametrize(
    "text, problem",
    [("quic://192.0.2.53", "unsupported scheme 'quic'"), ("h3://192.0.2.53:443", "unsupported scheme"),
     ("dns.example:53", "not a hostname"), ("192.0.2.53:0", "1 to 65535"), (53, "expected an address")],
)
def test_parse_upstream_rejects(text, problem):
    with pytest.raises(ConfigError) as info:
        parse_upstream(text, "upstreams[1]")
    assert info.value.key == "upstreams[1]"
    assert problem in info.value.problem


def test_lists_in_config(resolv):
    config = parse({"listen": "[::1]:53", "upstreams": ["192.0.2.1", "tcp://192.0.2.2"]}, resolv)
    assert config.listen == (Address("::1", 53),)
    assert [u.label for u in config.upstreams] == ["udp://192.0.2.1:53", "tcp://192.0.2.2:53"]
    assert parse({"upstreams": "192.0.2.9:5300"}, resolv).upstreams == (
        UpstreamAddress("192.0.2.9", 5300, "udp"),
    )


@pytest.mark.parametrize(
    "data, key, problem",
    [({"listen": []}, "listen", "at least one address"),
     ({"listen": None}, "listen", "at least one address"),
     ({"listen": {"a": 1}}, "listen", "expected a list of strings"),
     ({"listen": ["127.0.0.1:53", 53]}, "listen[1]", "expected an address"),
     ({"listen": ["127.0.0.1:53", "[::1]:53", "127.0.0.1:53"]}, "listen[2]", "duplicate of listen[0]"),
     ({"upstreams": 53}, "upstreams", "expected a list of strings"),
     ({"upstreams": ["192.0.2.1", "bad"]}, "upstreams[1]", "not a hostname"),
     ({"upstreams": ["192.0.2.1", "udp://192.0.2.1:53"]}, "upstreams[1]", "duplicate of upstreams[0]"),
     ({"metrics": {"listen": "127.0.0.1"}}, "metrics.listen", "missing port"),
     ({"metrics": {"listen": "127.0.0.1:5353"}}, "metrics.listen", "also a DNS listen address")],
)
def test_list_and_address_errors(data, key, problem, resolv):
    e = error(data, resolv)
    assert e.key == key
    assert problem in e.problem


def test_metrics_may_share_listen_address_when_disabled(resolv):
    config = parse({"metrics": {"enabled": False, "listen": "127.0.0.1:5353"}}, resolv)
    assert config.metrics == MetricsConfig(False, Address("127.0.0.1", 5353))


# -- structure: unknown keys, wrong types, ranges -----------------------------------------------


@pytest.mark.parametrize(
    "data, key, names",
    [({"listen_on": []}, "listen_on", "listen, upstreams, resolv_conf, upstream, cache"),
     ({"cache": {"max_entrys": 5}}, "cache.max_entrys", "max_entries, min_ttl, max_ttl"),
     ({"stale": {"enable": True}}, "stale.enable", "enabled, max_age, answer_ttl"),
     ({"metrics": {"port": 9}}, "metrics.port", "enabled, listen"),
     ({"logging": {"file": "x"}}, "logging.file", "level, format")],
)
def test_unknown_keys(data, key, names, resolv):
    e = error(data, resolv)
    assert e.key == key
    assert e.problem.startswith(f"unknown key (expected one of: {names}")
    assert str(e) == f"{key}: {e.problem}"


@pytest.mark.parametrize(
    "data, key, problem",
    [(["listen"], "", "expected a mapping of keys, got ['listen']"),
     ("hello", "", "expected a mapping of keys, got 'hello'"),
     ({"cache": ["max_entries"]}, "cache", "expected a mapping of keys"),
     ({"cache": 5}, "cache", "expected a mapping of keys, got 5"),
     ({"cache": {"max_entries": "abc"}}, "cache.max_entries", "expected an integer, got 'abc'"),
     ({"cache": {"max_entries": 1.5}}, "cache.max_entries", "expected an integer, got 1.5"),
     ({"cache": {"max_entries": True}}, "cache.max_entries", "expected an integer, got True"),
     ({"upstream": {"max_failures": False}}, "upstream.max_failures", "expected an integer, got False"),
     ({"server": {"max_inflight": "4096"}}, "server.max_inflight", "expected an integer, got '4096'"),
     ({"cache": {"min_ttl": True}}, "cache.min_ttl", "expected a duration"),
     ({"upstream": {"backoff": True}}, "upstream.backoff", "expected a duration"),
     ({"stale": {"enabled": "yes please"}}, "stale.enabled", "expected true or false, got 'yes please'"),
     ({"stale": {"enabled": 1}}, "stale.enabled", "expected true or false, got 1"),
     ({"logging": {"level": 3}}, "logging.level", "expected a non-empty string, got 3"),
     ({"resolv_conf": ["/etc/resolv.conf"]}, "resolv_conf", "expected a non-empty string")],
)
def test_wrong_types(data, key, problem, resolv):
    e = error(data, resolv)
    assert e.key == key
    assert problem in e.problem


def test_empty_section_means_defaults(resolv):
    assert parse({"cache": None, "stale": {}}, resolv).stale == StaleConfig()


@pytest.mark.parametrize(
    "section, values, key, problem",
    [("cache", {"max_entries": 0}, "cache.max_entries", "at least 1, got 0"),
     ("cache", {"min_ttl": 600, "max_ttl": 300}, "cache.min_ttl", "must not exceed cache.max_ttl (300), got 600"),
     ("cache", {"max_negative_ttl": -1}, "cache.max_negative_ttl", "non-negative"),
     ("cache", {"servfail_ttl": "6m"}, "cache.servfail_ttl", "at most 300"),
     ("stale", {"answer_ttl": 0}, "stale.answer_ttl", "at least 1, got 0"),
     ("stale", {"client_timeout": -0.5}, "stale.client_timeout", "non-negative"),
     ("stale", {"recheck": "-1s"}, "stale.recheck", "non-negative"),
     ("stale", {"slow_upstream": "-1s"}, "stale.slow_upstream", "non-negative"),
     ("stale", {"slow_upstream": "fast"}, "stale.slow_upstream", "duration"),
     ("stale", {"lossy_upstream": 1.5}, "stale.lossy_upstream", "a number from 0 to 1"),
     ("stale", {"lossy_upstream": "lots"}, "stale.lossy_upstream", "a number from 0 to 1"),
     ("stale", {"max_age": -1}, "stale.max_age", "non-negative"),
     ("upstream", {"attempt_timeout": 0}, "upstream.attempt_timeout", "greater than 0, got 0.0"),
     ("upstream", {"attempt_timeout": "2s", "total_timeout": "1s"}, "upstream.total_timeout",
      "must be at least upstream.attempt_timeout (2), got 1.0"),
     ("upstream", {"max_failures": 0}, "upstream.max_failures", "at least 1"),
     ("upstream", {"backoff": 0}, "upstream.backoff", "greater than 0"),
     ("upstream", {"backoff": "1m", "backoff_max": "30s"}, "upstream.backoff_max",
      "at least upstream.backoff (60)"),
     ("upstream", {"edns_buffer_size": 511}, "upstream.edns_buffer_size", "512 to 4096, got 511"),
     ("upstream", {"edns_buffer_size": 4097}, "upstream.edns_buffer_size", "512 to 4096"),
     ("server", {"tcp_max_connections": 0}, "server.tcp_max_connections", "at least 1"),
     ("server", {"max_inflight": -5}, "server.max_inflight", "at least 1"),
     ("server", {"tcp_idle_timeout": "soon"}, "server.tcp_idle_timeout", "expected a duration"),
     ("logging", {"level": "verbose"}, "logging.level", "got 'verbose'"),
     ("logging", {"format": "xml"}, "logging.format", "got 'xml'")],
)
def test_range_errors(section, values, key, problem, resolv):
    e = error({section: values}, resolv)
    assert e.key == key
    assert problem in e.problem


def test_range_edges_accepted(resolv):
    config = parse({"cache": {"servfail_ttl": 0, "min_ttl": 300, "max_ttl": 300, "max_entries": 1},
                    "upstream": {"edns_buffer_size": 512, "attempt_timeout": 2, "total_timeout": 2,
                                 "backoff": 5, "backoff_max": 5},
                    "stale": {"answer_ttl": 1, "recheck": 0, "max_age": 0, "enabled": False},
                    "logging": {"level": "debug", "format": "json"}}, resolv)
    assert config.cache.servfail_ttl == 0 and config.cache.min_ttl == config.cache.max_ttl == 300
    assert config.upstream.total_timeout == config.upstream.attempt_timeout == 2.0
    assert config.stale == StaleConfig(False, 0.0, 1, 1.8, 0.0)
    assert config.logging == LoggingConfig("debug", "json")


# -- resolv.conf --------------------------------------------------------------------------


def test_read_resolv_conf(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text(
        "# Generated by NetworkManager\n"
        "; another comment style\n"
        "search example.com corp.example\n"
        "options edns0 trust-ad timeout:2\n"
        "domain example.com\n"
        "nameserver 192.0.2.1\n"
        "  nameserver   2001:db8::53  # inline comment\n"
        "#nameserver 192.0.2.99\n"
        "nameserver fe80::1%eth0\n"
        "nameserver not-an-ip\n"
        "nameserver\n"
        "nameserver 198.51.100.7\n"
        "nameserver 192.0.2.1\n"
        "sortlist 130.155.160.0/255.255.240.0\n"
    )
    assert read_resolv_conf(str(path)) == ["192.0.2.1", "2001:db8::53", "198.51.100.7"]


def test_read_resolv_conf_missing_file(tmp_path):
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError) as info:
        read_resolv_conf(str(missing))
    assert info.value.key == "resolv_conf"
    assert info.value.problem.startswith(f"cannot read {missing}: ")
    assert "No such file" in info.value.problem


def test_resolv_conf_used_only_when_no_upstreams(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 192.0.2.1\nnameserver 2001:db8::53\n")
    config = parse({}, str(path))
    assert config.upstreams == (UpstreamAddress("192.0.2.1"), UpstreamAddress("2001:db8::53"))
    missing = str(tmp_path / "missing")
    assert parse({"upstreams": ["192.0.2.9"]}, missing).upstreams == (UpstreamAddress("192.0.2.9"),)
    assert error({}, missing).key == "resolv_conf"


def test_resolv_conf_key_and_override(tmp_path):
    from_key = tmp_path / "a.conf"
    from_key.write_text("nameserver 192.0.2.1\n")
    from_flag = tmp_path / "b.conf"
    from_flag.write_text("nameserver 192.0.2.2\n")
    config = parse_config({"resolv_conf": str(from_key)})
    assert config.resolv_conf == str(from_key)
    assert config.upstreams == (UpstreamAddress("192.0.2.1"),)
    config = parse_config({"resolv_conf": str(from_key)}, resolv_conf=str(from_flag))
    assert config.resolv_conf == str(from_flag)
    assert config.upstreams == (UpstreamAddress("192.0.2.2"),)


def test_empty_resolv_conf(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("# nothing here\nsearch example.com\n")
    e = error({}, str(path))
    assert e.key == "upstreams"
    assert e.problem.startswith(f"no usable upstream: none configured and {path} lists none")


# -- never forward to ourselves ----------------------------------------------------------------


def test_resolv_conf_entry_for_ourselves_is_dropped(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.1\nnameserver 192.0.2.1\n")
    config = parse({"listen": ["127.0.0.1:53"]}, str(path))
    assert config.upstreams == (UpstreamAddress("192.0.2.1"),)


def test_resolv_conf_naming_only_ourselves(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.1\nnameserver ::1\n")
    e = error({"listen": ["0.0.0.0:53", "[::1]:53"]}, str(path))
    assert e.key == "upstreams"
    assert "besides this forwarder itself" in e.problem


def test_explicit_upstream_for_ourselves_is_dropped(resolv):
    config = parse({"listen": ["127.0.0.1:5353"],
                    "upstreams": ["127.0.0.1:5353", "127.0.0.1:53", "tcp://192.0.2.1"]}, resolv)
    assert [u.label for u in config.upstreams] == ["udp://127.0.0.1:53", "tcp://192.0.2.1:53"]


@pytest.mark.parametrize(
    "listen, upstream",
    [("127.0.0.1:5353", "127.0.0.1:5353"),
     ("127.0.0.1:5353", "tcp://127.0.0.1:5353"),
     ("[::1]:5353", "[::1]:5353"),
     ("0.0.0.0:53", "127.0.0.1"),
     ("0.0.0.0:53", "127.0.0.53"),
     ("0.0.0.0:53", "0.0.0.0"),
     ("[::]:53", "::1"),
     ("[::]:53", "127.0.0.1:53")],
)
def test_explicit_list_naming_only_ourselves(listen, upstream, resolv):
    e = error({"listen": [listen], "upstreams": [upstream]}, resolv)
    assert e.key == "upstreams[0]"
    assert e.problem.startswith("points at this forwarder's own listen address")


@pytest.mark.parametrize(
    "listen, upstream",
    [("127.0.0.1:5353", "127.0.0.1:53"),  # same host, other port
     ("127.0.0.1:53", "127.0.0.2:53"),  # another loopback address, specific listener
     ("0.0.0.0:53", "192.0.2.1:53"),  # wildcard listener, remote upstream
     ("0.0.0.0:5353", "127.0.0.1:53")],  # wildcard listener, other port
)
def test_not_ourselves(listen, upstream, resolv):
    assert len(parse({"listen": [listen], "upstreams": [upstream]}, resolv).upstreams) == 1


# -- loading files -----------------------------------------------------------------------------


def test_load_config_file(tmp_path, resolv):
    path = tmp_path / "resolver.yaml"
    path.write_text("listen: ['[::1]:53']\nupstreams: [tcp://192.0.2.1]\ncache:\n  max_entries: 10\n")
    config = load_config(str(path), resolv_conf=resolv)
    assert config.listen == (Address("::1", 53),)
    assert config.upstreams == (UpstreamAddress("192.0.2.1", 53, "tcp"),)
    assert config.cache.max_entries == 10


def test_load_config_empty_file(tmp_path, resolv):
    path = tmp_path / "empty.yaml"
    path.write_text("# only a comment\n")
    assert load_config(str(path), resolv_conf=resolv).cache == CacheConfig()


def test_load_config_yaml_syntax_error(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("listen: ['127.0.0.1:53']\ncache:\n  max_entries: 10\n   min_ttl: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    e = info.value
    assert e.key == str(path)
    assert e.problem.startswith("invalid YAML at line 4, column ")
    assert "\n" not in str(e)


def test_load_config_unclosed_bracket(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("listen: ['127.0.0.1:53'\nupstreams: []\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.problem.startswith("invalid YAML at line ")
    assert "\n" not in str(info.value)


def test_load_config_duplicate_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("cache:\n  max_entries: 10\n  max_entries: 20\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.key == str(path)
    assert info.value.problem == "invalid YAML at line 3, column 3: duplicate key 'max_entries'"


def test_load_config_missing_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == path
    assert "cannot read" in info.value.problem and "No such file" in info.value.problem


def test_load_config_errors_name_key_paths(tmp_path, resolv):
    path = tmp_path / "resolver.yaml"
    path.write_text("upstream:\n  backof: 2s\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), resolv_conf=resolv)
    assert info.value.key == "upstream.backof"


def test_config_is_frozen(resolv):
    config = parse({}, resolv)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.cache.max_entries = 5  # type: ignore[misc]
    assert hash(config)  # usable as a dict key / in sets


# -- observability keys (issue 6) ------------------------------------------------------------

@pytest.mark.parametrize(
    "data, key, problem",
    [({"metrics": {"allow_remote_admin": True}}, "metrics.allow_remote_admin", "removed: the admin API has its own"),
     ({"metrics": {"allow_remote_admin": False}}, "metrics.allow_remote_admin", "removed: the admin API has its own"),
     ({"logging": {"queries": "on"}}, "logging.queries", "expected true or false"),
     ({"logging": {"query_sample": 1.5}}, "logging.query_sample", "expected a number from 0 to 1"),
     ({"logging": {"query_sample": -0.1}}, "logging.query_sample", "expected a number from 0 to 1"),
     ({"logging": {"query_sample": "10%"}}, "logging.query_sample", "expected a number from 0 to 1"),
     ({"logging": {"query_sample": True}}, "logging.query_sample", "expected a number from 0 to 1"),
     ({"logging": {"query_sample": float("nan")}}, "logging.query_sample", "expected a number from 0 to 1"),
     ({"logging": {"query_samples": 0.5}}, "logging.query_samples", "unknown key")],
)
def test_observability_keys_rejected(data, key, problem, resolv):
    e = error(data, resolv)
    assert e.key == key and problem in e.problem


def test_observability_keys_accepted(resolv):
    config = parse({"logging": {"queries": True, "query_sample": 0}}, resolv)
    assert config.logging.queries
    assert config.logging.query_sample == 0.0 and isinstance(config.logging.query_sample, float)
# -- security (issue 7) -----------------------------------------------------------------


def test_security_defaults_allow_only_loopback_and_private(resolv):
    from resolver.config import DEFAULT_ALLOW, SecurityConfig

    config = parse(None, resolv)
    assert config.security == SecurityConfig()
    assert config.security.allow == DEFAULT_ALLOW
    assert config.security.refused_action == "refuse" and config.security.upstream_0x20 is False


def test_security_values(resolv):
    config = parse({"security": {"allow": ["192.0.2.0/24", " 2001:db8::/32 ", "198.51.100.7"],
                                 "refused_action": "drop", "upstream_0x20": True,
                                 "max_inflight_per_client": 5, "tcp_max_connections_per_client": 2,
                                 "tcp_read_timeout": "500ms"}}, resolv)
    s = config.security
    assert s.allow == ("192.0.2.0/24", "2001:db8::/32", "198.51.100.7/32")
    assert (s.refused_action, s.upstream_0x20, s.max_inflight_per_client) == ("drop", True, 5)
    assert (s.tcp_max_connections_per_client, s.tcp_read_timeout) == (2, 0.5)
    assert parse({"security": {"allow": "0.0.0.0/0"}}, resolv).security.allow == ("0.0.0.0/0",)


def test_client_limits_exempt(resolv):
    """Loopback by default (a sidecar's pod); a list of networks; [] exempts nobody."""
    assert parse(None, resolv).security.client_limits_exempt == ("127.0.0.0/8", "::1/128")
    s = parse({"security": {"client_limits_exempt": ["10.1.0.0/16", "fd00::/8"]}}, resolv).security
    assert s.client_limits_exempt == ("10.1.0.0/16", "fd00::/8")
    assert parse({"security": {"client_limits_exempt": []}}, resolv).security.client_limits_exempt == ()


@pytest.mark.parametrize(
    "section, key, problem",
    [
        ({"allow": []}, "security.allow", "at least one network"),
        ({"allow": ["10.0.0.1/8"]}, "security.allow[0]", "has host bits set"),
        ({"allow": ["10.0.0.0/8", "example.com"]}, "security.allow[1]", "expected a network"),
        ({"allow": ["10.0.0.0/33"]}, "security.allow[0]", "expected a network"),
        ({"allow": [10]}, "security.allow[0]", "expected a network"),
        ({"allow": {"a": 1}}, "security.allow", "expected a list"),
        ({"refused_action": "ignore"}, "security.refused_action", "must be one of: refuse, drop"),
        ({"refused_action": ""}, "security.refused_action", "non-empty string"),
        ({"upstream_0x20": "yes"}, "security.upstream_0x20", "true or false"),
        ({"max_inflight_per_client": 0}, "security.max_inflight_per_client", "at least 1"),
        ({"tcp_max_connections_per_client": "9"}, "security.tcp_max_connections_per_client", "an integer"),
        ({"tcp_read_timeout": 0}, "security.tcp_read_timeout", "greater than 0"),
        ({"tcp_read_timeout": "later"}, "security.tcp_read_timeout", "expected a duration"),
        ({"allowed": ["10.0.0.0/8"]}, "security.allowed", "unknown key"),
        ({"client_limits_exempt": ["127.0.0.1/8"]}, "security.client_limits_exempt[0]", "has host bits set"),
        ({"client_limits_exempt": ["localhost"]}, "security.client_limits_exempt[0]", "expected a network"),
    ],
)
def test_security_bad_values(section, key, problem, resolv):
    e = error({"security": section}, resolv)
    assert e.key == key
    assert problem in e.problem


@pytest.mark.parametrize(
    "section, key, problem",
    [
        ({"rate_limit": -1}, "security.rate_limit", "must be 0 (off) to 1000000"),
        ({"rate_limit": "fast"}, "security.rate_limit", "an integer"),
        ({"rate_limit_slip": 11}, "security.rate_limit_slip", "must be 0 to 10"),
        ({"rate_limit_slip": 1.5}, "security.rate_limit_slip", "an integer"),
    ],
)
def test_rate_limit_bad_values(section, key, problem, resolv):
    e = error({"security": section}, resolv)
    assert e.key == key and problem in e.problem


# -- refusals that used to start a process that could not work (issue 14) ------------------

def test_client_timeout_above_total_timeout_is_refused(resolv):
    e = error({"stale": {"client_timeout": "5s"}, "upstream": {"total_timeout": "4s"}}, resolv)
    assert e.key == "stale.client_timeout" and "upstream.total_timeout (4)" in e.problem
    assert parse({"stale": {"client_timeout": "4s"}, "upstream": {"total_timeout": "4s"}}, resolv)


def test_absurd_max_entries_is_refused(resolv):
    e = error({"cache": {"max_entries": 1_000_000_000}}, resolv)
    assert e.key == "cache.max_entries" and "at most 100000000" in e.problem
    assert parse({"cache": {"max_entries": 100_000_000}}, resolv).cache.max_entries == 100_000_000


def test_relative_persist_path_is_refused(resolv):
    e = error({"cache": {"persist": {"path": "cache.snap"}}}, resolv)
    assert e.key == "cache.persist.path" and "absolute" in e.problem


def test_persist_path_that_is_not_a_regular_file_is_refused(resolv, tmp_path):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    e = error({"cache": {"persist": {"path": str(fifo)}}}, resolv)
    assert e.key == "cache.persist.path" and "not a regular file" in e.problem
    e = error({"cache": {"persist": {"path": str(tmp_path)}}}, resolv)
    assert e.key == "cache.persist.path" and "is a directory" in e.problem
    assert parse({"cache": {"persist": {"path": str(tmp_path / "new.snap")}}}, resolv)
    (tmp_path / "old.snap").write_bytes(b"")
    assert parse({"cache": {"persist": {"path": str(tmp_path / "old.snap")}}}, resolv)


def test_config_errors_exit_2_with_one_line(tmp_path):
    from resolver.cli import main

    path = tmp_path / "r.yaml"
    path.write_text('upstreams: ["127.0.0.1:1053"]\ncache: {persist: {path: "relative.snap"}}\n')
    assert main(["--config", str(path), "--check-config"]) == 2


def test_admin_section(resolv, tmp_path):
    config = parse(None, resolv)
    assert (config.admin.socket, config.admin.listen, config.admin.max_pins) == ("auto", "", 1000)
    assert parse({"admin": {"socket": ""}}, resolv).admin.socket == ""
    assert error({"admin": {"socket": "rel/admin.sock"}}, resolv).key == "admin.socket"
    e = error({"admin": {"listen": "0.0.0.0:9154"}}, resolv)
    assert e.key == "admin.token_file" and "not a loopback" in e.problem
    token = tmp_path / "token"
    token.write_text("short")
    assert error({"admin": {"listen": "0.0.0.0:9154", "token_file": str(token)}}, resolv).key == "admin.token_file"
    token.write_text("a-long-enough-token-1234\n")
    assert parse({"admin": {"listen": "0.0.0.0:9154", "token_file": str(token)}}, resolv).admin.token_file
    assert error({"admin": {"token_file": str(tmp_path / "missing")}}, resolv).key == "admin.token_file"
    assert error({"admin": {"listen": "127.0.0.1:5353"}, "listen": ["127.0.0.1:5353"]}, resolv).key == "admin.listen"
    assert error({"admin": {"max_pins": 0}}, resolv).key == "admin.max_pins"
    assert error({"metrics": {"max_connections": 0}}, resolv).key == "metrics.max_connections"
