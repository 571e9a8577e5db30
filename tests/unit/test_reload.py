"""Unit tests for resolver.reload: what a reload may change, and the bookkeeping."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from resolver.config import Address, Config, MetricsConfig, UpstreamAddress
from resolver.errors import ConfigError
from resolver.ops import reload

BASE = Config(upstreams=(UpstreamAddress("192.0.2.1"),))


@pytest.mark.parametrize("change", [
    {"upstreams": (UpstreamAddress("192.0.2.2"),)},
    {"stale": dataclasses.replace(BASE.stale, max_age=5.0)},
    {"cache": dataclasses.replace(BASE.cache, max_entries=5)},
    {"server": dataclasses.replace(BASE.server, max_inflight=5)},
])
def test_live_changes_are_reloadable(change):
    reload.check_reloadable(BASE, dataclasses.replace(BASE, **change))


@pytest.mark.parametrize("key, change", [
    ("listen", {"listen": (Address("127.0.0.1", 53),)}),
    ("metrics", {"metrics": MetricsConfig(listen=Address("127.0.0.1", 9999))}),
    ("workers", {"workers": 4}),
])
def test_restart_only_changes_are_refused(key, change):
    with pytest.raises(ConfigError) as info:
        reload.check_reloadable(BASE, dataclasses.replace(BASE, **change))
    assert info.value.key == key


def test_reload_counts_and_logs_one_line(caplog):
    stats = reload.ReloadStats()
    applied = []
    assert reload.reload(lambda: BASE, applied.append, stats, lambda: 123.0)
    assert applied == [BASE] and (stats.successes, stats.failures, stats.last_success_wall) == (1, 0, 123.0)

    def bad():
        raise ConfigError("cache.max_entries", "expected an integer, got 'x'")

    with caplog.at_level(logging.ERROR, logger="resolver.reload"):
        assert not reload.reload(bad, applied.append, stats, lambda: 456.0)
    assert applied == [BASE] and (stats.successes, stats.failures, stats.last_success_wall) == (1, 1, 123.0)
    assert len(caplog.records) == 1 and "cache.max_entries" in caplog.records[0].getMessage()
