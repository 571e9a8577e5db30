"""Response rate limiting (resolver/serve/ratelimit.py): token buckets on a fake clock, slip replies."""

from __future__ import annotations

import random

import dns.flags
import dns.message

from resolver.config import SecurityConfig
from resolver.serve.ratelimit import DROP, OK, SLIP, TABLE_MAX, RateLimiter, slip_reply


def test_off_by_default():
    assert not RateLimiter(SecurityConfig()).enabled


def test_burst_then_limited_then_refilled():
    rrl = RateLimiter(SecurityConfig(rate_limit=10, rate_limit_slip=0))
    now = 100.0
    assert [rrl.check("192.0.2.1", now) for _ in range(10)] == [OK] * 10
    assert rrl.check("192.0.2.1", now) == DROP
    assert rrl.check("192.0.2.2", now) == OK  # per address
    now += 0.5  # half a second: five more
    assert [rrl.check("192.0.2.1", now) for _ in range(6)] == [OK] * 5 + [DROP]
    now += 60  # the burst is capped at one second's worth
    assert sum(rrl.check("192.0.2.1", now) == OK for _ in range(30)) == 10


def test_slip_every_nth_limited_response():
    rrl = RateLimiter(SecurityConfig(rate_limit=1, rate_limit_slip=3))
    assert rrl.check("h", 0.0) == OK
    assert [rrl.check("h", 0.0) for _ in range(6)] == [DROP, DROP, SLIP, DROP, DROP, SLIP]
    every = RateLimiter(SecurityConfig(rate_limit=1, rate_limit_slip=1))
    every.check("h", 0.0)
    assert [every.check("h", 0.0) for _ in range(3)] == [SLIP] * 3


def test_table_is_bounded():
    rrl = RateLimiter(SecurityConfig(rate_limit=5))
    for i in range(TABLE_MAX + 100):
        rrl.check(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 1.0)
    assert len(rrl.buckets) <= TABLE_MAX


def test_slip_reply_is_empty_tc_and_never_larger():
    for edns in (False, 0):
        query = dns.message.make_query("WwW.example.com", "TXT", use_edns=edns)
        data = query.to_wire()
        reply = slip_reply(data)
        assert len(reply) <= len(data)
        msg = dns.message.from_wire(reply)
        assert msg.id == query.id and msg.flags & dns.flags.TC and msg.flags & dns.flags.QR
        assert not msg.answer and str(msg.question[0].name) == "WwW.example.com."


def test_slip_reply_to_garbage_is_nothing_or_small():
    rng = random.Random(5)
    for size in range(0, 80):
        junk = bytes(rng.getrandbits(8) for _ in range(size))
        reply = slip_reply(junk)
        assert reply is None or len(reply) <= len(junk)
