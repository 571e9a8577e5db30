"""Which upstream to ask first, and when to ask the next one too (hedging).

Pure functions over the pool's health records, so the choices are table-tested:

* ``sequential``: configured order — a primary and its fallbacks;
* ``round_robin``: rotate the start, spreading load over equal resolvers;
* ``fastest``: lowest smoothed latency first (unmeasured upstreams first, so each
  gets measured), as dnsdist's ``leastOutstanding``/CoreDNS's ``random``-free path.

Latency is smoothed as TCP does its RTT (RFC 6298 §2: SRTT with gain 1/8, RTTVAR
with gain 1/4), and gives each upstream its retransmission timeout (``rto``).  ``hedge_delay`` is how long to wait for one upstream before also
asking the next: a fixed ``hedge_after``, or by default SRTT + 2·RTTVAR (about the
90th percentile for a roughly normal latency), never below 10 ms; an upstream not
yet measured is given the whole attempt timeout.

``providers`` and ``diversify`` spread the order over providers: with upstreams
of several providers (a VPC resolver and public ones, over UDP and DoH), the
second try — the hedge or the failover — goes to another provider than the first,
so one provider's outage costs at most the hedge delay, not one attempt per
upstream of that provider.
"""

from __future__ import annotations

import ipaddress

POLICIES = ("sequential", "round_robin", "fastest")
HEDGE_AUTO = -1.0  # hedge_after "auto"
HEDGE_OFF = 0.0    # hedge_after "off"
_MIN_HEDGE = 0.01
# RFC 6298 §2's G: the RTO is at least SRTT + G, however steady the samples.  Without it
# RTTVAR of an upstream that always takes the same time decays towards 0, the RTO to
# SRTT, and every few ms of timer or scheduling jitter makes a send "late": a spurious
# retransmission (a 1.5 s upstream was sent ~9% more queries than Unbound, whose
# integer-millisecond RTTVAR cannot fall below 3 ms, i.e. SRTT + 12 ms).
RTO_GRANULARITY = 0.01


def observe(health, rtt: float, rto_min: float = 0.05, rto_max: float = 4.0) -> None:
    """Fold one round-trip time into ``health.srtt`` / ``health.rttvar`` and set its
    retransmission timeout ``health.rto`` = SRTT + max(G, 4·RTTVAR) (RFC 6298
    §2.2-2.3, G = RTO_GRANULARITY), clamped to [``rto_min``, ``rto_max``].

    RFC 6298 §2.4's 1 s floor is for TCP segments; a DNS server on the same LAN
    answers in a millisecond, so the floor is Unbound's 50 ms instead (a premature
    retransmission costs one datagram here, not a congestion-window collapse).
    A new sample replaces any backed-off RTO (RFC 6298 §5.7).
    """
    if health.samples == 0:
        health.srtt = rtt
        health.rttvar = rtt / 2
    else:
        health.rttvar = 0.75 * health.rttvar + 0.25 * abs(health.srtt - rtt)
        health.srtt = 0.875 * health.srtt + 0.125 * rtt
    health.samples += 1
    health.rto = min(rto_max, max(rto_min, health.srtt + max(RTO_GRANULARITY, 4 * health.rttvar)))


LOSS_GAIN = 1 / 32       # weight of one send in the loss estimate (an EWMA over ~32 sends)
LOSS_MIN_SENDS = 32      # sends seen before the estimate is believed


def observe_send(health, lost: bool) -> None:
    """Fold one send into ``health.loss``, the share of recent sends that passed their
    RTO unanswered (an exponentially weighted average over sends): 0 for the send that
    won an exchange in time, 1 for one that passed its RTO, answered late or never.
    Read by ``UpstreamPool.known_lossy`` (``stale.lossy_upstream``)."""
    health.loss += LOSS_GAIN * ((1.0 if lost else 0.0) - health.loss)
    if health.sends < LOSS_MIN_SENDS:
        health.sends += 1


def rto(health, initial: float, rto_min: float, rto_max: float) -> float:
    """How long the next send to this upstream may go unanswered before another
    goes out: the measured RTO, or ``initial`` (``attempt_timeout``, RFC 6298 §2.1's
    initial RTO) before any sample, and backed off by timeouts (RFC 6298 §5.5)."""
    value = health.rto or initial
    return min(rto_max, max(rto_min, value))


def order(usable: list, health: dict, policy: str, turn: int) -> list:
    """The usable upstreams in the order to try them."""
    if policy == "round_robin" and len(usable) > 1:
        k = turn % len(usable)
        return usable[k:] + usable[:k]
    if policy == "fastest":
        # Stable sort: ties keep configured order; unmeasured (samples 0) sort first.
        return sorted(usable, key=lambda u: health[u.label].srtt if health[u.label].samples else -1.0)
    return usable


def hedge_delay(health, hedge_after: float, attempt_timeout: float) -> float:
    """Seconds to wait on an upstream before hedging to the next; ``inf`` = never."""
    if hedge_after == HEDGE_OFF:
        return float("inf")
    if hedge_after > 0:
        return hedge_after
    if health.samples == 0:
        return attempt_timeout
    return max(_MIN_HEDGE, health.srtt + 2 * health.rttvar)


def _prefix(host: str) -> str:
    """The smallest prefix routed on the internet (/24, /48): a withdrawal or an outage
    of a provider's network takes at least that (as 1.1.1.0/24 on 14 July 2025)."""
    ip = ipaddress.ip_address(host)
    return str(ipaddress.ip_network(f"{host}/{24 if ip.version == 4 else 48}", strict=False))


def _domain(server_name: str) -> str:
    """The last two labels of a TLS name (dns.google, cloudflare-dns.com): its operator."""
    return ".".join(server_name.lower().rstrip(".").split(".")[-2:])


def providers(upstreams: list) -> dict[str, int]:
    """label → provider number, for upstreams that share fate.

    Two upstreams are one provider when their addresses are in the same routed
    prefix (/24, /48), whatever the transport: udp://1.1.1.1 and
    https://1.1.1.1#cloudflare-dns.com go down together when the prefix is
    withdrawn; or when their certificate names share the last two labels
    (``security.cloudflare-dns.com`` and ``cloudflare-dns.com``).  Sharing is
    transitive (a union of both relations).  Addresses and names are all we know:
    two providers sharing neither are counted apart.  An upstream without an
    ``address`` (a test double) is a provider of its own.
    """
    parent = list(range(len(upstreams)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    seen: dict[str, int] = {}
    for i, upstream in enumerate(upstreams):
        address = getattr(upstream, "address", None)
        if address is None:
            continue
        keys = [f"ip:{_prefix(address.host)}"]
        if address.server_name:
            keys.append(f"name:{_domain(address.server_name)}")
        for key in keys:
            if key in seen:
                parent[root(i)] = root(seen[key])
            else:
                seen[key] = i
    return {u.label: root(i) for i, u in enumerate(upstreams)}


def diversify(ordered: list, provider: dict[str, int]) -> list:
    """``ordered`` with providers taking turns: the first upstream stays first, then
    the first of each other provider in order, then the second of each, ...
    [A1, A2, B1, C1, B2] → [A1, B1, C1, A2, B2].  Within a provider the order holds."""
    queues: dict[int, list] = {}
    for upstream in ordered:
        queues.setdefault(provider[upstream.label], []).append(upstream)
    if len(queues) < 2:
        return ordered
    result = []
    lanes = list(queues.values())
    for depth in range(max(len(lane) for lane in lanes)):
        result.extend(lane[depth] for lane in lanes if depth < len(lane))
    return result
