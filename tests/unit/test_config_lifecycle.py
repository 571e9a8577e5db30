"""Config keys for restarts and workers: cache.persist.* and workers (good and bad values)."""

from __future__ import annotations

import pytest

from resolver.config import WORKERS_AUTO, PersistConfig, parse_config
from resolver.errors import ConfigError


def test_defaults_persistence_off_one_worker(resolv):
    config = parse_config(None, resolv)
    assert config.cache.persist == PersistConfig(path="", interval=60.0)
    assert config.workers == 1


def test_host_tier_keys_parse_with_binary_units(resolv):
    persist = parse_config({"cache": {"persist": {
        "path": "/var/lib/resolver/cache.lmdb", "map_size": "2GiB", "max_bytes": "1536MiB",
        "max_entries": 2_000_000, "write_interval": "100ms", "write_queue": 5000}}}, resolv).cache.persist
    assert (persist.engine, persist.map_size, persist.max_bytes) == ("host", 2 << 30, 1536 << 20)
    assert (persist.max_entries, persist.write_interval, persist.write_queue) == (2_000_000, 0.1, 5000)
    assert parse_config({"cache": {"persist": {"engine": "snapshot"}}}, resolv).cache.persist.engine == "snapshot"
    assert parse_config({"cache": {"persist": {"map_size": 1 << 30}}}, resolv).cache.persist.map_size == 1 << 30


def test_persist_and_workers_parse(resolv):
    config = parse_config({"cache": {"persist": {"path": "/var/lib/resolver/cache.snap", "interval": "5m"}},
                           "workers": 4}, resolv)
    assert config.cache.persist == PersistConfig("/var/lib/resolver/cache.snap", 300.0)
    assert config.workers == 4
    assert parse_config({"workers": "auto"}, resolv).workers == WORKERS_AUTO
    assert parse_config({"cache": {"persist": {"path": ""}}}, resolv).cache.persist.path == ""
    assert parse_config({"cache": {"persist": None}}, resolv).cache.persist == PersistConfig()


@pytest.mark.parametrize("data, key", [
    ({"workers": 0}, "workers"),
    ({"workers": -2}, "workers"),
    ({"workers": 257}, "workers"),
    ({"workers": "many"}, "workers"),
    ({"workers": True}, "workers"),
    ({"workers": 1.5}, "workers"),
    ({"cache": {"persist": "yes"}}, "cache.persist"),
    ({"cache": {"persist": {"paht": "/x"}}}, "cache.persist.paht"),
    ({"cache": {"persist": {"path": 5}}}, "cache.persist.path"),
    ({"cache": {"persist": {"path": ["a"]}}}, "cache.persist.path"),
    ({"cache": {"persist": {"interval": 0}}}, "cache.persist.interval"),
    ({"cache": {"persist": {"interval": "soon"}}}, "cache.persist.interval"),
    ({"cache": {"persist": {"interval": -1}}}, "cache.persist.interval"),
    ({"cache": {"persist": {"engine": "redis"}}}, "cache.persist.engine"),
    ({"cache": {"persist": {"engine": 1}}}, "cache.persist.engine"),
    ({"cache": {"persist": {"map_size": "1 GB"}}}, "cache.persist.map_size"),
    ({"cache": {"persist": {"map_size": "512KiB"}}}, "cache.persist.map_size"),
    ({"cache": {"persist": {"map_size": True}}}, "cache.persist.map_size"),
    ({"cache": {"persist": {"map_size": "1GiB", "max_bytes": "900MiB"}}}, "cache.persist.max_bytes"),
    ({"cache": {"persist": {"max_bytes": 0}}}, "cache.persist.max_bytes"),
    ({"cache": {"persist": {"max_entries": 0}}}, "cache.persist.max_entries"),
    ({"cache": {"persist": {"write_interval": "2s"}}}, "cache.persist.write_interval"),
    ({"cache": {"persist": {"write_interval": 0}}}, "cache.persist.write_interval"),
    ({"cache": {"persist": {"write_queue": 0}}}, "cache.persist.write_queue"),
])
def test_bad_values_name_the_key(resolv, data, key):
    with pytest.raises(ConfigError) as info:
        parse_config(data, resolv)
    assert info.value.key == key, str(info.value)
