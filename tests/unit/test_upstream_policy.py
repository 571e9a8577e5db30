"""Upstream order policies, latency smoothing and the hedge delay, as tables."""

from __future__ import annotations

import math

import pytest

from resolver.policy import upstream_order as policy
from resolver.upstream.pool import Health


class U:
    def __init__(self, label):
        self.label = label

    def __repr__(self):
        return self.label


A, B, C = U("a"), U("b"), U("c")


def health(**srtts):
    table = {}
    for label in "abc":
        h = Health()
        if label in srtts:
            policy.observe(h, srtts[label])
        table[label] = h
    return table


def test_sequential_keeps_configured_order():
    assert policy.order([A, B, C], health(a=0.5, b=0.01), "sequential", 7) == [A, B, C]


def test_round_robin_rotates_the_start():
    starts = [policy.order([A, B, C], health(), "round_robin", turn)[0] for turn in range(6)]
    assert starts == [A, B, C, A, B, C]
    assert policy.order([A], health(), "round_robin", 5) == [A]


def test_fastest_orders_by_smoothed_latency_unmeasured_first():
    assert policy.order([A, B, C], health(a=0.3, b=0.01, c=0.1), "fastest", 0) == [B, C, A]
    assert policy.order([A, B, C], health(a=0.3, c=0.1), "fastest", 0) == [B, C, A]  # b unmeasured


def test_observe_smooths_like_rfc6298():
    h = Health()
    policy.observe(h, 0.1)
    assert (h.srtt, h.rttvar, h.samples) == (0.1, 0.05, 1)
    policy.observe(h, 0.2)
    assert h.srtt == pytest.approx(0.1125) and h.rttvar == pytest.approx(0.0625)
    for _ in range(100):
        policy.observe(h, 0.02)
    assert h.srtt == pytest.approx(0.02, abs=1e-4)


@pytest.mark.parametrize("srtt, hedge_after, expect", [
    (None, policy.HEDGE_AUTO, 1.0),          # unmeasured: the whole attempt timeout
    (0.1, policy.HEDGE_AUTO, 0.2),           # srtt 0.1 + 2 x rttvar 0.05
    (0.0001, policy.HEDGE_AUTO, 0.01),       # floor
    (0.1, 0.25, 0.25),                       # fixed
    (0.1, policy.HEDGE_OFF, math.inf),
])
def test_hedge_delay(srtt, hedge_after, expect):
    h = Health()
    if srtt is not None:
        policy.observe(h, srtt)
    assert policy.hedge_delay(h, hedge_after, 1.0) == pytest.approx(expect)


# -- the retransmission timeout (RFC 6298 §2, §5.5; issue 13 item 2) ---------------------


def test_rto_is_the_initial_value_before_any_sample():
    assert policy.rto(Health(), 1.0, 0.05, 4.0) == 1.0
    assert policy.rto(Health(), 9.0, 0.05, 4.0) == 4.0  # clamped like any RTO


def test_rto_is_srtt_plus_four_rttvar_clamped():
    h = Health()
    policy.observe(h, 0.2, 0.05, 4.0)  # first sample: SRTT 0.2, RTTVAR 0.1
    assert h.rto == pytest.approx(0.6) and policy.rto(h, 1.0, 0.05, 4.0) == pytest.approx(0.6)
    fast = Health()
    policy.observe(fast, 0.001, 0.05, 4.0)
    assert fast.rto == 0.05  # the floor: a LAN upstream is not retransmitted to every 3 ms
    slow = Health()
    policy.observe(slow, 3.0, 0.05, 4.0)  # 3 + 4 x 1.5 = 9 > the ceiling
    assert slow.rto == 4.0


def test_steady_samples_keep_the_rto_a_granularity_above_the_srtt():
    """RFC 6298's G: an upstream that always takes 1.5 s has its RTTVAR decay towards 0, but its
    RTO stays SRTT + 10 ms, so a few ms of timer or scheduling jitter does not make every send
    late (a spurious retransmission each time)."""
    h = Health()
    for _ in range(60):
        policy.observe(h, 1.5, 0.05, 4.0)
    assert h.rttvar < 1e-6
    assert h.rto == pytest.approx(1.5 + policy.RTO_GRANULARITY)


def test_a_new_sample_replaces_a_backed_off_rto():
    h = Health()
    policy.observe(h, 0.01, 0.05, 4.0)
    h.rto = 3.2  # backed off by timeouts
    policy.observe(h, 0.01, 0.05, 4.0)
    assert h.rto == 0.05
