"""The pool's adaptive timeouts and retransmission, with stub UDP upstreams in fake
time (tests/support/fake_time.py: the clock jumps whenever everything waits on it):
which send wins, what is sent again and when, and how each outcome is judged.  The
RTOs, back-off and RTT samples are exact: no wall-clock bounds."""

from __future__ import annotations

import asyncio

import pytest

from resolver.clock import FakeClock, sleep_until
from resolver import wire
from resolver.config import UpstreamOptions
from resolver.errors import UpstreamServfail, UpstreamTimeout
from resolver.upstream.pool import UpstreamPool
from tests.support import fake_time

QUESTION = wire.name_to_wire("www.test") + b"\x00\x01\x00\x01"


class _Sock:
    def close(self):
        pass


class StubUdp:
    """A UDP upstream whose n-th send (its ID is n) is answered ``delays[n]`` seconds
    after it went out (None: lost) with ``rcodes[n]`` (default NOERROR)."""

    udp = True

    def __init__(self, label, delays, rcodes=(), clock=None):
        self.clock = clock or CLOCK
        self.label = label
        self.delays = list(delays)
        self.rcodes = list(rcodes)
        self.sent = 0
        self.mismatched = 0

    def send_udp(self, question, cd, do, now):
        n = self.sent
        self.sent += 1
        return (_Sock(), n, question, now)  # (socket, ID, question, sent at): the ID tells the sends apart

    async def receive(self, loop, send):
        _sock, n, _question, started = send
        delay = self.delays[n] if n < len(self.delays) else self.delays[-1]
        if delay is None:
            await asyncio.Event().wait()
        # The reply arrives at send time + delay, whoever is reading the socket then
        # (a datagram waits in the socket's buffer while the reader changes hands).
        await sleep_until(self.clock, started + delay)
        rcode = self.rcodes[n] if n < len(self.rcodes) else 0
        return bytes((n >> 8, n & 0xFF, 0x81, 0x80 | rcode)) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + QUESTION

    def scrub(self, reply, question):
        return reply


# One clock per test (a fixture resets it): the stubs and the pool share it.
CLOCK = FakeClock()


@pytest.fixture(autouse=True)
def fresh_clock():
    global CLOCK
    CLOCK = FakeClock()


def pool_of(upstreams, options) -> UpstreamPool:
    return UpstreamPool(upstreams, options, CLOCK)


def run(pool, total=2.0):
    async def go():
        return await pool.exchange(QUESTION, False, False, CLOCK.monotonic() + total)
    return fake_time.run(go(), CLOCK)


OPTIONS = UpstreamOptions(attempt_timeout=0.2, total_timeout=2.0, max_failures=1)


def test_late_answer_to_the_first_send_wins_after_a_retransmission():
    """Slow is not dead: the first send passes its RTO (0.2 s), is sent again, but its
    answer at 0.35 s wins, and the RTT sample is that send's (0.35 s)."""
    up = StubUdp("a", [0.35, None])
    pool = pool_of([up], OPTIONS)
    reply, winner = run(pool)
    assert winner is up and reply[:2] == b"\x00\x00"  # the first send's ID
    assert up.sent == 2 and pool.retransmits == 1
    h = pool.health["a"]
    assert h.up and h.samples == 1 and h.srtt == pytest.approx(0.35)  # exact in fake time
    assert not pool.errors


def test_a_lost_datagram_is_sent_again_to_the_only_upstream():
    up = StubUdp("a", [None, 0.01])
    pool = pool_of([up], OPTIONS)
    reply, _ = run(pool)
    assert reply[:2] == b"\x00\x01" and up.sent == 2
    assert pool.health["a"].up and not pool.errors


def test_retransmission_backs_off_and_ends_at_the_deadline():
    up = StubUdp("a", [None])
    pool = pool_of([up], OPTIONS)
    with pytest.raises(UpstreamTimeout):
        run(pool, total=1.0)
    assert up.sent == 3  # at 0, 0.2 and 0.6 s (RTO 0.2, 0.4, then 0.8: past the deadline)
    assert pool.errors[("a", "timeout")] == 1  # one failure per exchange, not per send
    assert pool.health["a"].rto == pytest.approx(0.8)


@pytest.mark.parametrize("rcode,reason", [(wire.REFUSED, "refused"), (wire.FORMERR, "formerr"),
                                          (wire.NOTIMP, "notimp")])
def test_a_reply_about_the_question_is_no_failure(rcode, reason):
    up = StubUdp("a", [0.01], [rcode])
    pool = pool_of([up], OPTIONS)  # max_failures=1: one failure would mark it down
    with pytest.raises(UpstreamServfail) as info:
        run(pool)
    assert info.value.reason == reason and up.sent == 1
    assert pool.health["a"].up and pool.health["a"].failures == 0


def test_servfail_is_a_failure_and_is_not_retransmitted():
    up = StubUdp("a", [0.01], [wire.SERVFAIL])
    pool = pool_of([up], OPTIONS)
    with pytest.raises(UpstreamServfail):
        run(pool)
    assert up.sent == 1 and not pool.health["a"].up
    assert pool.failed_question == QUESTION  # what the prober will ask


def test_refused_by_the_first_upstream_asks_the_next_at_once():
    a = StubUdp("a", [0.01], [wire.REFUSED])
    b = StubUdp("b", [0.01])
    pool = pool_of([a, b], OPTIONS)
    _, winner = run(pool)
    assert winner is b and a.sent == 1
    assert pool.health["a"].up and pool.health["a"].failures == 0


def test_a_loser_past_its_rto_counts_a_timeout_one_within_it_does_not():
    # a is silent: past its RTO (0.2 s) b is asked and answers; a is judged a timeout.
    a = StubUdp("a", [None])
    b = StubUdp("b", [0.01])
    pool = pool_of([a, b], OPTIONS)
    _, winner = run(pool)
    assert winner is b and pool.errors[("a", "timeout")] == 1
    # With hedging after 50 ms, b wins before a's RTO: no verdict on a.
    a2 = StubUdp("a", [None])
    b2 = StubUdp("b", [0.01])
    hedged = pool_of([a2, b2], UpstreamOptions(attempt_timeout=0.2, max_failures=1, hedge_after=0.05))
    _, winner = run(hedged)
    assert winner is b2 and hedged.hedges == 1 and not hedged.errors and hedged.health["a"].up


def test_queries_sent_into_an_outage_send_again_when_the_upstream_comes_back():
    """Down, silent: the query waits (no retransmission into the outage); the moment a
    probe finds the upstream back, it sends again and gets the answer."""
    up = StubUdp("a", [None, 0.01, 0.01])
    pool = pool_of([up], OPTIONS)

    async def scenario():
        loop = asyncio.get_running_loop()
        pool._failed(up, "timeout", CLOCK.monotonic(), None, QUESTION)  # max_failures=1: down
        pool.health["a"].rto = 4.0  # backed off in the outage
        waiting = loop.create_task(pool.exchange(QUESTION, False, False, CLOCK.monotonic() + 3.0))
        await sleep_until(CLOCK, CLOCK.monotonic() + 0.1)
        assert up.sent == 1 and not waiting.done()
        pool.mark_up(up)  # the prober's verdict
        reply, _ = await waiting  # bounded by its deadline (fake time)
        # Queries that end while it is still down leave no callback behind on the
        # pool's come-back future (a long outage must not pile them up).
        pool._failed(up, "timeout", CLOCK.monotonic(), None, QUESTION)
        up.delays += [0.0] * 3
        up.rcodes = [0, 0] + [wire.SERVFAIL] * 3  # by send number
        for _ in range(3):
            with pytest.raises(UpstreamServfail):
                await pool.exchange(QUESTION, False, False, CLOCK.monotonic() + 1.0)
        return reply, pool._comeback, pool.health["a"].up

    reply, comeback, up_now = fake_time.run(scenario(), CLOCK)
    assert reply[:2] == b"\x00\x01" and up.sent == 5 and not up_now
    assert comeback is not None and not comeback.done() and not comeback._callbacks


def test_a_loss_among_answered_queries_does_not_back_off_the_rto():
    """As Unbound's rtt_lost: other replies brought the RTO down meanwhile, so a send
    that expired on the old (initial, 0.2 s) RTO was lost, not slow: the RTO stays as
    measured and the next send goes out on it."""
    lost = StubUdp("a", [None, None, 0.01])

    async def scenario():
        loop = asyncio.get_running_loop()
        pool = pool_of([lost], OPTIONS)
        waiting = loop.create_task(pool.exchange(QUESTION, False, False, CLOCK.monotonic() + 2.0))
        await sleep_until(CLOCK, CLOCK.monotonic() + 0.05)
        pool._won(lost, 0.001)  # another query's reply: RTO down to the 50 ms floor
        await sleep_until(CLOCK, CLOCK.monotonic() + 0.17)  # past the first send's RTO (0.2 s): the second went out
        after_loss = (lost.sent, pool.health["a"].rto)
        await waiting
        return after_loss

    sent, rto = fake_time.run(scenario(), CLOCK)
    assert sent == 2 and rto == pytest.approx(0.05)  # not backed off to 0.4


def test_a_down_upstream_whose_back_off_ended_gets_one_trial_not_every_exchange():
    """Half-open: when a down upstream's back-off ends, one exchange tries it; the others
    go straight to the healthy one instead of all paying the dead one's RTO."""
    dead = StubUdp("a", [None])  # silent: a blackhole
    good = StubUdp("b", [0.01])
    pool = pool_of([dead, good], OPTIONS)  # max_failures=1

    async def scenario():
        pool._failed(dead, "timeout", CLOCK.monotonic(), None, QUESTION)  # down, back-off 1 s
        await sleep_until(CLOCK, CLOCK.monotonic() + pool.health["a"].backoff + 0.1)
        deadline = CLOCK.monotonic() + 2.0
        replies = await asyncio.gather(*(pool.exchange(QUESTION, False, False, deadline) for _ in range(5)))
        return [winner.label for _, winner in replies]

    winners = fake_time.run(scenario(), CLOCK)
    assert winners == ["b"] * 5
    assert dead.sent == 1  # the one trial; before, each of the 5 exchanges sent to it first


def test_known_slow_means_every_upstream_that_is_up_answers_slower_than_the_threshold():
    slow, fast = StubUdp("a", [1.5]), StubUdp("b", [0.01])
    pool = pool_of([slow, fast], UpstreamOptions(attempt_timeout=2.0, total_timeout=4.0, max_failures=1))
    assert not pool.known_slow(0.5)  # nothing measured yet: not slow
    pool._won(slow, 1.5)
    assert not pool.known_slow(0.5)  # b is up and unmeasured
    pool._won(fast, 0.01)
    assert not pool.known_slow(0.5)  # b answers fast
    pool._failed(fast, "timeout", CLOCK.monotonic())  # b down: only a is asked, and a is slow
    assert pool.known_slow(0.5) and not pool.known_slow(2.0)


def test_known_lossy_after_a_share_of_sends_passed_their_rto():
    """Every exchange's first send is lost and its retransmission answered: half the sends
    passed their RTO.  The estimate is believed after LOSS_MIN_SENDS sends, moves only with
    our sends' fate, and an upstream that comes back from down is measured afresh."""
    from resolver.policy import upstream_order
    up = StubUdp("a", [None, 0.01] * 60)
    pool = pool_of([up], OPTIONS)
    for _ in range(4):
        run(pool)
    assert up.sent == 8 and not pool.known_lossy(0.2)  # too few sends to judge
    for _ in range(36):
        run(pool)
    h = pool.health["a"]
    assert h.sends == upstream_order.LOSS_MIN_SENDS and 0.4 < h.loss < 0.5
    assert pool.known_lossy(0.2) and not pool.known_lossy(0.5)
    pool._failed(up, "timeout", CLOCK.monotonic())  # down (max_failures 1) ...
    pool.mark_up(up)  # ... and back: its losses were the outage
    assert (h.loss, h.sends) == (0.0, 0) and not pool.known_lossy(0.2)


def test_sends_answered_within_their_rto_are_not_lost():
    up = StubUdp("a", [0.01])
    pool = pool_of([up], OPTIONS)
    for _ in range(40):
        run(pool)
    h = pool.health["a"]
    assert h.loss == 0.0 and h.sends == 32 and not pool.known_lossy(0.01)
