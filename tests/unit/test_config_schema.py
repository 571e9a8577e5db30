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
