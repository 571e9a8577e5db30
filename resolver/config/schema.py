"""The configuration schema: frozen dataclasses, each field declaring how it is read.

Every default lives in exactly one place, the field defaults below;
``config/resolver.yaml`` restates them for people and a unit test keeps the two in
step.  Every field names its parser (fields.py) and, where it has one, its unit, on
itself::

    recheck: float = setting(30.0, parse=fields.duration, unit="s")

so adding a field means declaring how it is read; a unit test fails for a field that
does not.  ``read_section`` is the one walker: it takes a YAML mapping, refuses keys
the dataclass does not declare, and calls each field's own parser.  Nothing picks a
parser by a field's name or type, so the module works with postponed annotations.

Cross-field checks (``total_timeout`` at least ``attempt_timeout`` ...) live in
validate.py; files and YAML in load.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from resolver.errors import ConfigError
from resolver.wire import records
from resolver.wire.names import name_to_text

from . import fields as parse
from .fields import Address, UpstreamAddress

Parser = Callable[[object, str], Any]


def setting(default: Any = MISSING, *, parse: Parser, unit: str | None = None) -> Any:
    """A field read from YAML by ``parse(value, key_path)``; ``unit`` is what its number counts
    ("s" for durations and TTLs, "bytes", "entries" ...), None where there is no number."""
    return field(default=default, metadata={"parse": parse, "unit": unit})


def section(cls: type) -> Any:
    """A nested section (``cache.persist``): a mapping read against ``cls``'s own fields."""
    return field(default=cls(), metadata={"parse": functools.partial(read_section, cls), "unit": None,
                                          "section": cls})


def read_section(cls: type, data: object, key: str):
    """``cls`` built from the mapping ``data``: unknown keys refused, each value read by its
    field's declared parser, in the file's order (the first mistake in the file is reported)."""
    declared = {f.name: f for f in fields(cls)}
    values = {}
    for name, raw in parse.mapping(data, key, list(declared), REMOVED_KEYS.get(key)).items():
        values[name] = declared[name].metadata["parse"](raw, f"{key}.{name}" if key else name)
    return cls(**values)


# Keys that once existed: their own message instead of "unknown key", by section.
REMOVED_KEYS = {
    "metrics": {"allow_remote_admin": "removed: the admin API has its own listener now "
                "(admin.socket, or admin.listen with admin.token_file for remote use)"},
}


# -- upstreams --------------------------------------------------------------------------

POLICIES = ("sequential", "round_robin", "fastest")


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """How hard to try upstreams before giving up or falling back to stale data."""

    # initial retransmission timeout (RTO): see attempt_timeout_min/_max
    attempt_timeout: float = setting(1.0, parse=parse.duration, unit="s")
    # whole resolution; past it a never-cached name gets SERVFAIL
    total_timeout: float = setting(4.0, parse=parse.duration, unit="s")
    # consecutive failures before an upstream is marked down
    max_failures: int = setting(3, parse=parse.integer, unit="failures")
    # first down period; doubles after each failed probe ...
    backoff: float = setting(1.0, parse=parse.duration, unit="s")
    # ... up to this, so a dead upstream costs little
    backoff_max: float = setting(30.0, parse=parse.duration, unit="s")
    # DNS flag day 2020: avoids IP fragmentation
    edns_buffer_size: int = setting(1232, parse=parse.integer, unit="bytes")
    # a down upstream is probed with "<probe_name> NS" in the background ...
    probe_name: str = setting(".", parse=parse.text)
    # ... this often at first, doubling after each failed probe ...
    probe_interval: float = setting(0.5, parse=parse.duration, unit="s")
    # ... up to this: recovery is noticed within about a second
    probe_interval_max: float = setting(1.0, parse=parse.duration, unit="s")
    # sequential | round_robin | fastest (lowest smoothed latency first)
    policy: str = setting("sequential", parse=parse.choice(*POLICIES))
    # ask the next upstream too after this long; -1 = "auto", 0 = "off"
    hedge_after: float = setting(-1.0, parse=parse.hedge_delay, unit="s")
    # CA bundle (PEM) to verify tls:// and https:// upstreams; "" = the system store
    tls_ca_file: str = setting("", parse=parse.ca_file)
    # Once an upstream has answered, its RTO is SRTT + 4·RTTVAR (RFC 6298), doubled on each
    # timeout, kept within these; a send past its RTO keeps listening until total_timeout.
    # The floor is Unbound's: LAN upstreams answer in a millisecond.
    attempt_timeout_min: float = setting(0.05, parse=parse.duration, unit="s")  # floor
    attempt_timeout_max: float = setting(4.0, parse=parse.duration, unit="s")  # ceiling


# -- cache ---------------------------------------------------------------------------------


PERSIST_ENGINES = ("host", "snapshot")


@dataclass(frozen=True, slots=True)
class PersistConfig:
    """The cache on disk, so every worker and the next process (even after SIGKILL) start warm.

    ``engine: host`` (the default): the host tier, an LMDB file shared by the workers
    (cache/host.py).  ``engine: snapshot``: a periodic snapshot file (cache/snapshot.py),
    for file systems LMDB cannot share safely (NFS and other network mounts).
    """

    path: str = setting("", parse=parse.text_or_off)  # host tier (LMDB) file, or snapshot file; "" = none
    # engine snapshot: seconds between periodic snapshots (one is also written at shutdown)
    interval: float = setting(60.0, parse=parse.duration, unit="s")
    engine: str = setting("host", parse=parse.choice(*PERSIST_ENGINES))  # host | snapshot
    # host: the LMDB map (address space; the file is sparse), fixed while open
    map_size: int = setting(1 << 30, parse=parse.size, unit="bytes")
    max_entries: int = setting(1_000_000, parse=parse.integer)  # host: entries kept at most (least useful go)
    # host: bytes of data pages kept at most; must leave room in map_size
    max_bytes: int = setting(512 << 20, parse=parse.size, unit="bytes")
    # host: batches reach the file this often (what a crash may lose at most)
    write_interval: float = setting(0.25, parse=parse.duration, unit="s")
    write_queue: int = setting(100_000, parse=parse.integer)  # host: queued writes at most; beyond, dropped


MAX_CACHE_ENTRIES = 100_000_000  # ~30 GB of answers: a larger figure is a typo (an extra zero or two)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Bounds on what is cached and for how long (RFC 2308 for negative answers)."""

    # bounds memory; least recently used entries go first
    max_entries: int = setting(100_000, parse=parse.integer, unit="entries")
    # 0 = respect upstream TTLs; raising it trades freshness for load
    min_ttl: int = setting(0, parse=parse.ttl, unit="s")
    # caps absurd TTLs so fixed records are re-fetched daily
    max_ttl: int = setting(86_400, parse=parse.ttl, unit="s")
    # cap on NXDOMAIN/NODATA caching (RFC 2308 §5)
    max_negative_ttl: int = setting(3_600, parse=parse.ttl, unit="s")
    # SERVFAIL memory for never-cached names (RFC 9520 §3.2); 0 = off
    servfail_ttl: int = setting(1, parse=parse.ttl, unit="s")
    persist: PersistConfig = section(PersistConfig)
    # refresh in the background when asked in the last 10% of the TTL; 0 = off
    prefetch: float = setting(0.1, parse=parse.fraction, unit="fraction of the TTL")


# -- serve-stale ---------------------------------------------------------------------------

LKG_MODES = ("enforce", "shadow")


@dataclass(frozen=True, slots=True)
class LastKnownGoodConfig:
    """Keep serving a name's last positive records when upstream suddenly says it has none.

    Opt-in per zone: it can hide a real deletion for up to ``max_age``.
    """

    # e.g. ["amazonaws.com"]; empty = off (the counter still runs)
    zones: tuple[str, ...] = setting((), parse=parse.zones)
    # positive records confirmed longer ago than this are not defended
    max_age: float = setting(3_600.0, parse=parse.duration, unit="s")
    # enforce = serve the last records; shadow = count and log only
    mode: str = setting("enforce", parse=parse.choice(*LKG_MODES))


@dataclass(frozen=True, slots=True)
class StaleRule:
    """Stale settings for names matching ``match``; the first matching rule wins.

    ``match`` is "*.example.com" (any name below example.com) or "www.example.com"
    (that name only).  Omitted values keep the global ones.
    """

    match: str = setting("", parse=parse.name_pattern)  # required (read_stale_rules checks)
    # false: names matching get no stale window at all
    enabled: bool = setting(True, parse=parse.boolean)
    # stale window for these names (at most stale.max_age); -1 = the global one
    max_age: float = setting(-1.0, parse=parse.duration, unit="s")
    # TTL on their stale records; 0 = the global one
    answer_ttl: int = setting(0, parse=parse.ttl, unit="s")


def read_stale_rules(value: object, key: str) -> tuple[StaleRule, ...]:
    """stale.rules: a list of StaleRule mappings, each naming what it matches."""
    rules = []
    for path, item in parse.items(value, key):
        rule = read_section(StaleRule, item, path)
        if not rule.match:
            raise ConfigError(f"{path}.match", "is required (e.g. \"*.elb.amazonaws.com\")")
        rules.append(rule)
    return tuple(rules)


@dataclass(frozen=True, slots=True)
class StaleConfig:
    """Serve-stale (RFC 8767): answer from expired data while upstreams are failing."""

    enabled: bool = setting(True, parse=parse.boolean)
    # max stale timer: how long past expiry data may be served
    max_age: float = setting(86_400.0, parse=parse.duration, unit="s")
    # TTL written on stale records (RFC 8767 §4 recommends 30)
    answer_ttl: int = setting(30, parse=parse.ttl, unit="s")
    # client response timer: answer stale after this long
    client_timeout: float = setting(1.8, parse=parse.duration, unit="s")
    # failure recheck timer: after a failure, serve stale this long
    recheck: float = setting(30.0, parse=parse.duration, unit="s")
    # An upstream group whose best smoothed RTT is above this is slow: an expired entry
    # is answered stale at once and refreshed behind (0: never; always race client_timeout)
    slow_upstream: float = setting(0.5, parse=parse.duration, unit="s")
    # An upstream group that loses (or answers past their RTO) at least this share of
    # its recent sends is lossy: an expired entry is answered stale at once and
    # refreshed behind (0: never)
    lossy_upstream: float = setting(0.2, parse=parse.ratio, unit="fraction of sends")
    last_known_good: LastKnownGoodConfig = section(LastKnownGoodConfig)
    # per-name overrides, first match wins
    rules: tuple[StaleRule, ...] = setting((), parse=read_stale_rules)


# -- listeners and clients ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits that keep one busy or hostile client from starving the rest."""

    # RFC 7766 §6.2.3: close idle TCP connections
    tcp_idle_timeout: float = setting(10.0, parse=parse.duration, unit="s")
    tcp_max_connections: int = setting(256, parse=parse.integer, unit="connections")
    # Slow-path queries (cache misses) being answered at once; past it a query is answered
    # at once from what is cached (stale) or with SERVFAIL, never dropped in silence.
    max_inflight: int = setting(4096, parse=parse.integer, unit="queries")
    # time to finish in-flight queries on SIGTERM
    shutdown_grace: float = setting(2.0, parse=parse.duration, unit="s")
    # UDP cache hits answered in batches by native code (recvmmsg/sendmmsg, resolver/serve/batch.py):
    # auto = if the extension is built (Linux) | on = required, else refuse to start | off = Python only
    udp_accelerator: str = setting("auto", parse=parse.auto_on_off)


# RFC 1918 private ranges, RFC 6598 shared address space (CGNAT), loopback, RFC 4193
# unique-local and RFC 4291 link-local: the networks a sidecar or host resolver serves.
DEFAULT_ALLOW = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                 "::1/128", "fc00::/7", "fe80::/10")
REFUSED_ACTIONS = ("refuse", "drop")


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Who may ask, and how much work one client may cause (see resolver/serve/acl.py, limits.py).

    The allow-list defaults to loopback and private ranges, so a forwarder bound to a
    public address by mistake is not an open resolver (an amplification tool).
    """

    # client networks (CIDR); others are refused
    allow: tuple[str, ...] = setting(DEFAULT_ALLOW, parse=parse.networks)
    # refuse = REFUSED reply (never larger than the query) | drop
    refused_action: str = setting("refuse", parse=parse.choice(*REFUSED_ACTIONS))
    # randomise qname case toward upstreams (draft-vixie-dnsext-dns0x20)
    upstream_0x20: bool = setting(False, parse=parse.boolean)
    # Upstream fetches one client address may have started and still running; queries that
    # join a fetch in flight or are answered stale do not count.  Over it: stale or SERVFAIL.
    max_inflight_per_client: int = setting(100, parse=parse.integer, unit="queries")
    # open TCP connections per client address
    tcp_max_connections_per_client: int = setting(16, parse=parse.integer, unit="connections")
    # Clients that share only the global caps (server.max_inflight, server.tcp_max_connections):
    # a sidecar's whole pod, or the host's own stub resolver, is one loopback address.
    client_limits_exempt: tuple[str, ...] = setting(("127.0.0.0/8", "::1/128"), parse=parse.networks_or_none)
    # a started TCP message must be complete within this
    tcp_read_timeout: float = setting(2.0, parse=parse.duration, unit="s")
    # UDP responses per second per client address; 0 = off
    rate_limit: int = setting(0, parse=parse.integer, unit="responses/s")
    # every Nth limited response goes out as TC=1 (0 = none, 1 = all)
    rate_limit_slip: int = setting(2, parse=parse.integer, unit="responses")


# -- operations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus endpoint and health checks (/metrics, /healthz, /readyz) and nothing else:
    it may be on 0.0.0.0 for the scraper and the kubelet.  Loopback by default."""

    enabled: bool = setting(True, parse=parse.boolean)
    listen: Address = setting(Address("127.0.0.1", 9153), parse=parse.address)
    # open connections served at once; more wait in the kernel's backlog
    max_connections: int = setting(32, parse=parse.integer, unit="connections")
    # to send the request head, and to take the whole reply
    timeout: float = setting(5.0, parse=parse.duration, unit="s")


ADMIN_SOCKET_AUTO = "auto"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The privileged API (cache lookup and flush, pins, reload, status) for ``resolver ctl``.

    Its own listener: a Unix socket (mode 0600) by default, optionally a TCP address
    as well; never the metrics listener.  See README "Admin API and resolver ctl".
    """

    enabled: bool = setting(True, parse=parse.boolean)
    # auto = $RESOLVER_ADMIN_SOCKET, $RUNTIME_DIRECTORY, /run/resolver, ...; "" = none
    socket: str = setting(ADMIN_SOCKET_AUTO, parse=parse.socket_path)
    # TCP address, e.g. "127.0.0.1:8953"; "" = none; non-loopback needs token_file
    listen: str = setting("", parse=parse.text_or_off)
    # file holding a bearer token TCP clients must send; "" = loopback clients only
    token_file: str = setting("", parse=parse.text_or_off)
    # open connections served at once; more wait in the kernel's backlog
    max_connections: int = setting(16, parse=parse.integer, unit="connections")
    # to send the request head, and to take the whole reply
    timeout: float = setting(5.0, parse=parse.duration, unit="s")
    # last-known-good pins held at once (each keeps an entry forever)
    max_pins: int = setting(1_000, parse=parse.integer, unit="pins")


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = setting("info", parse=parse.choice(*LOG_LEVELS))  # debug | info | warning | error
    format: str = setting("text", parse=parse.choice(*LOG_FORMATS))  # text | json
    # query log (debugging): turns the cache-hit fast path off
    queries: bool = setting(False, parse=parse.boolean)
    # fraction of queries logged while ``queries`` is on
    query_sample: float = setting(1.0, parse=parse.ratio, unit="fraction of queries")


# -- local answers and conditional forwarding --------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwardZone:
    """Conditional forwarding: names at or under ``zone`` go to these upstreams only."""

    zone: bytes = setting(parse=parse.wire_zone)  # wire form, lower-case (records.parse_zone)
    upstreams: tuple[UpstreamAddress, ...] = setting(parse=parse.upstream_group)


def read_forward(value: object, key: str) -> tuple[ForwardZone, ...]:
    """``forward``: a list of {zone, upstreams}, each zone once."""
    raw = value or []
    parse.expect(isinstance(raw, list), raw, key, "a list of {zone, upstreams} mappings")
    names = [f.name for f in fields(ForwardZone)]
    zones = []
    for i, item in enumerate(raw):
        path = f"{key}[{i}]"
        parse.mapping(item, path, names)
        if item is None or not all(name in item for name in names):
            raise ConfigError(path, "needs both 'zone' and 'upstreams'")
        zones.append(read_section(ForwardZone, item, path))
    parse.unique([name_to_text(z.zone) for z in zones], key)
    return tuple(zones)


@dataclass(frozen=True, slots=True)
class HostsFileConfig:
    """A file in /etc/hosts format answered locally (A, AAAA and PTR), re-read when it changes."""

    enabled: bool = setting(False, parse=parse.boolean)
    path: str = setting("/etc/hosts", parse=parse.text)
    # TTL of its answers: how long clients keep a name after the file changes
    ttl: int = setting(60, parse=parse.ttl, unit="s")
    # at most one stat() of the file per interval
    check_interval: float = setting(5.0, parse=parse.duration, unit="s")


# -- the whole ----------------------------------------------------------------------------


FLEET_MODES = ("standalone", "cluster", "sentinel")


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """The fleet cache tier (L3, cache/fleet.py): a Redis or Valkey shared by every node, so a
    node that never saw a name can serve it stale in an outage.  Off unless ``url`` is set."""

    # how url names the store: one server (standalone), a seed node of a Redis Cluster
    # (cluster), or the master a set of Sentinels watches (sentinel)
    mode: str = setting("standalone", parse=parse.choice(*FLEET_MODES))
    # standalone: redis://host:6379/0, rediss://host:6380/0 (TLS) or unix:///path; "" = off.
    # cluster: any one node, redis://host:6379 (the others are discovered; database 0 only).
    # sentinel: optional, only the master's password, database and TLS: rediss://:PASSWORD@/0
    url: str = setting("", parse=parse.text_or_off)
    # sentinel mode: the Sentinels to ask for the master ("host:26379"); turns the tier on
    sentinels: tuple[tuple[str, int], ...] = setting((), parse=parse.host_ports)
    sentinel_service: str = setting("", parse=parse.text_or_off)  # sentinel mode: the master's name
    # the shared key every entry is authenticated with (HMAC-SHA256); required with url
    secret_file: str = setting("", parse=parse.text_or_off)
    key_prefix: str = setting("resolver:", parse=parse.text)  # namespace of our keys in a shared Redis
    # a miss waits at most this for the fleet (raced against the upstream query)
    read_budget: float = setting(0.03, parse=parse.duration, unit="s")
    # a write batch (and a connect) gives up after this; it runs off the query path
    write_timeout: float = setting(1.0, parse=parse.duration, unit="s")
    write_queue: int = setting(10_000, parse=parse.integer, unit="entries")  # beyond: dropped and counted
    max_connections: int = setting(16, parse=parse.integer)  # to Redis, per process
    # the breaker opens after this many timeouts or errors in a row ...
    breaker_failures: int = setting(5, parse=parse.integer)
    # ... and lets one request through to probe after this long
    breaker_reset: float = setting(10.0, parse=parse.duration, unit="s")
    tls_ca_file: str = setting("", parse=parse.ca_file)  # rediss://: CA bundle; "" = the system store

    @property
    def enabled(self) -> bool:
        """On when it names a store: ``url``, or in sentinel mode the Sentinels."""
        return bool(self.url or (self.mode == "sentinel" and self.sentinels))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration.  ``parse_config`` always fills ``upstreams``."""

    listen: tuple[Address, ...] = setting((Address("127.0.0.1", 5353),), parse=parse.listen_addresses)
    # empty in the file = use resolv_conf
    upstreams: tuple[UpstreamAddress, ...] = setting((), parse=parse.upstreams)
    resolv_conf: str = setting("/etc/resolv.conf", parse=parse.text)
    upstream: UpstreamOptions = section(UpstreamOptions)
    cache: CacheConfig = section(CacheConfig)
    stale: StaleConfig = section(StaleConfig)
    server: ServerConfig = section(ServerConfig)
    security: SecurityConfig = section(SecurityConfig)
    metrics: MetricsConfig = section(MetricsConfig)
    admin: AdminConfig = section(AdminConfig)
    logging: LoggingConfig = section(LoggingConfig)
    # Conditional forwarding and local answers (resolver/upstream/routing.py, resolver/local/).
    forward: tuple[ForwardZone, ...] = setting((), parse=read_forward)
    local_records: tuple[records.Record, ...] = setting((), parse=parse.local_records)
    hosts_file: HostsFileConfig = section(HostsFileConfig)
    block_zones: tuple[bytes, ...] = setting((), parse=parse.wire_zones)  # wire form, lower-case
    # processes sharing the ports (SO_REUSEPORT); WORKERS_AUTO = one per core
    workers: int = setting(1, parse=parse.workers, unit="processes")
    fleet: FleetConfig = section(FleetConfig)  # the fleet cache tier on Redis/Valkey (README "Fleet")


def read_config(data: object) -> Config:
    """A Config from ``yaml.safe_load`` output (None or {} means all defaults), before the
    cross-field checks (validate.py) and before resolv.conf fills ``upstreams`` (load.py)."""
    return read_section(Config, data, "")

