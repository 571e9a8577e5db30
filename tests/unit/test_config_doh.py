"""DNS-over-HTTPS upstreams in the config: ``https://ADDR[:PORT][/PATH][#NAME]`` (RFC 8484).

The address is an IP literal (pinned: no bootstrap lookup through ourselves); port 443
and path /dns-query by default; the part after ``#`` is the name the certificate must
carry (without it, the IP address must be in the certificate, as for tls://).
"""

from __future__ import annotations

import pytest

from resolver.config import UpstreamAddress, parse_config, parse_upstream
from resolver.errors import ConfigError


@pytest.fixture
def resolv(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 192.0.2.1\n")
    return str(path)


@pytest.mark.parametrize("text, upstream, label", [
    ("https://192.0.2.1#dns.example", UpstreamAddress("192.0.2.1", 443, "https", "dns.example", "/dns-query"),
     "https://192.0.2.1:443"),
    ("HTTPS://192.0.2.1:8443/resolve#DNS.Example.",
     UpstreamAddress("192.0.2.1", 8443, "https", "dns.example", "/resolve"), "https://192.0.2.1:8443"),
    ("https://[2001:db8::1]/dns-query#dns.example",
     UpstreamAddress("2001:db8::1", 443, "https", "dns.example", "/dns-query"), "https://[2001:db8::1]:443"),
    ("https://[2001:db8::1]:4443#dns.example",
     UpstreamAddress("2001:db8::1", 4443, "https", "dns.example", "/dns-query"), "https://[2001:db8::1]:4443"),
    ("https://1.1.1.1/", UpstreamAddress("1.1.1.1", 443, "https", "", "/"), "https://1.1.1.1:443"),
    ("https://8.8.8.8", UpstreamAddress("8.8.8.8", 443, "https", "", "/dns-query"), "https://8.8.8.8:443"),
])
def test_https_upstream_forms(text, upstream, label):
    assert parse_upstream(text, "upstreams[0]") == upstream
    assert upstream.label == label


@pytest.mark.parametrize("data, key, problem", [
    ({"upstreams": ["https://dns.google/dns-query"]}, "upstreams[0]", "not a hostname"),
    ({"upstreams": ["https://192.0.2.1:0#dns.example"]}, "upstreams[0]", "1 to 65535"),
    ({"upstreams": ["https://192.0.2.1/dns query#dns.example"]}, "upstreams[0]", "an HTTP path"),
    ({"upstreams": ["https://192.0.2.1/q?x=1#dns.example"]}, "upstreams[0]", "an HTTP path"),
    ({"upstreams": ["https://192.0.2.1#"]}, "upstreams[0]", "non-empty string"),
    ({"upstreams": ["https://192.0.2.1#bad name"]}, "upstreams[0]", "domain name"),
    ({"upstreams": ["https://[2001:db8::1]:99999/dns-query"]}, "upstreams[0]", "1 to 65535"),
    ({"upstreams": ["tls://192.0.2.1/dns-query"]}, "upstreams[0]", "only for https://"),
    ({"upstreams": ["192.0.2.1/dns-query"]}, "upstreams[0]", "only for https://"),
    ({"upstreams": ["https://192.0.2.1#a.example", "https://192.0.2.1:443/other#b.example"]}, "upstreams[1]",
     "duplicate of upstreams[0]"),
    ({"upstreams": ["192.0.2.1"], "forward": [{"zone": "corp.example", "upstreams": ["https://[::1"]}]},
     "forward[0].upstreams[0]", "expected an IP address"),
])
def test_https_upstream_errors(data, key, problem, resolv):
    with pytest.raises(ConfigError) as info:
        parse_config(data, resolv_conf=resolv)
    assert info.value.key == key and problem in info.value.problem


def test_https_mixed_with_other_transports_in_upstreams_and_forward_groups(resolv):
    config = parse_config({
        "upstreams": ["10.0.0.2", "https://1.1.1.1/dns-query#cloudflare-dns.com", "https://8.8.8.8#dns.google"],
        "forward": [{"zone": "corp.example", "upstreams": ["tls://10.1.0.53#ns.corp.example",
                                                           "https://10.1.0.54:8443/q#ns.corp.example"]}],
    }, resolv_conf=resolv)
    assert [u.transport for u in config.upstreams] == ["udp", "https", "https"]
    assert config.upstreams[2].path == "/dns-query" and config.upstreams[2].server_name == "dns.google"
    group = config.forward[0].upstreams
    assert [(u.transport, u.port, u.path) for u in group] == [("tls", 853, ""), ("https", 8443, "/q")]
