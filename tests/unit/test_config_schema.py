"""The schema declares how every field is read: no parser is chosen by a field's name.

resolver/config/schema.py names a parser (and a unit) on each field; the one walker
calls it.  These tests keep it that way: a field added without a parser would
otherwise have no way to be read from YAML, and a duration without its unit would
leave config/resolver.yaml's readers guessing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from resolver.config import fields, schema
from resolver.config.schema import read_section, setting
from resolver.errors import ConfigError

CONFIG_PACKAGE = Path(schema.__file__).parent

SECTIONS = [obj for obj in vars(schema).values()
            if isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__module__ == schema.__name__]
SECONDS = {fields.duration, fields.ttl, fields.hedge_delay}


def undeclared(cls: type) -> list[str]:
    """Fields of ``cls`` that do not name a parser of their own."""
    return [f.name for f in dataclasses.fields(cls) if not callable(f.metadata.get("parse"))]


def test_the_schema_has_every_section():
    names = {cls.__name__ for cls in SECTIONS}
    assert {"Config", "UpstreamOptions", "CacheConfig", "PersistConfig", "StaleConfig", "StaleRule",
            "LastKnownGoodConfig", "ServerConfig", "SecurityConfig", "MetricsConfig", "AdminConfig",
            "LoggingConfig", "ForwardZone", "HostsFileConfig"} <= names


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda cls: cls.__name__)
def test_every_field_declares_its_parser(cls):
    assert not undeclared(cls), f"{cls.__name__}: declare parse= on {undeclared(cls)} (schema.setting)"


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda cls: cls.__name__)
def test_every_duration_declares_seconds(cls):
    for f in dataclasses.fields(cls):
        if f.metadata.get("parse") in SECONDS:
            assert f.metadata["unit"] == "s", f"{cls.__name__}.{f.name}"


def test_nested_sections_are_read_against_their_own_fields():
    """Every section reachable from Config is declared with schema.section, so its keys are
    checked against its own dataclass (unknown keys refused at any depth)."""
    seen, todo = set(), [schema.Config]
    while todo:
        cls = todo.pop()
        seen.add(cls)
        for f in dataclasses.fields(cls):
            if "section" in f.metadata:
                assert f.default == f.metadata["section"](), f"{cls.__name__}.{f.name}: default is not the section's"
                todo.append(f.metadata["section"])
    assert {schema.CacheConfig, schema.PersistConfig, schema.LastKnownGoodConfig, schema.HostsFileConfig} <= seen


def test_the_check_sees_a_field_without_a_parser():
    """A guard against a vacuous pass: a plain dataclass field is reported."""

    @dataclasses.dataclass(frozen=True)
    class Section:
        declared: int = setting(1, parse=fields.integer)
        forgotten: int = 2

    assert undeclared(Section) == ["forgotten"]


def test_a_field_is_read_by_its_own_parser_whatever_its_name():
    """Two fields with the same name in different sections read differently (cache.max_entries is
    a count, a hypothetical timer of the same name a duration): the declaration decides."""

    @dataclasses.dataclass(frozen=True)
    class Timers:
        max_entries: float = setting(1.0, parse=fields.duration, unit="s")
        ttl: float = setting(0.5, parse=fields.fraction)

    assert read_section(Timers, {"max_entries": "2m", "ttl": 0.25}, "timers") == Timers(120.0, 0.25)
    with pytest.raises(ConfigError) as info:
        read_section(Timers, {"ttl": "60s"}, "timers")
    assert str(info.value).startswith("timers.ttl: expected a fraction")


def test_every_config_module_postpones_annotations():
    """The schema reads no annotations at run time, so every module may postpone them
    (the old single module only worked because it did not)."""
    for path in sorted(CONFIG_PACKAGE.glob("*.py")):
        assert "from __future__ import annotations" in path.read_text(), path.name


# Whole error lines, byte for byte, for the values whose parsing moved from a chain of
# name tests into declared parsers (these lines were produced by the code before the move).
WHOLE_MESSAGES = [
    ({"upstream": {"policy": "random"}},
     "upstream.policy: must be one of: sequential, round_robin, fastest, got 'random'"),
    ({"upstream": {"policy": ""}}, "upstream.policy: expected a non-empty string, got ''"),
    ({"stale": {"last_known_good": {"mode": "on"}}},
     "stale.last_known_good.mode: must be one of: enforce, shadow, got 'on'"),
    ({"security": {"refused_action": 1}}, "security.refused_action: expected a non-empty string, got 1"),
    ({"logging": {"format": "xml"}}, "logging.format: must be one of: text, json, got 'xml'"),
    ({"upstream": {"hedge_after": "never"}},
     "upstream.hedge_after: expected a duration (seconds, or e.g. 500ms, 30s, 5m, 2h, 1d), got 'never'"),
    ({"upstream": {"tls_ca_file": 3}},
     "upstream.tls_ca_file: expected a file path (or \"\" for the system store), got 3"),
    ({"admin": {"socket": None}}, "admin.socket: expected a socket path, \"auto\" or \"\" (none), got None"),
    ({"admin": {"listen": 8953}}, "admin.listen: expected a non-empty string, got 8953"),
    ({"cache": {"persist": {"path": []}}}, "cache.persist.path: expected a non-empty string, got []"),
    ({"cache": {"prefetch": 1}}, "cache.prefetch: expected a fraction from 0 to below 1 (0.1 = last 10%), got 1"),
    ({"logging": {"query_sample": "all"}}, "logging.query_sample: expected a number from 0 to 1, got 'all'"),
    ({"hosts_file": {"ttl": "1.5s"}}, "hosts_file.ttl: expected a whole number of seconds, got '1.5s'"),
    ({"security": {"client_limits_exempt": ["10.1.2.3/8"]}},
     "security.client_limits_exempt[0]: expected a network such as 10.0.0.0/8: 10.1.2.3/8 has host bits set"),
    ({"security": {"allow": []}},
     "security.allow: must list at least one network (0.0.0.0/0 and ::/0 allow everyone)"),
    ({"stale": {"last_known_good": {"zones": ["a..b"]}}},
     "stale.last_known_good.zones[0]: expected a domain name such as example.com, got 'a..b'"),
    ({"stale": {"rules": [{"match": ""}]}}, "stale.rules[0].match: is required (e.g. \"*.elb.amazonaws.com\")"),
    ({"stale": {"rules": [{"enabled": True}]}}, "stale.rules[0].match: is required (e.g. \"*.elb.amazonaws.com\")"),
    ({"stale": {"rules": [{"match": "*.Bad!"}]}},
     "stale.rules[0].match: expected a domain name such as example.com, got 'bad!'"),
    ({"stale": {"rules": {"match": "a"}}}, "stale.rules: expected a list, got {'match': 'a'}"),
    ({"metrics": {"listen": "localhost:9153"}},
     "metrics.listen: expected an IP address (not a hostname), got 'localhost'"),
    ({"metrics": {"allow_remote_admin": True, "bogus": 1}},
     "metrics.allow_remote_admin: removed: the admin API has its own listener now (admin.socket, or "
     "admin.listen with admin.token_file for remote use)"),
    ({"forward": [{"zone": "corp", "upstreams": []}]}, "forward[0].upstreams: must list at least one upstream"),
    ({"forward": [None]}, "forward[0]: needs both 'zone' and 'upstreams'"),
    ({"forward": "corp"}, "forward: expected a list of {zone, upstreams} mappings, got 'corp'"),
    ({"workers": 0}, "workers: expected an integer from 1 to 256, or \"auto\", got 0"),
    ({"resolv_conf": None}, "resolv_conf: expected a non-empty string, got None"),
]


@pytest.mark.parametrize("data, line", WHOLE_MESSAGES)
def test_error_lines_are_unchanged(data, line, tmp_path):
    from resolver.config import parse_config

    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    with pytest.raises(ConfigError) as info:
        parse_config(data, resolv_conf=str(resolv))
    assert str(info.value) == line


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("on", "on"), ("off", "off"), (True, "on"),
                                             (False, "off")])
def test_udp_accelerator_takes_auto_on_off_and_yaml_booleans(value, expected, tmp_path):
    """``server.udp_accelerator`` (the native UDP hit loop): YAML 1.1 reads a bare on/off as a
    boolean, which is taken as the word rather than refused."""
    from resolver.config import parse_config

    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    assert parse_config({"server": {"udp_accelerator": value}}, resolv_conf=str(resolv)).server.udp_accelerator \
        == expected
    assert parse_config({}, resolv_conf=str(resolv)).server.udp_accelerator == "auto"


@pytest.mark.parametrize("value, line", [
    ("native", "server.udp_accelerator: must be one of: auto, on, off, got 'native'"),
    (1, "server.udp_accelerator: expected a non-empty string, got 1"),
])
def test_udp_accelerator_bad_values(value, line, tmp_path):
    from resolver.config import parse_config

    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    with pytest.raises(ConfigError) as info:
        parse_config({"server": {"udp_accelerator": value}}, resolv_conf=str(resolv))
    assert str(info.value) == line
