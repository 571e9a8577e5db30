"""config.py: forward, local_records, hosts_file and block_zones: good values, and bad
ones refused with the key path (the CLI prints exactly this, exit 2)."""

from __future__ import annotations

import pytest

from resolver import wire
from resolver.config import ConfigError, HostsFileConfig, UpstreamAddress, parse_config

BASE = {"upstreams": ["192.0.2.1"]}


def parse(**extra):
    return parse_config({**BASE, **extra})


def error(**extra) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(**extra)
    assert "\n" not in str(info.value)
    return info.value


def test_defaults_are_off():
    c = parse()
    assert c.forward == () and c.local_records == () and c.block_zones == ()
    assert c.hosts_file == HostsFileConfig(enabled=False, path="/etc/hosts", ttl=60, check_interval=5.0)


def test_forward_parsed():
    c = parse(forward=[{"zone": "Cluster.Local.", "upstreams": ["10.96.0.10:53", "tcp://10.96.0.11"]},
                       {"zone": "10.in-addr.arpa", "upstreams": "10.96.0.12:53"}])
    assert c.forward[0].zone == wire.name_to_wire("cluster.local")
    assert c.forward[0].upstreams == (UpstreamAddress("10.96.0.10", 53), UpstreamAddress("10.96.0.11", 53, "tcp"))
    assert c.forward[1].upstreams == (UpstreamAddress("10.96.0.12", 53),)


def test_hosts_file_section():
    c = parse(hosts_file={"enabled": True, "path": "/tmp/h", "ttl": "2m", "check_interval": "500ms"})
    assert c.hosts_file == HostsFileConfig(True, "/tmp/h", 120, 0.5)


@pytest.mark.parametrize("extra, key, problem", [
    ({"forward": "cluster.local"}, "forward", "expected a list"),
    ({"forward": [["cluster.local"]]}, "forward[0]", "expected a mapping"),
    ({"forward": [{"zone": "a"}]}, "forward[0]", "needs both"),
    ({"forward": [{"zone": "a", "upstreams": [], "policy": "x"}]}, "forward[0].policy", "unknown key"),
    ({"forward": [{"zone": "a", "upstreams": []}]}, "forward[0].upstreams", "at least one"),
    ({"forward": [{"zone": "a..b", "upstreams": ["192.0.2.9"]}]}, "forward[0].zone", "invalid zone"),
    ({"forward": [{"zone": ".", "upstreams": ["192.0.2.9"]}]}, "forward[0].zone", "root zone"),
    ({"forward": [{"zone": 5, "upstreams": ["192.0.2.9"]}]}, "forward[0].zone", "expected a zone"),
    ({"forward": [{"zone": "a", "upstreams": ["dns.google"]}]}, "forward[0].upstreams[0]", "not a hostname"),
    ({"forward": [{"zone": "a", "upstreams": ["192.0.2.9", "192.0.2.9:53"]}]}, "forward[0].upstreams[1]",
     "duplicate"),
    ({"forward": [{"zone": "a", "upstreams": ["192.0.2.9"]}, {"zone": "A.", "upstreams": ["192.0.2.9"]}]},
     "forward[1]", "duplicate of forward[0] (a.)"),
    ({"forward": [{"zone": "a", "upstreams": ["192.0.2.1", "192.0.2.9"]}]}, "forward[0].upstreams[0]",
     "also in upstreams"),
    ({"forward": [{"zone": "a", "upstreams": ["127.0.0.1:5353"]}]}, "forward[0].upstreams[0]",
     "own listen address"),
    ({"local_records": "printer.lan 300 A 192.0.2.20x"}, "local_records[0]", "expected an IPv4 address"),
    ({"local_records": ["a.lan 300 A 192.0.2.1", "b.lan 300 MX 10 a.lan"]}, "local_records[1]",
     "unsupported type"),
    ({"local_records": [{"name": "a.lan"}]}, "local_records[0]", "expected a record"),
    ({"local_records": ["a.lan 300 CNAME b.lan", "a.lan 300 TXT x"]}, "local_records[0]", "CNAME"),
    ({"local_records": ["a.lan A 192.0.2.1"]}, "local_records[0]", "<ttl>"),
    ({"block_zones": ["home.arpa", "*.bad"]}, "block_zones[1]", "invalid zone"),
    ({"block_zones": ["home.arpa", "HOME.arpa."]}, "block_zones[1]", "duplicate"),
    ({"block_zones": {"home.arpa": True}}, "block_zones", "expected a list"),
    ({"hosts_file": {"enabled": "yes"}}, "hosts_file.enabled", "true or false"),
    ({"hosts_file": {"path": ""}}, "hosts_file.path", "non-empty string"),
    ({"hosts_file": {"ttl": 1.5}}, "hosts_file.ttl", "whole number"),
    ({"hosts_file": {"check_interval": 0}}, "hosts_file.check_interval", "greater than 0"),
    ({"hosts_file": {"reload": "5s"}}, "hosts_file.reload", "unknown key"),
    ({"hosts_file": "/etc/hosts"}, "hosts_file", "expected a mapping"),
])
def test_bad_values_name_the_key(extra, key, problem):
    e = error(**extra)
    assert e.key == key, str(e)
    assert problem in e.problem, str(e)


def test_zones_with_the_same_upstreams_share_a_group():
    c = parse(forward=[{"zone": "a", "upstreams": ["192.0.2.9", "192.0.2.8"]},
                       {"zone": "b", "upstreams": ["192.0.2.9", "192.0.2.8"]}])
    assert c.forward[0].upstreams == c.forward[1].upstreams
