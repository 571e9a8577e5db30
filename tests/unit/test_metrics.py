"""The scrape-time collector: hit-path tallies and slow-path counters add up; histograms are cumulative."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from resolver.clock import SYSTEM_CLOCK
from resolver.cache.store import Cache
from resolver.config import UpstreamAddress, UpstreamOptions
from resolver.ops import metrics
from resolver.stats import Stats
from resolver.upstream.plain import Upstream
from resolver.upstream.pool import UpstreamPool
from tests.support.packets import key, negative, prepared

NOW = 1000.0


def scrape(stats: Stats, cache: Cache, pool: UpstreamPool) -> dict:
    collector = metrics.ResolverCollector(stats, cache, lambda: pool, lambda: NOW, "1.2.3")
    text = metrics.render(metrics.build_registry(collector)).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def make():
    stats = Stats()
    cache = Cache(10, stats.tally)
    pool = UpstreamPool([Upstream(UpstreamAddress("192.0.2.1"))], UpstreamOptions(), SYSTEM_CLOCK)
    return stats, cache, pool


def test_fast_and_slow_paths_add_up():
    stats, cache, pool = make()
    www = cache.put(key("www.test"), prepared("www.test"), NOW, 100)
    nx = cache.put(key("nx.test"), negative("nx.test"), NOW, 100)
    www.tally.fresh += 5   # five hit-path answers
    nx.tally.stale += 2    # two hit-path stale (recheck) answers, NXDOMAIN
    stats.cache_hits += 1
    stats.responses_by_source["cache"] += 1
    stats.responses_by_rcode[0] += 1
    stats.queries_by_type["A"] += 1
    stats.queries_by_type["AAAA"] += 3
    stats.stale_answers["timeout"] += 1
    stats.responses_by_rcode[3] += 1
    stats.durations["cache"].observe(0.002)
    stats.durations["stale"].observe(1.9)
    m = scrape(stats, cache, pool)
    assert m[("resolver_cache_hits_total", ())] == 6
    assert m[("resolver_stale_answers_total", (("reason", "recheck"),))] == 2
    assert m[("resolver_stale_answers_total", (("reason", "timeout"),))] == 1
    assert m[("resolver_responses_by_source_total", (("source", "cache"),))] == 6
    assert m[("resolver_responses_by_source_total", (("source", "stale"),))] == 3
    assert m[("resolver_queries_by_type_total", (("type", "A"),))] == 8
    assert m[("resolver_queries_by_type_total", (("type", "AAAA"),))] == 3
    assert m[("resolver_queries_by_type_total", (("type", "other"),))] == 0
    assert m[("resolver_responses_total", (("rcode", "NOERROR"),))] == 6
    assert m[("resolver_responses_total", (("rcode", "NXDOMAIN"),))] == 3
    # Histogram: hit-path answers in the first bucket, timed ones where they fall; cumulative.
    cache_h = {dict(labels).get("le"): v for (name, labels), v in m.items()
               if name == "resolver_request_duration_seconds_bucket" and ("source", "cache") in labels}
    assert cache_h["0.0001"] == 5 and cache_h["0.001"] == 5 and cache_h["0.0025"] == 6 and cache_h["+Inf"] == 6
    assert m[("resolver_request_duration_seconds_count", (("source", "cache"),))] == 6
    assert m[("resolver_request_duration_seconds_sum", (("source", "cache"),))] == 0.002
    assert m[("resolver_request_duration_seconds_count", (("source", "stale"),))] == 3
    assert m[("resolver_cache_entries", (("state", "fresh"),))] == 2
    assert m[("resolver_build_info", (("version", "1.2.3"),))] == 1


def test_upstream_latency_histogram():
    stats, cache, pool = make()
    pool.latency["udp://192.0.2.1:53"].observe(0.03)
    pool.latency["udp://192.0.2.1:53"].observe(7.0)  # past the last bound: +Inf only
    m = scrape(stats, cache, pool)
    up = (("upstream", "udp://192.0.2.1:53"),)
    assert m[("resolver_upstream_request_duration_seconds_bucket", (("le", "0.05"),) + up)] == 1
    assert m[("resolver_upstream_request_duration_seconds_bucket", (("le", "4.0"),) + up)] == 1
    assert m[("resolver_upstream_request_duration_seconds_bucket", (("le", "+Inf"),) + up)] == 2
    assert m[("resolver_upstream_request_duration_seconds_count", up)] == 2
    # Reload families come from the App (reload.ReloadStats): tests/integration/test_reload.py.
