"""Prometheus exposition: reads plain counters at scrape time.

The registry is owned here (no global default registry, so several forwarders can
run in one test process).  The query path never calls prometheus_client; the
collector turns ``Stats``, the cache and the upstream pool into metric families
when /metrics is fetched.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.utils import floatToGoString

from ..cache.breaker import STATES as BREAKER_STATES
from ..cache.fleet_stats import REJECT_REASONS, FleetStats
from ..cache.host import HostTierStats
from ..cache.store import Cache
from ..local.answers import KINDS as LOCAL_KINDS
from ..stats import (
    LIMITED_ANSWERS,
    LIMITS,
    QTYPES,
    RCODES,
    SOURCES,
    STALE_REASONS,
    TCP_LIMITS,
    Histogram,
    Stats,
    rcode_label,
)
from ..upstream.pool import UpstreamPool


def _buckets(h: Histogram, extra_fast: int = 0) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le, count) pairs; ``extra_fast`` observations go to the first bucket."""
    out, total = [], extra_fast
    for bound, count in zip((*h.bounds, float("inf")), h.counts):
        total += count
        out.append((floatToGoString(bound), total))
    return out, h.sum


class ResolverCollector:
    def __init__(self, stats: Stats, cache: Cache, pool: Callable[[], UpstreamPool],
                 now: Callable[[], float], version: str, local=None, hosts=None):
        self.stats = stats
        self.cache = cache
        self.pool = pool  # a getter: a reload may replace the pool (a routing.Router reads as one pool)
        self.now = now
        self.version = version
        self.local = local  # local.LocalAnswers, hosts.HostsFile (optional)
        self.hosts = hosts
        self.lifecycle = None  # the App, once built: snapshot, reload and handover counters

    def collect(self):
        s = self.stats
        info = InfoMetricFamily("resolver_build", "Version of this resolver.")
        info.add_metric([], {"version": self.version})
        yield info

        q = CounterMetricFamily("resolver_queries", "DNS queries received.", labels=["transport"])
        q.add_metric(["udp"], s.queries_udp)
        q.add_metric(["tcp"], s.queries_tcp)
        yield q

        # The hit path counts into HitTally cells (qtype, rcode) -> [fresh, stale];
        # the slow path into Stats counters.  Each figure below is their sum.
        by_type, by_rcode = Counter(s.queries_by_type), Counter()
        for code, count in s.responses_by_rcode.items():
            by_rcode[rcode_label(code)] += count
        fast_fresh = fast_stale = 0
        for (qtype, rcode), cell in list(s.tally.cells.items()):
            fresh, stale = cell.fresh, cell.stale
            by_type[qtype] += fresh + stale
            by_rcode[rcode] += fresh + stale
            fast_fresh += fresh
            fast_stale += stale
        qt = CounterMetricFamily("resolver_queries_by_type", "DNS queries with a readable question, by query type "
                                 "(common types by name, the rest as other).", labels=["type"])
        for name in QTYPES:
            qt.add_metric([name], by_type.get(name, 0))
        yield qt
        rc = CounterMetricFamily("resolver_responses", "Responses sent, by rcode.", labels=["rcode"])
        for name in RCODES:
            rc.add_metric([name], by_rcode.get(name, 0))
        yield rc
        hist = HistogramMetricFamily(
            "resolver_request_duration_seconds",
            "Time from query to reply, by source. Answers on the cache-hit fast path are made within "
            "one datagram callback and are counted in the first bucket without being timed (they add 0 "
            "to the sum).", labels=["source"])
        for source in SOURCES:
            fast = fast_fresh if source == "cache" else fast_stale if source == "stale" else 0
            buckets, total = _buckets(s.durations[source], fast)
            hist.add_metric([source], buckets, total)
        yield hist

        yield CounterMetricFamily("resolver_cache_hits", "Queries answered from fresh cache entries.",
                                  value=s.cache_hits + fast_fresh)
        yield CounterMetricFamily("resolver_cache_misses", "Queries that needed an upstream fetch.",
                                  value=s.cache_misses)
        st = CounterMetricFamily("resolver_stale_answers",
                                 "Answers served from expired cache entries (RFC 8767), by why upstream was not used.",
                                 labels=["reason"])
        for reason in STALE_REASONS:
            st.add_metric([reason], s.stale_answers.get(reason, 0) + (fast_stale if reason == "recheck" else 0))
        yield st

        src = CounterMetricFamily("resolver_responses_by_source", "Responses sent, by where the answer came from.",
                                  labels=["source"])
        by_source = dict(s.responses_by_source)
        # The hit path counts only hits and stale answers (one increment per query);
        # those two counters are the complete figures for their sources.
        by_source["cache"] = s.cache_hits + fast_fresh
        by_source["stale"] = sum(s.stale_answers.values()) + fast_stale
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
                                  "TCP connections closed at once: tcp_max_connections reached, none idle.",
                                  value=s.tcp_refused)

        yield from _security_families(s)

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
        loss = GaugeMetricFamily("resolver_upstream_lost_ratio",
                                 "Share of the upstream's recent sends that passed their RTO unanswered (lost or "
                                 "late; an average over ~32 sends, what stale.lossy_upstream compares).",
                                 labels=["upstream"])
        mism = CounterMetricFamily("resolver_upstream_mismatched_replies",
                                   "Upstream replies ignored for a wrong ID or question (spoofing or late replies).",
                                   labels=["upstream"])
        latency = HistogramMetricFamily("resolver_upstream_request_duration_seconds",
                                        "Time from sending a query to an upstream to its reply (any rcode; "
                                        "timeouts and errors are in resolver_upstream_errors_total).",
                                        labels=["upstream"])
        scrubbed = CounterMetricFamily("resolver_upstream_scrubbed_records",
                                       "Upstream records removed before caching as unrelated to the question.",
                                       labels=["upstream"])
        # Kept-open connections (tls://, https://): each one opened cost a TLS handshake.
        opened = CounterMetricFamily("resolver_upstream_connections_opened",
                                     "TLS connections opened to tls:// and https:// upstreams (one handshake each).",
                                     labels=["upstream"])
        waits = CounterMetricFamily("resolver_upstream_stream_waits",
                                    "Queries to an https:// upstream that waited for a free HTTP/2 stream "
                                    "(the server's SETTINGS_MAX_CONCURRENT_STREAMS was reached).",
                                    labels=["upstream"])
        for u in pool.upstreams:
            if hasattr(u, "connections"):
                opened.add_metric([u.label], u.connections)
            if hasattr(u, "stream_waits"):
                waits.add_metric([u.label], u.stream_waits)
            scrubbed.add_metric([u.label], u.scrubbed)
            req.add_metric([u.label], pool.requests.get(u.label, 0))
            if u.label in pool.latency:
                buckets, total = _buckets(pool.latency[u.label])
                latency.add_metric([u.label], buckets, total)
            up.add_metric([u.label], 1 if pool.health[u.label].up else 0)
            loss.add_metric([u.label], pool.health[u.label].loss)
            mism.add_metric([u.label], u.mismatched)
        for (label, reason), count in sorted(pool.errors.items()):
            err.add_metric([label, reason], count)
        yield req
        yield err
        yield up
        yield loss
        yield mism
        yield latency
        yield scrubbed
        yield opened
        yield waits
        yield GaugeMetricFamily("resolver_upstream_inflight", "Upstream exchanges in progress.", value=pool.inflight)
        if self.lifecycle is not None:
            yield from _tier_families(self.lifecycle, s.cache_hits + fast_fresh)
            yield from _lifecycle_families(self.lifecycle)
        yield from outage_families(s, pool)
        yield from self._local()

    def _local(self):
        """Local answers and the hosts file (resolver/local/)."""
        if self.local is not None:
            loc = CounterMetricFamily("resolver_local_answers", "Queries answered locally, never sent upstream, "
                                      "by kind: records, hosts, localhost, blocked.", labels=["kind"])
            for kind in LOCAL_KINDS:
                loc.add_metric([kind], self.local.answers.get(kind, 0))
            yield loc
        if self.hosts is not None:
            h = self.hosts
            yield CounterMetricFamily("resolver_hosts_file_reloads", "Times the hosts file was (re)read.",
                                      value=h.reloads)
            yield CounterMetricFamily("resolver_hosts_file_read_errors", "Hosts file reads that failed.",
                                      value=h.errors)
            yield GaugeMetricFamily("resolver_hosts_file_records", "Records from the last hosts file read.",
                                    value=h.entries)
            yield GaugeMetricFamily("resolver_hosts_file_bad_lines", "Lines skipped in the last hosts file read.",
                                    value=h.bad_lines)


def _tier_families(app, process_hits: int):
    """The two cache levels (README "Cache levels"): lookups per tier, and the host tier's upkeep."""
    cache, tier = app.cache, app.host_tier
    h = tier.stats if tier is not None else HostTierStats()
    lookups = CounterMetricFamily(
        "resolver_cache_tier_lookups", "Cache lookups by level: process = this worker's memory (hits: fresh "
        "answers; misses: slow-path lookups it had nothing for), host = the shared host tier (read on a "
        "process miss or an expired entry).", labels=["tier", "result"])
    lookups.add_metric(["process", "hit"], process_hits)
    lookups.add_metric(["process", "miss"], cache.misses)
    lookups.add_metric(["host", "hit"], h.hits)
    lookups.add_metric(["host", "miss"], h.misses)
    fleet = getattr(app, "fleet", None)
    f = fleet.stats if fleet is not None else FleetStats()
    lookups.add_metric(["fleet", "hit"], f.hits)
    lookups.add_metric(["fleet", "miss"], f.misses)
    yield lookups
    yield from _fleet_families(fleet, f)
    on = tier is not None and tier.enabled
    yield GaugeMetricFamily("resolver_host_cache_up", "1 if the host cache tier is open and in use.", value=int(on))
    yield GaugeMetricFamily("resolver_host_cache_entries", "Entries in the host cache tier (all workers).",
                            value=tier.entries() if on else 0)
    yield GaugeMetricFamily("resolver_host_cache_bytes", "Bytes of data pages in the host cache tier.",
                            value=tier.bytes_used() if on else 0)
    yield GaugeMetricFamily("resolver_host_cache_reader_slots", "LMDB reader slots in use (all processes).",
                            value=tier.readers_in_use() if on else 0)
    yield GaugeMetricFamily("resolver_host_cache_write_lag_seconds",
                            "Enqueue to commit, oldest entry of this worker's last batch.", value=h.write_lag)
    yield CounterMetricFamily("resolver_host_cache_writes", "Entries this worker wrote to the host tier.",
                              value=h.writes)
    yield CounterMetricFamily("resolver_host_cache_evictions",
                              "Entries this worker evicted to stay within max_entries / max_bytes / the map.",
                              value=h.evictions)
    yield CounterMetricFamily("resolver_host_cache_swept", "Entries this worker removed past their stale window.",
                              value=h.swept)
    yield CounterMetricFamily("resolver_host_cache_full",
                              "Write transactions refused for want of room (map or disk full); eviction follows.",
                              value=h.full)
    yield CounterMetricFamily("resolver_host_cache_write_errors",
                              "Write transactions that failed (disk full, I/O error).", value=h.write_errors)
    yield CounterMetricFamily("resolver_host_cache_dropped_writes",
                              "Entries not written (queue full or batch failed); still served from memory.",
                              value=h.dropped)
    yield CounterMetricFamily("resolver_host_cache_rejected_values",
                              "Stored values refused by the parser (corrupt, foreign, other version); never served.",
                              value=h.rejected)
    yield CounterMetricFamily("resolver_host_cache_open_failures",
                              "Times the host tier could not be opened (the process then serves from memory).",
                              value=h.open_failures)


def _fleet_families(fleet, f: FleetStats):
    """The fleet tier (README "Fleet"): reads, their latency, the write queue, refused values, the breaker."""
    yield GaugeMetricFamily("resolver_fleet_enabled",
                            "1 if the fleet cache tier is configured (fleet.url or fleet.sentinels).",
                            value=int(fleet is not None))
    yield CounterMetricFamily("resolver_fleet_reads", "Reads sent to the fleet tier (misses in both local tiers).",
                              value=f.reads)
    yield CounterMetricFamily("resolver_fleet_read_skips", "Misses that did not ask the fleet: breaker open, "
                              "or every connection busy.", value=f.skipped)
    yield CounterMetricFamily("resolver_fleet_timeouts", "Fleet reads and write batches cut off by their budget.",
                              value=f.timeouts)
    yield CounterMetricFamily("resolver_fleet_errors", "Fleet reads and write batches that failed "
                              "(connection refused or reset, Redis error).", value=f.errors)
    buckets, total = _buckets(f.read_latency)
    yield HistogramMetricFamily("resolver_fleet_read_duration_seconds", "Fleet read latency (at most read_budget).",
                                buckets=buckets, sum_value=total)
    rejected = CounterMetricFamily("resolver_fleet_rejected_values", "Fleet values refused, never served: "
                                   "mac = failed authentication (forged, moved from another key, other secret); "
                                   "malformed = unreadable.", labels=["reason"])
    for reason in REJECT_REASONS:
        rejected.add_metric([reason], f.rejected[reason])
    yield rejected
    yield CounterMetricFamily("resolver_fleet_writes_queued", "Entries put on the fleet write queue.",
                              value=f.queued)
    yield CounterMetricFamily("resolver_fleet_writes", "Entries written to (or deleted from) the fleet tier.",
                              value=f.writes)
    yield CounterMetricFamily("resolver_fleet_dropped_writes", "Entries not written to the fleet: queue full, "
                              "breaker open, or the batch failed (still served here).", value=f.dropped)
    state = fleet.breaker.state if fleet is not None else None
    breaker = GaugeMetricFamily("resolver_fleet_breaker_state", "1 for the fleet breaker's current state "
                                "(closed: asking Redis; open: not; half_open: one probe).", labels=["state"])
    for name in BREAKER_STATES:
        breaker.add_metric([name], int(name == state))
    yield breaker
    yield CounterMetricFamily("resolver_fleet_breaker_opened", "Times the fleet breaker opened.",
                              value=fleet.breaker.opened if fleet is not None else 0)


def _lifecycle_families(app):
    """Restart, reload and handover figures (README "Restarts, upgrades and reloads")."""
    p = app.persist.stats
    yield CounterMetricFamily("resolver_cache_snapshot_saves", "Cache snapshots written.", value=p.saves)
    yield CounterMetricFamily("resolver_cache_snapshot_save_failures",
                              "Cache snapshot writes that failed (unwritable path, disk full, ...).",
                              value=p.save_failures)
    yield GaugeMetricFamily("resolver_cache_snapshot_last_save_timestamp_seconds",
                            "Wall-clock time of the last successful snapshot (0 = none yet).", value=p.last_save_wall)
    yield GaugeMetricFamily("resolver_cache_snapshot_entries", "Entries in the last snapshot written.",
                            value=p.last_save_entries)
    yield GaugeMetricFamily("resolver_cache_snapshot_bytes", "Size of the last snapshot written.",
                            value=p.last_save_bytes)
    yield GaugeMetricFamily("resolver_cache_snapshot_save_duration_seconds",
                            "How long the last snapshot took (serialising in slices + writing).",
                            value=p.last_save_seconds)
    yield GaugeMetricFamily("resolver_cache_snapshot_loaded_entries", "Entries restored from the snapshot at start.",
                            value=p.loaded_entries)
    yield CounterMetricFamily("resolver_cache_snapshot_load_failures",
                              "Snapshots that could not be loaded at start (missing, corrupt, foreign version).",
                              value=p.load_failures)
    r = app.reloads
    reloads = CounterMetricFamily("resolver_config_reloads", "SIGHUP configuration reloads.", labels=["result"])
    reloads.add_metric(["success"], r.successes)
    reloads.add_metric(["failure"], r.failures)
    yield reloads
    yield GaugeMetricFamily("resolver_config_last_reload_success_timestamp_seconds",
                            "Unix time the configuration was last loaded successfully (start-up counts).",
                            value=r.last_success_wall)
    lst = app.listeners
    yield CounterMetricFamily("resolver_handover_drained_datagrams",
                              "UDP queries read from the receive buffer at shutdown instead of being discarded.",
                              value=lst.drained_datagrams)
    yield CounterMetricFamily("resolver_handover_adopted_connections",
                              "TCP connections taken from the accept queue at shutdown instead of being reset.",
                              value=lst.drained_connections)
    hit_loop = InfoMetricFamily("resolver_udp_hit_loop",
                                "Which UDP cache-hit loop runs: native (batched, resolver/serve/batch.py) or python.")
    hit_loop.add_metric([], {"impl": lst.hit_loop})
    yield hit_loop
    unsent = CounterMetricFamily("resolver_udp_replies_unsent",
                                 "UDP replies of the native hit loop not sent: the kernel refused them (send_error), "
                                 "or the send buffer stayed full past the backlog (backlog_full).", labels=["reason"])
    batched = [t for t in lst.udp_transports if hasattr(t, "backlog_dropped")]
    unsent.add_metric(["send_error"], sum(t.send_errors for t in batched))
    unsent.add_metric(["backlog_full"], sum(t.backlog_dropped for t in batched))
    yield unsent
    yield GaugeMetricFamily("resolver_worker", "This process's worker index (workers > 1: metrics port = base + index).",
                            value=app.worker)
    yield CounterMetricFamily("resolver_worker_restarts",
                              "Times the supervisor restarted this worker slot after it died.",
                              value=getattr(app, "worker_restarts", 0))
    if hasattr(app, "admin_stats"):
        yield from _admin_families(app)


def _admin_families(app):
    """The admin API (README "Admin API and resolver ctl"): state changes, refusals, pins."""
    from .admin import ACTIONS, LISTENERS

    a = app.admin_stats
    actions = CounterMetricFamily("resolver_admin_actions", "State changes made through the admin API "
                                  "(each also logged as an audit line), by action.", labels=["action"])
    for action in ACTIONS:
        actions.add_metric([action], a.actions.get(action, 0))
    yield actions
    denied = CounterMetricFamily("resolver_admin_requests_denied", "Requests for a privileged route refused "
                                 "by the admin gate (wrong listener, non-loopback client or bad token).",
                                 labels=["listener"])
    cut = CounterMetricFamily("resolver_http_connections_timed_out", "HTTP connections closed for not sending "
                              "a request or not taking the reply within the listener's timeout.",
                              labels=["listener"])
    for listener in LISTENERS:
        denied.add_metric([listener], a.denied.get(listener, 0))
        cut.add_metric([listener], a.timed_out.get(listener, 0))
    yield denied
    yield cut
    yield GaugeMetricFamily("resolver_admin_listener_up", "1 if the admin listener (admin.socket / admin.listen) "
                            "is bound; 0 if it is off or could not be bound (see the log).",
                            value=1 if app.control_up else 0)
    yield GaugeMetricFamily("resolver_lkg_pins", "Last-known-good pins held (admin.max_pins at most).",
                            value=len(app.pipeline.lkg_pins))


def _security_families(s: Stats):
    """Access control, per-client limits and rate limiting (README "Security")."""
    acl = CounterMetricFamily("resolver_acl_refused",
                              "Queries (UDP) and connections (TCP) from clients outside security.allow.",
                              labels=["transport"])
    acl.add_metric(["udp"], s.acl_refused_udp)
    acl.add_metric(["tcp"], s.acl_refused_tcp)
    yield acl
    limited = CounterMetricFamily("resolver_limited_queries",
                                  "Queries answered without new upstream work because a cap was reached "
                                  "(stale or fresh from the cache, local, else SERVFAIL).", labels=["limit", "answer"])
    for limit in LIMITS:
        for answer in LIMITED_ANSWERS:
            limited.add_metric([limit, answer], s.limited.get((limit, answer), 0))
    yield limited
    idle = CounterMetricFamily("resolver_tcp_connections_idle_closed",
                               "Idle TCP connections closed to make room for a new one (RFC 7766 6.2.3).",
                               labels=["limit"])
    for limit in TCP_LIMITS:
        idle.add_metric([limit], s.tcp_idle_closed.get(limit, 0))
    yield idle
    yield CounterMetricFamily("resolver_tcp_connections_client_limited",
                              "TCP connections closed at once: the client had tcp_max_connections_per_client open, "
                              "none of them idle.",
                              value=s.tcp_refused_client_limit)
    yield CounterMetricFamily("resolver_tcp_connections_closed_slow",
                              "TCP connections closed for trickling a message past tcp_read_timeout "
                              "or not reading replies.", value=s.tcp_closed_slow)
    rrl = CounterMetricFamily("resolver_rate_limited_responses",
                              "UDP responses withheld (drop) or sent empty with TC=1 (slip): client over "
                              "security.rate_limit.", labels=["action"])
    rrl.add_metric(["drop"], s.rate_limited_dropped)
    rrl.add_metric(["slip"], s.rate_limited_slipped)
    yield rrl


def outage_families(s: Stats, pool: UpstreamPool):
    """Outage policies: probes, prefetch, vanished answers, last-known-good."""
    probes = CounterMetricFamily("resolver_upstream_probes", "Background health probes of down upstreams.",
                                 labels=["upstream", "result"])
    for (label, result), count in sorted(pool.probes.items()):
        probes.add_metric([label, result], count)
    yield probes
    yield CounterMetricFamily("resolver_upstream_hedges", "Second upstreams asked because the first was slow.",
                              value=pool.hedges)
    yield CounterMetricFamily("resolver_upstream_retransmits",
                              "Queries sent again to the same upstream past its retransmission timeout "
                              "(a fresh ID and source port; the earlier send still listens).",
                              value=pool.retransmits)
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
