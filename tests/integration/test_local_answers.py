"""Local answers over real sockets: never sent upstream, never stale; the hosts file
re-read when it changes; bad local data refused with a clear message."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.client import ask, eventually

REPO = Path(__file__).resolve().parents[2]


def values(msg: dns.message.Message) -> list[str]:
    return sorted(rr.to_text() for rrset in msg.answer for rr in rrset)


def test_local_names_never_reach_the_upstream_and_never_go_stale(fake_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address],
                          local_records=["printer.lan. 300 IN A 192.0.2.20", "alias.lan. 60 CNAME printer.lan."],
                          block_zones=["home.arpa"])
    for _ in range(2):
        assert values(ask(fwd.port, "printer.lan")) == ["192.0.2.20"]
        assert values(ask(fwd.port, "alias.lan", tcp=True)) == ["192.0.2.20", "printer.lan."]
        assert values(ask(fwd.port, "localhost")) == ["127.0.0.1"]
        assert values(ask(fwd.port, "app.localhost", "AAAA")) == ["::1"]
        assert ask(fwd.port, "nas.home.arpa").rcode() == dns.rcode.NXDOMAIN
        assert ask(fwd.port, "printer.lan", "MX").rcode() == dns.rcode.NOERROR
        fwd.advance(100_000)  # far past every TTL and the stale window: still the same, fresh
    fake_upstream.mode("drop")
    r = ask(fwd.port, "printer.lan")
    assert values(r) == ["192.0.2.20"] and r.answer[0].ttl == 300 and not r.options  # not stale: no EDE
    assert fake_upstream.calls == []
    assert fwd.metric("resolver_local_answers_total", kind="records") == 7
    assert fwd.metric("resolver_local_answers_total", kind="localhost") == 4
    assert fwd.metric("resolver_local_answers_total", kind="blocked") == 2
    assert fwd.metric("resolver_responses_by_source_total", source="local") == 13
    assert fwd.metric("resolver_upstream_requests_total") == 0


def test_hosts_file_answers_reloads_and_purges_the_cache(tmp_path, fake_upstream, start_forwarder, caplog):
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.7 nas.lan nas\n")
    fake_upstream.serve_zones("lan", "in-addr.arpa")  # authoritative for the reverse zone too
    fake_upstream.answer("new.lan", "A", "203.0.113.1")
    fwd = start_forwarder([fake_upstream.address],
                          hosts_file={"enabled": True, "path": str(hosts), "ttl": 30, "check_interval": 0.05})
    r = ask(fwd.port, "nas.lan")
    assert values(r) == ["192.0.2.7"] and r.answer[0].ttl == 30
    assert values(ask(fwd.port, "7.2.0.192.in-addr.arpa", "PTR")) == ["nas.lan."]
    assert values(ask(fwd.port, "new.lan")) == ["203.0.113.1"]  # from upstream, now cached
    assert values(ask(fwd.port, "new.lan")) == ["203.0.113.1"]  # a cache hit
    with caplog.at_level(logging.WARNING, logger="resolver.hosts"):
        tmp = tmp_path / "hosts.tmp"
        tmp.write_text("192.0.2.8 nas.lan\n192.0.2.9 new.lan\nnot-an-address new.lan\n")
        os.replace(tmp, hosts)  # the atomic rename editors and config managers do
        assert eventually(lambda: values(ask(fwd.port, "nas.lan")) == ["192.0.2.8"])
        # The cached upstream answer for new.lan was purged: the hosts file wins at once.
        assert values(ask(fwd.port, "new.lan")) == ["192.0.2.9"]
        assert eventually(lambda: f"{hosts}:3:" in caplog.text)
    assert "expected an IP address, got 'not-an-address'" in caplog.text
    # 192.0.2.7 left the file: its PTR is no longer local (the upstream knows nothing of it).
    assert ask(fwd.port, "7.2.0.192.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN
    assert fwd.metric("resolver_hosts_file_reloads_total") >= 2
    assert fwd.metric("resolver_hosts_file_bad_lines") == 1
    # The file goes away: its names go back to the upstream (here: NXDOMAIN from it), no crash.
    hosts.unlink()
    assert eventually(lambda: ask(fwd.port, "nas.lan").rcode() == dns.rcode.NXDOMAIN)
    assert fwd.metric("resolver_hosts_file_read_errors_total") == 1


@pytest.mark.parametrize("yaml_text, key", [
    ("local_records: ['printer.lan 300 A 192.0.2.300']\n", "local_records[0]"),
    ("local_records: ['printer.lan A 192.0.2.3']\n", "local_records[0]"),
    ("forward: [{zone: 'corp..example', upstreams: ['192.0.2.53']}]\n", "forward[0].zone"),
    ("block_zones: ['.']\n", "block_zones[0]"),
    ("hosts_file: {enabled: yes, ttl: -1}\n", "hosts_file.ttl"),
])
def test_bad_local_config_is_one_line_naming_the_key_exit_2(tmp_path, yaml_text, key):
    path = tmp_path / "resolver.yaml"
    path.write_text("upstreams: ['192.0.2.53']\n" + yaml_text)
    out = subprocess.run([sys.executable, "-m", "resolver", "--config", str(path), "--check-config"],
                         capture_output=True, text=True, timeout=20, cwd=REPO)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"resolver: configuration error: {key}: "), out.stderr


def test_local_cname_to_a_name_in_a_forward_zone(unbound, fake_upstream, start_forwarder):
    """A local alias for a name elsewhere: the target is resolved through its own group."""
    fake_upstream.answer("lb.corp.example", "A", "198.51.100.7")
    fwd = start_forwarder([unbound.address], local_records=["api.lan. 60 IN CNAME lb.corp.example."],
                          forward=[{"zone": "corp.example", "upstreams": [fake_upstream.address]}])
    r = ask(fwd.port, "api.lan")
    assert [rrset.to_text() for rrset in r.answer] == ["api.lan. 60 IN CNAME lb.corp.example.",
                                                      "lb.corp.example. 300 IN A 198.51.100.7"]
    r = ask(fwd.port, "api.lan", tcp=True)
    assert values(r) == ["198.51.100.7", "lb.corp.example."]
    assert [c[1] for c in fake_upstream.calls] == ["lb.corp.example"]  # once: then from the cache
