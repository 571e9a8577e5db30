"""Prometheus exposition: reads plain counters at scrape time.

The registry is owned here (no global default registry, so several forwarders can
run in one test process).  The query path never calls prometheus_client; the
collector turns ``Stats``, the cache and the upstream pool into metric families
when /metrics is fetched.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from .cache import Cache
from .pool import UpstreamPool
from .stats import SOURCES, STALE_REASONS, Stats

_RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 16: "BADVERS"}


class ResolverCollector:
    def __init__(self, stats: Stats, cache: Cache, pool: Callable[[], UpstreamPool],
                 now: Callable[[], float], version: str):
        self.stats = stats
        self.cache = cache
        self.pool = pool  # a getter: a reload may replace the pool
        self.now = now
        self.version = version

    def collect(self):
        s = self.stats
        info = InfoMetricFamily("resolver_build", "Version of this resolver.")
        info.add_metric([], {"version": self.version})
        yield info

        q = CounterMetricFamily("resolver_queries", "DNS queries received.", labels=["transport"])
        q.add_metric(["udp"], s.queries_udp)
        q.add_metric(["tcp"], s.queries_tcp)
        yield q

        yield CounterMetricFamily("resolver_cache_hits", "Queries answered from fresh cache entries.",
                                  value=s.cache_hits)
        yield CounterMetricFamily("resolver_cache_misses", "Queries that needed an upstream fetch.",
                                  value=s.cache_misses)
        st = CounterMetricFamily("resolver_stale_answers",
                                 "Answers served from expired cache entries (RFC 8767), by why upstream was not used.",
                                 labels=["reason"])
        for reason in STALE_REASONS:
            st.add_metric([reason], s.stale_answers.get(reason, 0))
        yield st

        src = CounterMetricFamily("resolver_responses_by_source", "Responses sent, by where the answer came from.",
                                  labels=["source"])
        by_source = dict(s.responses_by_source)
        # The hit path counts only hits and stale answers (one increment per query);
        # those two counters are the complete figures for their sources.
        by_source["cache"] = s.cache_hits
        by_source["stale"] = sum(s.stale_answers.values())
        for source in SOURCES:
            src.add_metric([source], by_source.get(source, 0))
        yield src

        yield CounterMetricFamily("resolver_coalesced_queries", "Misses that joined an upstream query already in flight.",
                                  value=s.coalesced)
        dropped = CounterMetricFamily("resolver_dropped_queries", "Queries dropped without an answer.",
                                      labels=["reason"])
        dropped.add_metric(["overload"], s.dropped_overload)
        dropped.add_metric(["malformed"], s.dropped_malformed)
        yield dropped
        yield CounterMetricFamily("resolver_formerr_responses", "FORMERR, NOTIMP or BADVERS answers to bad queries.",
                                  value=s.formerr)
        yield CounterMetricFamily("resolver_servfail_upstream_failed",
                                  "SERVFAIL answers sent because no upstream answered and nothing stale was cached.",
                                  value=s.servfail_upstream)
        yield CounterMetricFamily("resolver_internal_errors", "Bugs caught at the listener (answered SERVFAIL).",
                                  value=s.internal_errors)
        yield CounterMetricFamily("resolver_tcp_connections", "TCP connections accepted.", value=s.tcp_connections)
        yield CounterMetricFamily("resolver_tcp_connections_refused",
                                  "TCP connections closed at once because tcp_max_connections was reached.",
                                  value=s.tcp_refused)

        now = self.now()
        fresh, stale = self.cache.counts(now)
        entries = GaugeMetricFamily("resolver_cache_entries", "Entries in the cache.", labels=["state"])
        entries.add_metric(["fresh"], fresh)
        entries.add_metric(["stale"], stale)
        yield entries
        yield GaugeMetricFamily("resolver_cache_max_entries", "Configured cache capacity.", value=self.cache.max_entries)
        yield CounterMetricFamily("resolver_cache_evictions", "Entries evicted to stay within max_entries.",
                                  value=self.cache.evictions)

        pool = self.pool()
        req = CounterMetricFamily("resolver_upstream_requests", "Queries sent to each upstream.", labels=["upstream"])
        err = CounterMetricFamily("resolver_upstream_errors", "Failed upstream exchanges, by upstream and reason.",
                                  labels=["upstream", "reason"])
        up = GaugeMetricFamily("resolver_upstream_up", "1 if the upstream is considered healthy.", labels=["upstream"])
        mism = CounterMetricFamily("resolver_upstream_mismatched_replies",
                                   "Upstream replies ignored for a wrong ID or question (spoofing or late replies).",
                                   labels=["upstream"])
        for u in pool.upstreams:
            req.add_metric([u.label], pool.requests.get(u.label, 0))
            up.add_metric([u.label], 1 if pool.health[u.label].up else 0)
            mism.add_metric([u.label], u.mismatched)
        for (label, reason), count in sorted(pool.errors.items()):
            err.add_metric([label, reason], count)
        yield req
        yield err
        yield up
        yield mism
        yield GaugeMetricFamily("resolver_upstream_inflight", "Upstream exchanges in progress.", value=pool.inflight)
        yield from outage_families(s, pool)


def outage_families(s: Stats, pool: UpstreamPool):
    """Outage policies (issue 5): probes, prefetch, vanished answers, last-known-good."""
    probes = CounterMetricFamily("resolver_upstream_probes", "Background health probes of down upstreams.",
                                 labels=["upstream", "result"])
    for (label, result), count in sorted(pool.probes.items()):
        probes.add_metric([label, result], count)
    yield probes
    yield CounterMetricFamily("resolver_upstream_hedges", "Second upstreams asked because the first was slow.",
                              value=pool.hedges)
    yield CounterMetricFamily("resolver_prefetches", "Background refreshes of entries asked near the end of their TTL.",
                              value=s.prefetches)
    yield CounterMetricFamily("resolver_answers_vanished",
                              "Upstream answered NXDOMAIN/NODATA for a name whose positive records were cached.",
                              value=s.answers_vanished)
    lkg = CounterMetricFamily("resolver_last_known_good", "Empty answers replaced (enforce) or that would "
                              "have been (shadow) by the last positive records.", labels=["mode"])
    for mode in ("enforce", "shadow"):
        lkg.add_metric([mode], s.lkg_answers.get(mode, 0))
    yield lkg


def build_registry(collector: ResolverCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
