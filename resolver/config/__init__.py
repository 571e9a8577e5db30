"""Configuration: a strict YAML schema turned into frozen dataclasses.

Every default lives in exactly one place, the dataclass field defaults below;
``config/resolver.yaml`` restates them for people and a unit test keeps the two
in step.  Parsing is strict on purpose: an unknown key, a wrong type or an
out-of-range value stops the process at start-up with the full key path
(``cache.max_entrys: unknown key ...``), because a typo that silently falls back
to a default is otherwise discovered during the outage it was meant to soften.
"""

import ipaddress
import math
import os
import re
import stat
from dataclasses import dataclass, fields, is_dataclass, replace

import yaml

from resolver.errors import ConfigError
from resolver.wire import records


@dataclass(frozen=True, slots=True)
class Address:
    """An IP literal and port that this process binds (DNS listener or metrics).

    Hostnames are refused: resolving them would need the very service we provide.
    """

    host: str  # "127.0.0.1" or "::1", never bracketed
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    """A recursive resolver we forward to.

    ``transport`` is ``"udp"`` (UDP, retried over TCP when the answer comes back
    truncated) or ``"tcp"`` (TCP only, for paths that drop large UDP answers).
    """

    host: str
    port: int = 53
    transport: str = "udp"
    server_name: str = ""  # tls:// only: the name its certificate must carry ("" = the IP)

    @property
    def label(self) -> str:
        """Unique, stable text such as ``udp://192.0.2.53:53``; used as a metric label."""
        return f"{self.transport}://{Address(self.host, self.port)}"


@dataclass(frozen=True, slots=True)
class UpstreamOptions:
    """How hard to try upstreams before giving up or falling back to stale data."""

    attempt_timeout: float = 1.0  # one try at one upstream
    total_timeout: float = 4.0  # whole resolution; past it a never-cached name gets SERVFAIL
    max_failures: int = 3  # consecutive failures before an upstream is marked down
    backoff: float = 1.0  # first down period; doubles after each failed probe ...
    backoff_max: float = 30.0  # ... up to this, so a dead upstream costs little
    edns_buffer_size: int = 1232  # DNS flag day 2020: avoids IP fragmentation
    probe_name: str = "."  # a down upstream is probed with "<probe_name> NS" in the background ...
    probe_interval: float = 0.5  # ... this often at first, doubling after each failed probe ...
    probe_interval_max: float = 1.0  # ... up to this: recovery is noticed within about a second
    policy: str = "sequential"  # sequential | round_robin | fastest (lowest smoothed latency first)
    hedge_after: float = -1.0  # ask the next upstream too after this long; -1 = "auto", 0 = "off"
    tls_ca_file: str = ""  # CA bundle (PEM) to verify tls:// upstreams; "" = the system store


@dataclass(frozen=True, slots=True)
class PersistConfig:
    """The cache on disk, so every worker and the next process (even after SIGKILL) start warm.

    ``engine: host`` (the default): the host tier, an LMDB file shared by the workers
    (cache/host.py).  ``engine: snapshot``: a periodic snapshot file (cache/snapshot.py),
    for file systems LMDB cannot share safely (NFS and other network mounts).
    """

    path: str = ""  # host tier (LMDB) file, or snapshot file; empty = no persistence
    interval: float = 60.0  # engine snapshot: seconds between periodic snapshots (one also at shutdown)
    engine: str = "host"  # host | snapshot
    map_size: int = 1 << 30  # host: the LMDB map (address space; the file is sparse), fixed while open
    max_entries: int = 1_000_000  # host: entries kept at most (least useful evicted first)
    max_bytes: int = 512 << 20  # host: bytes of data pages kept at most; must leave room in map_size
    write_interval: float = 0.25  # host: batches reach the file this often (crash loses at most this)
    write_queue: int = 100_000  # host: entries waiting to be written at most; beyond, counted and dropped


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Bounds on what is cached and for how long (RFC 2308 for negative answers)."""

    max_entries: int = 100_000  # bounds memory; least recently used entries go first
    min_ttl: int = 0  # 0 = respect upstream TTLs; raising it trades freshness for load
    max_ttl: int = 86_400  # caps absurd TTLs so fixed records are re-fetched daily
    max_negative_ttl: int = 3_600  # cap on NXDOMAIN/NODATA caching (RFC 2308 §5)
    servfail_ttl: int = 1  # SERVFAIL memory for never-cached names (RFC 9520 §3.2); 0 = off
    persist: PersistConfig = PersistConfig()
    prefetch: float = 0.1  # refresh in the background when asked in the last 10% of the TTL; 0 = off


@dataclass(frozen=True, slots=True)
class LastKnownGoodConfig:
    """Keep serving a name's last positive records when upstream suddenly says it has none.

    Opt-in per zone: it can hide a real deletion for up to ``max_age``.
    """

    zones: tuple[str, ...] = ()  # e.g. ["amazonaws.com"]; empty = off (the counter still runs)
    max_age: float = 3_600.0  # positive records confirmed longer ago than this are not defended
    mode: str = "enforce"  # enforce = serve the last records; shadow = count and log only


@dataclass(frozen=True, slots=True)
class StaleRule:
    """Stale settings for names matching ``match``; the first matching rule wins.

    ``match`` is "*.example.com" (any name below example.com) or "www.example.com"
    (that name only).  Omitted values keep the global ones.
    """

    match: str = ""
    enabled: bool = True  # false: names matching get no stale window at all
    max_age: float = -1.0  # stale window for these names (at most stale.max_age); -1 = the global one
    answer_ttl: int = 0  # TTL on their stale records; 0 = the global one


@dataclass(frozen=True, slots=True)
class StaleConfig:
    """Serve-stale (RFC 8767): answer from expired data while upstreams are failing."""

    enabled: bool = True
    max_age: float = 86_400.0  # max stale timer: how long past expiry data may be served
    answer_ttl: int = 30  # TTL written on stale records (RFC 8767 §4 recommends 30)
    client_timeout: float = 1.8  # client response timer: answer stale after this long
    recheck: float = 30.0  # failure recheck timer: after a failure, serve stale this long
    last_known_good: LastKnownGoodConfig = LastKnownGoodConfig()
    rules: tuple[StaleRule, ...] = ()  # per-name overrides, first match wins


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Limits that keep one busy or hostile client from starving the rest."""

    tcp_idle_timeout: float = 10.0  # RFC 7766 §6.2.3: close idle TCP connections
    tcp_max_connections: int = 256
    # Slow-path queries (cache misses) being answered at once; past it a query is answered
    # at once from what is cached (stale) or with SERVFAIL, never dropped in silence.
    max_inflight: int = 4096
    shutdown_grace: float = 2.0  # time to finish in-flight queries on SIGTERM


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

    allow: tuple[str, ...] = DEFAULT_ALLOW  # client networks (CIDR); others are refused
    refused_action: str = "refuse"  # refuse = REFUSED reply (never larger than the query) | drop
    upstream_0x20: bool = False  # randomise qname case toward upstreams (draft-vixie-dnsext-dns0x20)
    # Upstream fetches one client address may have started and still running; queries that
    # join a fetch in flight or are answered stale do not count.  Over it: stale or SERVFAIL.
    max_inflight_per_client: int = 100
    tcp_max_connections_per_client: int = 16  # open TCP connections per client address
    # Clients that share only the global caps (server.max_inflight, server.tcp_max_connections):
    # a sidecar's whole pod, or the host's own stub resolver, is one loopback address.
    client_limits_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    tcp_read_timeout: float = 2.0  # a started TCP message must be complete within this
    rate_limit: int = 0  # UDP responses per second per client address; 0 = off
    rate_limit_slip: int = 2  # every Nth limited response goes out as TC=1 (0 = none, 1 = all)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus endpoint and health checks (/metrics, /healthz, /readyz) and nothing else:
    it may be on 0.0.0.0 for the scraper and the kubelet.  Loopback by default."""

    enabled: bool = True
    listen: Address = Address("127.0.0.1", 9153)
    max_connections: int = 32  # open connections served at once; more wait in the kernel's backlog
    timeout: float = 5.0  # to send the request head, and to take the whole reply


ADMIN_SOCKET_AUTO = "auto"


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The privileged API (cache lookup and flush, pins, reload, status) for ``resolver ctl``.

    Its own listener: a Unix socket (mode 0600) by default, optionally a TCP address
    as well; never the metrics listener.  See README "Admin API and resolver ctl".
    """

    enabled: bool = True
    socket: str = ADMIN_SOCKET_AUTO  # auto = $RESOLVER_ADMIN_SOCKET, $RUNTIME_DIRECTORY, /run/resolver, ...; "" = none
    listen: str = ""  # TCP address, e.g. "127.0.0.1:8953"; "" = none; non-loopback needs token_file
    token_file: str = ""  # file holding a bearer token TCP clients must send; "" = loopback clients only
    max_connections: int = 16  # open connections served at once; more wait in the kernel's backlog
    timeout: float = 5.0  # to send the request head, and to take the whole reply
    max_pins: int = 1_000  # last-known-good pins held at once (each keeps an entry forever)


MAX_CACHE_ENTRIES = 100_000_000  # ~30 GB of answers: a larger figure is a typo (an extra zero or two)


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "info"  # debug | info | warning | error
    format: str = "text"  # text | json
    queries: bool = False  # query log (debugging): turns the cache-hit fast path off
    query_sample: float = 1.0  # fraction of queries logged while ``queries`` is on


@dataclass(frozen=True, slots=True)
class ForwardZone:
    """Conditional forwarding: names at or under ``zone`` go to these upstreams only."""

    zone: bytes  # wire form, lower-case (records.parse_zone)
    upstreams: tuple[UpstreamAddress, ...]


@dataclass(frozen=True, slots=True)
class HostsFileConfig:
    """A file in /etc/hosts format answered locally (A, AAAA and PTR), re-read when it changes."""

    enabled: bool = False
    path: str = "/etc/hosts"
    ttl: int = 60  # TTL of its answers: how long clients keep a name after the file changes
    check_interval: float = 5.0  # at most one stat() of the file per interval


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration.  ``parse_config`` always fills ``upstreams``."""

    listen: tuple[Address, ...] = (Address("127.0.0.1", 5353),)
    upstreams: tuple[UpstreamAddress, ...] = ()  # empty in the file = use resolv_conf
    resolv_conf: str = "/etc/resolv.conf"
    upstream: UpstreamOptions = UpstreamOptions()
    cache: CacheConfig = CacheConfig()
    stale: StaleConfig = StaleConfig()
    server: ServerConfig = ServerConfig()
    security: SecurityConfig = SecurityConfig()
    metrics: MetricsConfig = MetricsConfig()
    admin: AdminConfig = AdminConfig()
    logging: LoggingConfig = LoggingConfig()
    # Conditional forwarding and local answers (resolver/upstream/routing.py, resolver/local/).
    forward: tuple[ForwardZone, ...] = ()
    local_records: tuple[records.Record, ...] = ()
    hosts_file: HostsFileConfig = HostsFileConfig()
    block_zones: tuple[bytes, ...] = ()  # wire form, lower-case
    workers: int = 1  # processes sharing the ports (SO_REUSEPORT); WORKERS_AUTO = one per core


WORKERS_AUTO = 0  # `workers: auto`, resolved to the number of usable cores by the supervisor
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
TRANSPORTS = ("udp", "tcp", "tls")
_SECTIONS = {f.name: f.type for f in fields(Config) if is_dataclass(f.type)}
_RATIO_FIELDS = frozenset({"query_sample"})
LKG_MODES = ("enforce", "shadow")
PERSIST_ENGINES = ("host", "snapshot")
_SIZE_FIELDS = frozenset({"map_size", "max_bytes"})  # cache.persist: bytes, "512MiB" or "1GiB" allowed
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|TiB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
POLICIES = ("sequential", "round_robin", "fastest")
_FRACTION_FIELDS = frozenset({"prefetch"})
_TTL_FIELDS = frozenset({"min_ttl", "max_ttl", "max_negative_ttl", "answer_ttl", "servfail_ttl"})
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*(ms|s|m|h|d)?", re.ASCII)
_BRACKETED = re.compile(r"\[([^\]]*)\](?::(.*))?")
_TTL_FIELDS |= {"ttl"}  # hosts_file.ttl


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _expect(ok: object, value: object, key: str, what: str):
    """``value`` if ``ok``, else the standard "expected <what>, got <value>" error."""
    if not ok:
        raise ConfigError(key, f"expected {what}, got {_show(value)}")
    return value


def parse_duration(value: object, key: str) -> float:
    """Seconds from a number (seconds) or a string: "500ms", "30s", "5m", "2h", "1d", "30"."""
    seconds = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e300 else math.inf  # inf, nan, 10**400
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    _expect(seconds is not None, value, key, "a duration (seconds, or e.g. 500ms, 30s, 5m, 2h, 1d)")
    if seconds < 0 or math.isinf(seconds):
        what = "finite" if seconds > 0 else "non-negative"
        raise ConfigError(key, f"must be {what}, got {_show(value)}")
    return seconds


def parse_size(value: object, key: str) -> int:
    """Bytes from an integer or a string such as "512MiB", "1GiB" (binary units, as LMDB sizes its map)."""
    size = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    _expect(size is not None and 0 <= size < 1 << 50, value, key, "a size in bytes (or e.g. 512MiB, 1GiB)")
    return size


def _ttl(value: object, key: str) -> int:
    """A TTL: any duration that is a whole number of seconds (DNS TTLs are integers)."""
    seconds = parse_duration(value, key)
    _expect(seconds.is_integer(), value, key, "a whole number of seconds")
    return int(seconds)


def _str(value: object, key: str) -> str:
    return _expect(isinstance(value, str) and value, value, key, "a non-empty string")


def _ip(host: str, key: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(key, f"expected an IP address (not a hostname), got {host!r}") from None


def parse_address(text: object, key: str, default_port: int | None = None) -> Address:
    """"127.0.0.1:5353" or "[::1]:5353"; the port may be omitted if ``default_port`` is given.

    A bare IPv6 address is accepted only without a port ("2001:db8::1"): in
    "::1:53" the port cannot be told apart from the last group of the address.
    """
    _expect(isinstance(text, str), text, key, "an address such as 127.0.0.1:5353")
    text = text.strip()
    if match := _BRACKETED.fullmatch(text):
        host, port_text = match.group(1), match.group(2)
        if _ip(host, key).version != 6:
            raise ConfigError(key, f"brackets are only for IPv6 addresses, got {text!r}")
    elif text.count(":") > 1:
        if default_port is None:
            raise ConfigError(key, f"IPv6 needs brackets and a port, e.g. [::1]:5353, got {text!r}")
        host, port_text = text, None
    elif ":" in text:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None
    ip = _ip(host, key)
    if port_text is None:
        if default_port is None:
            raise ConfigError(key, f"missing port (as in 127.0.0.1:53 or [::1]:53), got {text!r}")
        return Address(str(ip), default_port)
    if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise ConfigError(key, f"port must be a number from 1 to 65535, got {port_text!r}")
    return Address(str(ip), int(port_text))


def parse_networks(value: object, key: str, allow_empty: bool = False) -> tuple[str, ...]:
    """A list of CIDR networks ("10.0.0.0/8", "2001:db8::/32", or a bare address), normalised.

    Host bits must be zero ("10.1.2.3/8" is refused): such an entry is usually a typo
    for a narrower network than the one it would silently allow.
    """
    networks = []
    for path, item in _strings(value, key):
        _expect(isinstance(item, str), item, path, "a network such as 10.0.0.0/8")
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=True)))
        except ValueError as exc:
            raise ConfigError(path, f"expected a network such as 10.0.0.0/8: {exc}") from None
    if not networks and not allow_empty:
        raise ConfigError(key, "must list at least one network (0.0.0.0/0 and ::/0 allow everyone)")
    return tuple(networks)


def parse_upstream(text: object, key: str) -> UpstreamAddress:
    """"192.0.2.53", "192.0.2.53:53", "[2001:db8::1]:53", each optionally with udp:// or tcp://."""
    transport = "udp"
    server_name = ""
    if isinstance(text, str) and "://" in text:
        scheme, _, text = text.strip().partition("://")
        transport = scheme.lower()
        if transport not in TRANSPORTS:
            raise ConfigError(key, f"unsupported scheme {scheme!r} (expected udp://, tcp:// or tls://)")
    if isinstance(text, str) and "#" in text:
        # DNS over TLS (RFC 7858): tls://192.0.2.53:853#dns.example verifies that name.
        text, _, server_name = text.partition("#")
        if transport != "tls":
            raise ConfigError(key, "a #server-name is only for tls:// upstreams")
        server_name = _zone(server_name, key)
        if not server_name:
            raise ConfigError(key, "empty #server-name")
    address = parse_address(text, key, default_port=853 if transport == "tls" else 53)
    return UpstreamAddress(address.host, address.port, transport, server_name)


def read_resolv_conf(path: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf file, in file order, without duplicates.

    Entries that are not IP literals are skipped (as the C library does), and so
    are link-local addresses with a scope id such as ``fe80::1%eth0``: reaching
    them would need a socket bound to that interface.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise ConfigError("resolv_conf", f"cannot read {path}: {exc.strerror or exc}") from None
    servers: list[str] = []
    for line in lines:
        words = re.split(r"[;#]", line, maxsplit=1)[0].split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        try:
            ip = ipaddress.ip_address(words[1])
        except ValueError:
            continue
        if getattr(ip, "scope_id", None) is None and str(ip) not in servers:
            servers.append(str(ip))
    return servers


def _mapping(data: object, key: str, names: list[str]) -> dict:
    """``data`` as a dict (an empty YAML section is None), refusing unknown keys."""
    if data is None:
        return {}
    _expect(isinstance(data, dict), data, key, "a mapping of keys")
    for name in data:
        if name not in names:
            path = f"{key}.{name}" if key else str(name)
            raise ConfigError(path, f"unknown key (expected one of: {', '.join(names)})")
    return data


def _strings(value: object, key: str) -> list[tuple[str, object]]:
    """A list (or one string) as (key path, element) pairs, the paths like ``upstreams[1]``."""
    if value is None:
        value = []
    elif isinstance(value, str):
        value = [value]
    _expect(isinstance(value, list), value, key, "a list of strings")
    return [(f"{key}[{i}]", item) for i, item in enumerate(value)]


def _section(cls: type, data: object, key: str):
    types = {f.name: f.type for f in fields(cls)}
    values = {}
    for name, raw in _mapping(data, key, list(types)).items():
        path, kind = f"{key}.{name}", types[name]
        if kind is bool:
            values[name] = _expect(isinstance(raw, bool), raw, path, "true or false")
        elif is_dataclass(kind) and kind is not Address:
            values[name] = _section(kind, raw, path)
        elif kind == tuple[StaleRule, ...]:
            values[name] = tuple(_rule(item, k) for k, item in _list(raw, path))
        elif kind == tuple[str, ...] and name in ("allow", "client_limits_exempt"):
            values[name] = parse_networks(raw, path, allow_empty=name == "client_limits_exempt")
        elif kind == tuple[str, ...]:
            values[name] = tuple(_zone(item, k) for k, item in _strings(raw, path))
        elif name in _FRACTION_FIELDS:
            ok = isinstance(raw, (int, float)) and not isinstance(raw, bool) and 0 <= raw < 1
            values[name] = float(_expect(ok, raw, path, "a fraction from 0 to below 1 (0.1 = last 10%)"))
        elif kind is int and name in _SIZE_FIELDS:
            values[name] = parse_size(raw, path)
        elif kind is int and name in _TTL_FIELDS:
            values[name] = _ttl(raw, path)
        elif kind is int:
            ok = isinstance(raw, int) and not isinstance(raw, bool)
            values[name] = _expect(ok, raw, path, "an integer")
        elif kind is float and name in _RATIO_FIELDS:
            ok = isinstance(raw, (int, float)) and not isinstance(raw, bool) and 0.0 <= raw <= 1.0
            values[name] = float(_expect(ok, raw, path, "a number from 0 to 1"))
        elif kind is float and name == "hedge_after" and raw in ("auto", "off"):
            values[name] = -1.0 if raw == "auto" else 0.0
        elif kind is float:
            values[name] = parse_duration(raw, path)
        elif kind is Address:
            values[name] = parse_address(raw, path)
        elif is_dataclass(kind):
            values[name] = _section(kind, raw, path)
        elif raw == "" and getattr(cls(), name) == "":
            values[name] = ""  # an empty string that is also the default means "off"
        elif name == "socket":  # admin.socket: "" (no socket) differs from the default ("auto")
            values[name] = _expect(isinstance(raw, str), raw, path, 'a socket path, "auto" or "" (none)')
        elif name == "tls_ca_file":
            values[name] = _expect(isinstance(raw, str), raw, path, "a file path (or \"\" for the system store)")
        else:
            values[name] = _str(raw, path)
    return cls(**values)


_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)", re.ASCII)


def _zone(value: object, key: str) -> str:
    """A domain name in presentation form, lower-cased, without the trailing dot ("" = root)."""
    text = _str(value, key).strip().lower().rstrip(".")
    labels = text.split(".") if text else []
    if len(text) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(key, f"expected a domain name such as example.com, got {_show(value)}")
    return text


def _list(value: object, key: str) -> list[tuple[str, object]]:
    """A YAML list as (key path, element) pairs; None is empty."""
    value = [] if value is None else value
    _expect(isinstance(value, list), value, key, "a list")
    return [(f"{key}[{i}]", item) for i, item in enumerate(value)]


def _rule(data: object, key: str) -> StaleRule:
    rule = _section(StaleRule, data, key)
    if not rule.match:
        raise ConfigError(f"{key}.match", "is required (e.g. \"*.elb.amazonaws.com\")")
    pattern = rule.match.strip().lower()
    _zone(pattern[2:] if pattern.startswith("*.") else pattern, f"{key}.match")
    if rule.answer_ttl < 0:
        raise ConfigError(f"{key}.answer_ttl", f"must be at least 1, got {rule.answer_ttl}")
    return replace(rule, match=pattern.rstrip("."))


def _unique(items: list, key: str) -> None:
    for i, item in enumerate(items):
        if item in items[:i]:
            raise ConfigError(f"{key}[{i}]", f"duplicate of {key}[{items.index(item)}] ({item})")


def _check_ranges(c: Config) -> None:
    u, cache, srv = c.upstream, c.cache, c.server
    levels, formats = ", ".join(LOG_LEVELS), ", ".join(LOG_FORMATS)
    rules = [
        ("upstream.attempt_timeout", u.attempt_timeout > 0, "must be greater than 0"),
        ("upstream.total_timeout", u.total_timeout >= u.attempt_timeout,
         f"must be at least upstream.attempt_timeout ({u.attempt_timeout:g})"),
        ("upstream.max_failures", u.max_failures >= 1, "must be at least 1"),
        ("upstream.backoff", u.backoff > 0, "must be greater than 0"),
        ("upstream.backoff_max", u.backoff_max >= u.backoff,
         f"must be at least upstream.backoff ({u.backoff:g})"),
        ("upstream.edns_buffer_size", 512 <= u.edns_buffer_size <= 4096, "must be 512 to 4096"),
        ("upstream.probe_interval", u.probe_interval > 0, "must be greater than 0"),
        ("upstream.probe_interval_max", u.probe_interval_max >= u.probe_interval,
         f"must be at least upstream.probe_interval ({u.probe_interval:g})"),
        ("cache.max_entries", cache.max_entries >= 1, "must be at least 1"),
        ("cache.max_entries", cache.max_entries <= MAX_CACHE_ENTRIES, f"must be at most {MAX_CACHE_ENTRIES}"),
        ("stale.client_timeout", c.stale.client_timeout <= u.total_timeout,
         f"must not exceed upstream.total_timeout ({u.total_timeout:g}): the client would get SERVFAIL "
         "before any stale answer"),
        ("cache.min_ttl", cache.min_ttl <= cache.max_ttl,
         f"must not exceed cache.max_ttl ({cache.max_ttl})"),
        ("cache.servfail_ttl", cache.servfail_ttl <= 300, "must be at most 300 (RFC 9520 §3.2)"),
        ("stale.answer_ttl", c.stale.answer_ttl >= 1, "must be at least 1"),
        ("cache.persist.interval", cache.persist.interval > 0, "must be greater than 0"),
        ("cache.persist.engine", cache.persist.engine in PERSIST_ENGINES, f"must be one of: {', '.join(PERSIST_ENGINES)}"),
        ("cache.persist.map_size", cache.persist.map_size >= 1 << 20, "must be at least 1MiB"),
        ("cache.persist.max_bytes", 0 < cache.persist.max_bytes <= cache.persist.map_size * 0.8,
         f"must be above 0 and at most 80% of cache.persist.map_size ({cache.persist.map_size}): "
         "LMDB writes copy pages and needs the headroom"),
        ("cache.persist.max_entries", cache.persist.max_entries >= 1, "must be at least 1"),
        ("cache.persist.write_interval", 0 < cache.persist.write_interval <= 1.0,
         "must be above 0 and at most 1s (what a crash may lose)"),
        ("cache.persist.write_queue", cache.persist.write_queue >= 1, "must be at least 1"),
        ("server.tcp_max_connections", srv.tcp_max_connections >= 1, "must be at least 1"),
        ("server.max_inflight", srv.max_inflight >= 1, "must be at least 1"),
        ("security.refused_action", c.security.refused_action in REFUSED_ACTIONS,
         f"must be one of: {', '.join(REFUSED_ACTIONS)}"),
        ("security.max_inflight_per_client", c.security.max_inflight_per_client >= 1, "must be at least 1"),
        ("security.tcp_max_connections_per_client", c.security.tcp_max_connections_per_client >= 1,
         "must be at least 1"),
        ("security.tcp_read_timeout", c.security.tcp_read_timeout > 0, "must be greater than 0"),
        ("security.rate_limit", 0 <= c.security.rate_limit <= 1_000_000, "must be 0 (off) to 1000000"),
        ("security.rate_limit_slip", 0 <= c.security.rate_limit_slip <= 10, "must be 0 to 10"),
        ("logging.level", c.logging.level in LOG_LEVELS, f"must be one of: {levels}"),
        ("logging.format", c.logging.format in LOG_FORMATS, f"must be one of: {formats}"),
        ("hosts_file.check_interval", c.hosts_file.check_interval > 0, "must be greater than 0"),
        ("metrics.max_connections", 1 <= c.metrics.max_connections <= 1024, "must be 1 to 1024"),
        ("metrics.timeout", c.metrics.timeout > 0, "must be greater than 0"),
        ("admin.max_connections", 1 <= c.admin.max_connections <= 1024, "must be 1 to 1024"),
        ("admin.timeout", c.admin.timeout > 0, "must be greater than 0"),
        ("admin.max_pins", 1 <= c.admin.max_pins <= 100_000, "must be 1 to 100000"),
    ]
    for key, ok, problem in rules:
        if not ok:
            value = c
            for name in key.split("."):
                value = getattr(value, name)
            raise ConfigError(key, f"{problem}, got {_show(value)}")
    _zone(u.probe_name, "upstream.probe_name")
    if u.tls_ca_file and not os.access(u.tls_ca_file, os.R_OK):
        raise ConfigError("upstream.tls_ca_file", f"cannot read {u.tls_ca_file!r}")
    if u.policy not in POLICIES:
        raise ConfigError("upstream.policy", f"must be one of: {', '.join(POLICIES)}, got {_show(u.policy)}")
    for i, rule in enumerate(c.stale.rules):
        if rule.max_age > c.stale.max_age:
            raise ConfigError(f"stale.rules[{i}].max_age",
                              f"must not exceed stale.max_age ({c.stale.max_age:g}), got {rule.max_age:g}")
    lkg = c.stale.last_known_good
    if lkg.mode not in LKG_MODES:
        raise ConfigError("stale.last_known_good.mode", f"must be one of: {', '.join(LKG_MODES)}, got {_show(lkg.mode)}")
    if c.metrics.enabled and c.metrics.listen in c.listen:
        raise ConfigError("metrics.listen", f"is also a DNS listen address ({c.metrics.listen})")
    _check_persist_path(cache.persist.path)
    _check_admin(c)


def _check_persist_path(path: str) -> None:
    """Absolute, and if it exists a regular file: a FIFO there would block start-up in
    open(), a device would be read as a snapshot.  A relative path would follow
    whatever directory the process was started in."""
    key = "cache.persist.path"
    if not path:
        return
    if not os.path.isabs(path):
        raise ConfigError(key, f"must be an absolute path, got {_show(path)}")
    try:
        st = os.stat(path)
    except OSError:  # missing (first start) or not visible to the checker: the load warns if unusable
        return
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(key, f"{path!r} is a directory; give the snapshot file's path, e.g. "
                          f"{os.path.join(path, 'cache.snapshot')!r}")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(key, f"{path!r} exists and is not a regular file")


def _check_admin(c: Config) -> None:
    a = c.admin
    if not a.enabled:
        return
    if a.socket not in ("", ADMIN_SOCKET_AUTO) and not os.path.isabs(a.socket):
        raise ConfigError("admin.socket", f"must be an absolute path, \"auto\" or \"\", got {_show(a.socket)}")
    if len(a.socket.encode()) > 100:  # sockaddr_un.sun_path is 108 bytes on Linux
        raise ConfigError("admin.socket", "path too long for a Unix socket (at most 100 bytes)")
    if a.listen:
        address = parse_address(a.listen, "admin.listen")
        if address in c.listen or (c.metrics.enabled and address == c.metrics.listen):
            raise ConfigError("admin.listen", f"is also a DNS or metrics listen address ({address})")
        if not ipaddress.ip_address(address.host).is_loopback and not a.token_file:
            raise ConfigError("admin.token_file", f"required when admin.listen ({address}) is not a loopback "
                              "address: without it anyone who reaches the port could flush and pin")
    if a.token_file:
        read_token(a.token_file)


def read_token(path: str) -> bytes:
    """The admin bearer token from ``path`` (surrounding whitespace stripped); ConfigError if unusable."""
    key = "admin.token_file"
    try:
        with open(path, "rb") as f:
            token = f.read(4097).strip()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path!r}: {e.strerror}") from None
    if len(token) < 16 or len(token) > 4096:
        raise ConfigError(key, f"{path!r} must hold a token of 16 to 4096 characters")
    if any(b < 0x21 or b > 0x7e for b in token):
        raise ConfigError(key, f"{path!r}: the token must be printable ASCII without spaces")
    return token


def _is_self(upstream: UpstreamAddress, listen: tuple[Address, ...]) -> bool:
    """Would forwarding to ``upstream`` reach this very process (a query loop)?

    Only what the addresses alone reveal: an exact match, or a loopback or
    wildcard upstream on the port of a wildcard listener.
    """
    ip = ipaddress.ip_address(upstream.host)
    for address in listen:
        if address.port == upstream.port and (
            address.host == upstream.host
            or (ipaddress.ip_address(address.host).is_unspecified
                and (ip.is_loopback or ip.is_unspecified))
        ):
            return True
    return False


def _choose_upstreams(explicit: list[UpstreamAddress], listen: tuple[Address, ...], path: str):
    """The configured upstreams, else resolv.conf's nameservers; never ourselves."""
    found = explicit or [UpstreamAddress(ip) for ip in read_resolv_conf(path)]
    kept = tuple(u for u in found if not _is_self(u, listen))
    if not kept and explicit:
        raise ConfigError("upstreams[0]",
                          f"points at this forwarder's own listen address ({explicit[0].label})")
    if not kept:
        raise ConfigError("upstreams", f"no usable upstream: none configured and {path} lists "
                          "none (besides this forwarder itself)")
    return kept


def _workers(value: object) -> int:
    """``workers``: a positive integer, or "auto" (WORKERS_AUTO: one per usable core)."""
    if value == "auto":
        return WORKERS_AUTO
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 256
    return _expect(ok, value, "workers", 'an integer from 1 to 256, or "auto"')


def parse_config(data: object, resolv_conf: str | None = None) -> Config:
    """Build a Config from ``yaml.safe_load`` output (None or {} means all defaults).

    ``resolv_conf`` (the --resolv-conf flag) overrides the ``resolv_conf`` key; the
    file is read only when no upstreams are configured.
    """
    top = _mapping(data, "", [f.name for f in fields(Config)])
    if isinstance(top.get("metrics"), dict) and "allow_remote_admin" in top["metrics"]:
        raise ConfigError("metrics.allow_remote_admin", "removed: the admin API has its own listener now "
                          "(admin.socket, or admin.listen with admin.token_file for remote use)")
    default = Config()
    listen = default.listen
    if "listen" in top:
        listen = tuple(parse_address(text, key) for key, text in _strings(top["listen"], "listen"))
        if not listen:
            raise ConfigError("listen", "must list at least one address")
        _unique(list(listen), "listen")
    upstreams = _strings(top.get("upstreams"), "upstreams")
    explicit = [parse_upstream(text, key) for key, text in upstreams]
    _unique([u.label for u in explicit], "upstreams")
    path = _str(top.get("resolv_conf", default.resolv_conf), "resolv_conf")
    sections = {name: _section(cls, top.get(name), name) for name, cls in _SECTIONS.items()}
    workers = _workers(top.get("workers", default.workers))
    config = Config(listen=listen, resolv_conf=resolv_conf or path, workers=workers, **sections,
                    **_parse_local(top))
    _check_ranges(config)
    upstreams = _choose_upstreams(explicit, listen, config.resolv_conf)
    _check_forward(config.forward, upstreams, listen)
    return replace(config, upstreams=upstreams)


def _from_text(parse, text: object, key: str):
    """``parse(text)``, its ValueError turned into a ConfigError naming ``key``."""
    try:
        return parse(text)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


def _parse_local(top: dict) -> dict:
    """``forward``, ``local_records`` and ``block_zones`` (lists; see config/resolver.yaml)."""
    forward = []
    raw = top.get("forward") or []
    _expect(isinstance(raw, list), raw, "forward", "a list of {zone, upstreams} mappings")
    for i, item in enumerate(raw):
        key = f"forward[{i}]"
        item = _mapping(item, key, ["zone", "upstreams"])
        if "zone" not in item or "upstreams" not in item:
            raise ConfigError(key, "needs both 'zone' and 'upstreams'")
        zone = _from_text(records.parse_zone, item["zone"], f"{key}.zone")
        ups = tuple(parse_upstream(t, k) for k, t in _strings(item["upstreams"], f"{key}.upstreams"))
        if not ups:
            raise ConfigError(f"{key}.upstreams", "must list at least one upstream")
        _unique([u.label for u in ups], f"{key}.upstreams")
        forward.append(ForwardZone(zone, ups))
    _unique([_name_text(f.zone) for f in forward], "forward")
    local = tuple(_from_text(records.parse_record, t, k)
                  for k, t in _strings(top.get("local_records"), "local_records"))
    for i, rec in enumerate(local):
        if rec.rtype == records.TYPES["CNAME"] and sum(r.name == rec.name for r in local) > 1:
            # RFC 2181 §10.1: a name with a CNAME has no other data, and only one CNAME.
            raise ConfigError(f"local_records[{i}]", f"{_name_text(rec.name)} has a CNAME and other "
                              "records (RFC 2181 §10.1: a CNAME stands alone)")
    blocks = [_from_text(records.parse_zone, t, k) for k, t in _strings(top.get("block_zones"), "block_zones")]
    _unique([_name_text(z) for z in blocks], "block_zones")
    return {"forward": tuple(forward), "local_records": local, "block_zones": tuple(blocks)}


def _name_text(name: bytes) -> str:
    """"corp.example." for messages (names are kept in wire form)."""
    return records.wire.name_to_text(name)


def _check_forward(forward: tuple[ForwardZone, ...], default: tuple[UpstreamAddress, ...],
                   listen: tuple[Address, ...]) -> None:
    """Each upstream belongs to one group: zones listing the same upstreams in the same
    order share a group; any other overlap is refused, because health and metrics are
    kept per upstream (its label) and would mix two groups' failures."""
    groups = {default: "upstreams"}
    owner = {u.label: "upstreams" for u in default}
    for i, f in enumerate(forward):
        key = f"forward[{i}].upstreams"
        if f.upstreams in groups:
            continue
        groups[f.upstreams] = key
        for j, u in enumerate(f.upstreams):
            if _is_self(u, listen):
                raise ConfigError(f"{key}[{j}]", f"points at this forwarder's own listen address ({u.label})")
            if u.label in owner:
                raise ConfigError(f"{key}[{j}]", f"{u.label} is also in {owner[u.label]}, a different upstream "
                                  "group; an upstream may be in one group only (zones may share a group "
                                  "by listing the same upstreams in the same order)")
            owner[u.label] = key


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load``, except that a key repeated within one mapping is an error:
    plain YAML lets the last one win silently, hiding an edit made in the wrong place."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value != "<<":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def load_config(path: str | None, resolv_conf: str | None = None) -> Config:
    """Read and parse a YAML file; ``path`` None means the built-in defaults.

    File and syntax problems become a one-line ConfigError keyed by the file name.
    """
    if path is None:
        return parse_config(None, resolv_conf)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, " ".join(f"invalid YAML{where}: {problem}".split())) from None
    return parse_config(data, resolv_conf)
