"""Config keys of the outage policies (issue 5): probes, prefetch, last-known-good."""

import pytest

from resolver.config import LastKnownGoodConfig, parse_config
from resolver.errors import ConfigError


def test_defaults(resolv):
    c = parse_config(None, resolv_conf=resolv)
    assert (c.upstream.probe_name, c.upstream.probe_interval, c.upstream.probe_interval_max) == (".", 0.5, 1.0)
    assert c.cache.prefetch == 0.1
    assert c.stale.last_known_good == LastKnownGoodConfig((), 3600.0, "enforce")


def test_values_accepted(resolv):
    c = parse_config({
        "upstream": {"probe_name": "Health.Example.", "probe_interval": "250ms", "probe_interval_max": "5s"},
        "cache": {"prefetch": 0},
        "stale": {"last_known_good": {"zones": ["AmazonAWS.com.", "example"], "max_age": "2h", "mode": "shadow"}},
    }, resolv_conf=resolv)
    assert c.upstream.probe_name == "Health.Example."
    assert c.upstream.probe_interval == 0.25 and c.upstream.probe_interval_max == 5.0
    assert c.cache.prefetch == 0.0
    assert c.stale.last_known_good == LastKnownGoodConfig(("amazonaws.com", "example"), 7200.0, "shadow")


@pytest.mark.parametrize("data, key, problem", [
    ({"upstream": {"probe_interval": 0}}, "upstream.probe_interval", "greater than 0"),
    ({"upstream": {"probe_interval": "2s", "probe_interval_max": "1s"}}, "upstream.probe_interval_max",
     "at least upstream.probe_interval (2)"),
    ({"upstream": {"probe_name": "bad name!"}}, "upstream.probe_name", "expected a domain name"),
    ({"upstream": {"probe_name": ""}}, "upstream.probe_name", "non-empty string"),
    ({"upstream": {"probe_name": 5}}, "upstream.probe_name", "non-empty string"),
    ({"cache": {"prefetch": 1}}, "cache.prefetch", "fraction"),
    ({"cache": {"prefetch": -0.1}}, "cache.prefetch", "fraction"),
    ({"cache": {"prefetch": "10%"}}, "cache.prefetch", "fraction"),
    ({"cache": {"prefetch": True}}, "cache.prefetch", "fraction"),
    ({"stale": {"last_known_good": {"mode": "on"}}}, "stale.last_known_good.mode", "enforce, shadow"),
    ({"stale": {"last_known_good": {"zone": ["x"]}}}, "stale.last_known_good.zone", "unknown key"),
    ({"stale": {"last_known_good": {"zones": ["a..b"]}}}, "stale.last_known_good.zones[0]", "domain name"),
    ({"stale": {"last_known_good": {"zones": ["ok.com", 7]}}}, "stale.last_known_good.zones[1]", "non-empty"),
    ({"stale": {"last_known_good": {"zones": {"a": 1}}}}, "stale.last_known_good.zones", "a list"),
    ({"stale": {"last_known_good": {"max_age": "forever"}}}, "stale.last_known_good.max_age", "duration"),
    ({"stale": {"last_known_good": ["amazonaws.com"]}}, "stale.last_known_good", "a mapping"),
    ({"stale": {"last_known_good": {"zones": ["x" * 64 + ".com"]}}}, "stale.last_known_good.zones[0]", "domain"),
])
def test_bad_values_name_the_key(data, key, problem, resolv):
    with pytest.raises(ConfigError) as info:
        parse_config(data, resolv_conf=resolv)
    assert info.value.key == key
    assert problem in info.value.problem


def test_policy_and_hedge_values(resolv):
    c = parse_config({"upstream": {"policy": "fastest", "hedge_after": "150ms"}}, resolv_conf=resolv)
    assert (c.upstream.policy, c.upstream.hedge_after) == ("fastest", 0.15)
    assert parse_config({"upstream": {"hedge_after": "off"}}, resolv_conf=resolv).upstream.hedge_after == 0.0
    assert parse_config({"upstream": {"hedge_after": "auto"}}, resolv_conf=resolv).upstream.hedge_after == -1.0


@pytest.mark.parametrize("data, key, problem", [
    ({"upstream": {"policy": "random"}}, "upstream.policy", "sequential, round_robin, fastest"),
    ({"upstream": {"policy": 1}}, "upstream.policy", "non-empty string"),
    ({"upstream": {"hedge_after": "soon"}}, "upstream.hedge_after", "duration"),
    ({"upstream": {"hedge_after": -1}}, "upstream.hedge_after", "non-negative"),
    ({"upstream": {"hedge_after": "AUTO"}}, "upstream.hedge_after", "duration"),
])
def test_policy_errors(data, key, problem, resolv):
    with pytest.raises(ConfigError) as info:
        parse_config(data, resolv_conf=resolv)
    assert info.value.key == key and problem in info.value.problem


def test_tls_upstreams(resolv, tmp_path):
    from resolver.config import UpstreamAddress, parse_upstream

    assert parse_upstream("tls://192.0.2.53#DNS.Example.", "u") == UpstreamAddress("192.0.2.53", 853, "tls", "dns.example")
    assert parse_upstream("tls://[2001:db8::1]:8853", "u") == UpstreamAddress("2001:db8::1", 8853, "tls", "")
    assert parse_upstream("tls://192.0.2.53#x", "u").label == "tls://192.0.2.53:853"
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    c = parse_config({"upstreams": ["tls://192.0.2.53#dns.example"], "upstream": {"tls_ca_file": str(ca)}},
                     resolv_conf=resolv)
    assert c.upstream.tls_ca_file == str(ca) and c.upstreams[0].server_name == "dns.example"


@pytest.mark.parametrize("data, key, problem", [
    ({"upstreams": ["192.0.2.53#dns.example"]}, "upstreams[0]", "only for tls://"),
    ({"upstreams": ["tcp://192.0.2.53#dns.example"]}, "upstreams[0]", "only for tls://"),
    ({"upstreams": ["tls://192.0.2.53#"]}, "upstreams[0]", "non-empty string"),
    ({"upstreams": ["tls://192.0.2.53#bad name"]}, "upstreams[0]", "domain name"),
    ({"upstreams": ["tls://dns.example"]}, "upstreams[0]", "not a hostname"),
    ({"upstream": {"tls_ca_file": "/nonexistent/ca.pem"}}, "upstream.tls_ca_file", "cannot read"),
    ({"upstream": {"tls_ca_file": 5}}, "upstream.tls_ca_file", "a file path"),
])
def test_tls_errors(data, key, problem, resolv):
    with pytest.raises(ConfigError) as info:
        parse_config(data, resolv_conf=resolv)
    assert info.value.key == key and problem in info.value.problem
