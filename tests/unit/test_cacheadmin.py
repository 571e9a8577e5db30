"""The cache admin (inspect / flush) as pure functions, and its HTTP routing, without sockets."""

from __future__ import annotations

import json

import pytest
from dnslib import QTYPE, RR, DNSHeader, DNSQuestion, DNSRecord

from resolver import wire
from resolver.cache.store import Cache
from resolver.clock import FakeClock
from resolver.ops import cacheadmin

NOW = 1000.0


def put(cache: Cache, name: str, qtype: str = "A", rdata: str = "192.0.2.1", ttl: int = 300, do: bool = False,
        now: float = NOW) -> None:
    q = DNSRecord(DNSHeader(id=1, rd=1), q=DNSQuestion(name, getattr(QTYPE, qtype)))
    if do:
        from dnslib import EDNS0
        q.add_ar(EDNS0(flags="do"))
    query = wire.parse_query(bytes(q.pack()))
    reply = q.reply()
    reply.add_answer(*RR.fromZone(f"{name}. {ttl} IN {qtype} {rdata}"))
    upstream_question = query.qname.lower() + query.question[-4:]
    prepared = wire.parse_reply(bytes(reply.pack()), upstream_question, min_ttl=0, max_ttl=86400,
                                max_negative_ttl=3600)
    cache.put(query.key, prepared, now, 3600.0)


def doc(result):
    return result[0], json.loads(result[1])


def test_show_fresh_entry_with_records_and_ttl_left():
    cache = Cache(10)
    put(cache, "www.test")
    status, body = doc(cacheadmin.show(cache, NOW + 100, "name=WWW.test.&type=a"))
    assert status == 200 and body["name"] == "www.test." and body["type"] == "A"
    [entry] = body["entries"]
    assert entry["state"] == "fresh" and entry["ttl_left"] == 200 and entry["rcode"] == "NOERROR"
    assert entry["flags"] == "" and entry["source"] == "upstream"
    assert entry["records"] == ["www.test.               200     IN      A       192.0.2.1"]


def test_show_stale_entry_and_every_do_cd_variant():
    cache = Cache(10)
    put(cache, "www.test")
    put(cache, "www.test", do=True)
    status, body = doc(cacheadmin.show(cache, NOW + 400, "name=www.test"))
    assert status == 200
    assert [e["flags"] for e in body["entries"]] == ["", "do"]
    assert all(e["state"] == "stale" and e["expired_for"] == 100 for e in body["entries"])


def test_show_missing_is_404_and_past_stale_window_is_gone():
    cache = Cache(10)
    put(cache, "www.test")
    assert cacheadmin.show(cache, NOW, "name=other.test")[0] == 404
    assert cacheadmin.show(cache, NOW, "name=www.test&type=AAAA")[0] == 404
    assert cacheadmin.show(cache, NOW + 300 + 3600, "name=www.test")[0] == 404


@pytest.mark.parametrize("query", [
    "", "type=A", "name=", "name=a..b", "name=" + "a" * 64 + ".test", "name=" + "a." * 130,
    "name=www.test&type=NOPE", "name=www.test&type=70000", "name=www.test&type=TYPE99999999999",
    "name=www.test&name=x.test", "name=www.test&bogus=1", "name=%ff%fe", "name=sp ace.test",
    "name=www.test&type=", "&&&", "name=\x00", "name=%00", "a=1&" * 20, "name=www.test&type=A;rm",
])
def test_garbage_requests_are_400_not_exceptions(query):
    cache = Cache(10)
    put(cache, "www.test")
    status, body = cacheadmin.show(cache, NOW, query)
    assert status == 400 and json.loads(body)["error"], query
    status, body = cacheadmin.flush(cache, query if query else "type=A")
    assert status == 400 and "error" in json.loads(body)
    assert len(cache) == 1  # nothing flushed by a bad request


def test_flush_one_name_one_type_or_everything():
    cache = Cache(10)
    for name in ("a.test", "b.test"):
        put(cache, name)
        put(cache, name, "AAAA", "2001:db8::1")
        put(cache, name, do=True)
    assert doc(cacheadmin.flush(cache, "name=A.test&type=AAAA")) == (200, {"flushed": 1})
    assert doc(cacheadmin.flush(cache, "name=a.test")) == (200, {"flushed": 2})
    assert cacheadmin.show(cache, NOW, "name=a.test")[0] == 404
    assert cacheadmin.show(cache, NOW, "name=b.test")[0] == 200
    assert doc(cacheadmin.flush(cache, "")) == (200, {"flushed": 3})
    assert len(cache) == 0 and cache.counts(NOW) == (0, 0)


def test_parse_type_forms():
    assert cacheadmin.parse_type("aaaa") == 28
    assert cacheadmin.parse_type("TYPE65") == 65 == cacheadmin.parse_type("65")
    assert cacheadmin.parse_type(None) == 1


def admin() -> tuple[object, Cache]:
    from resolver.app import App
    from tests.support.forwarder import forwarder_config

    app = App(forwarder_config(["127.0.0.1:1053"]), FakeClock(NOW))
    put(app.cache, "www.test")
    return app.http_routes, app.cache


def test_admin_routes_cache():
    server, cache = admin()
    status, ctype, body = server.handle("GET", "/cache?name=www.test")
    assert status == 200 and ctype == "application/json" and json.loads(body)["entries"]
    assert server.handle("POST", "/cache")[0] == 405
    assert server.handle("GET", "/cache/flush")[0] == 405
    assert server.handle("POST", "/cache/flush?name=www.test")[0] == 200
    assert len(cache) == 0


def test_admin_refuses_cross_origin_flush():
    server, cache = admin()
    assert server.handle("POST", "/cache/flush", {"origin": "http://evil.example"})[0] == 403
    assert len(cache) == 1


def test_flush_a_zone_takes_its_names_and_nothing_beside_it():
    cache = Cache(100)
    for name in ("example.test", "www.example.test", "a.b.example.test", "notexample.test", "other.test"):
        put(cache, name)
    put(cache, "www.example.test", "AAAA", "2001:db8::1")
    assert doc(cacheadmin.flush(cache, "zone=Example.Test.")) == (200, {"flushed": 4})
    assert {wire.key_name(k) for k in cache.entries} == {
        wire.name_to_wire("notexample.test"), wire.name_to_wire("other.test")}
    assert cacheadmin.flush(cache, "zone=x.test&name=y.test")[0] == 400
    assert doc(cacheadmin.flush(cache, "zone=.")) == (200, {"flushed": 2})
