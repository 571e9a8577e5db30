"""The pipeline with local answers: a local CNAME to an outside name is completed with
the target's answer (cache, upstream, serve-stale), and local names never reach the
upstream or the cache."""

from __future__ import annotations

import asyncio

import dns.edns
import dns.message
import dns.rcode

from tests.support.fake_time import run
from tests.support.pipeline import make_local_pipeline as make


def ask(pipe, name, rtype="A", edns=True):
    q = dns.message.make_query(name, rtype, use_edns=0 if edns else False)
    data = q.to_wire()
    reply = pipe.answer_fast(data, False) or run(pipe.resolve(data, False), pipe.clock).reply
    msg = dns.message.from_wire(reply)
    assert msg.id == q.id and msg.question == q.question
    return msg


def lines(msg):
    return [line for rrset in msg.answer for line in rrset.to_text().splitlines()]


def test_local_cname_to_an_outside_name_is_completed_from_upstream():
    pipe, pool, clock, cache = make()
    msg = ask(pipe, "WEB.lan")
    assert msg.rcode() == dns.rcode.NOERROR
    assert lines(msg) == ["WEB.lan. 60 IN CNAME api.lan.", "api.lan. 60 IN CNAME lb.test.",
                          "lb.test. 20 IN A 198.51.100.7"]
    assert pool.calls == [("lb.test", "A")]
    ask(pipe, "api.lan", edns=False)
    assert pool.calls == [("lb.test", "A")]  # the target came from the cache the second time
    assert all(b"lan" not in key for key in cache.entries)  # local names are never cached


def test_the_target_part_is_served_stale_when_the_upstream_fails():
    pipe, pool, clock, _ = make()
    ask(pipe, "api.lan")
    clock.advance(100)
    pool.servfail()
    msg = ask(pipe, "api.lan")
    assert lines(msg) == ["api.lan. 60 IN CNAME lb.test.", "lb.test. 30 IN A 198.51.100.7"]
    assert [o.code for o in msg.options if o.otype == dns.edns.OptionType.EDE] == [3]


def test_target_rcode_is_the_answer_rcode():
    pipe, *_ = make()
    msg = ask(pipe, "gone.lan")
    assert msg.rcode() == dns.rcode.NXDOMAIN  # RFC 6604 §2: the last name's rcode
    assert lines(msg) == ["gone.lan. 60 IN CNAME nosuch.test."]
    assert msg.authority  # the target's SOA comes along
    blocked = ask(pipe, "blk.lan")
    assert blocked.rcode() == dns.rcode.NXDOMAIN and lines(blocked) == ["blk.lan. 60 IN CNAME x.home.arpa."]


def test_a_never_cached_target_with_a_dead_upstream_is_servfail_not_nxdomain():
    pipe, pool, *_ = make()
    pool.drop()
    msg = ask(pipe, "api.lan")
    assert msg.rcode() == dns.rcode.SERVFAIL


def test_plain_local_names_never_call_the_upstream():
    pipe, pool, *_ = make()
    assert lines(ask(pipe, "printer.lan")) == ["printer.lan. 300 IN A 192.0.2.20"]
    assert ask(pipe, "a.home.arpa").rcode() == dns.rcode.NXDOMAIN
    assert pool.calls == []
