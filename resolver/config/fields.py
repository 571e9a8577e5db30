"""Value parsers: one YAML value in, one typed value out, or a one-line ConfigError.

Every parser has the signature ``parse(value, key)``, where ``key`` is the full key
path (``cache.max_ttl``, ``upstreams[1]``) so the error names the place to fix.  The
schema (schema.py) names one of these on each field; nothing here knows which field
it is parsing, and nothing anywhere picks a parser by a field's name.

The error wordings are part of the interface: operators grep logs for them and the
unit tests assert them byte for byte.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from resolver.errors import ConfigError
from resolver.wire import records
from resolver.wire.names import name_to_text, parse_name

TRANSPORTS = ("udp", "tcp", "tls", "https")
DOH_PATH = "/dns-query"  # RFC 8484 §3's example path, the one public providers serve
WORKERS_AUTO = 0  # `workers: auto`, resolved to the number of usable cores by the supervisor

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*(ms|s|m|h|d)?", re.ASCII)
_BRACKETED = re.compile(r"\[([^\]]*)\](?::(.*))?")


# -- the values some parsers produce ---------------------------------------------------


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
    truncated), ``"tcp"`` (TCP only, for paths that drop large UDP answers),
    ``"tls"`` (DNS over TLS, RFC 7858) or ``"https"`` (DNS over HTTPS, RFC 8484).
    """

    host: str
    port: int = 53
    transport: str = "udp"
    server_name: str = ""  # tls:// and https:// only: the name its certificate must carry ("" = the IP)
    path: str = ""  # https:// only: the HTTP path queries are POSTed to

    @property
    def label(self) -> str:
        """Unique, stable text such as ``udp://192.0.2.53:53``; used as a metric label."""
        return f"{self.transport}://{Address(self.host, self.port)}"


# -- shapes -------------------------------------------------------------------------------


def show(value: object) -> str:
    """``value`` as quoted in an error message, cut short so the message stays one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def expect(ok: object, value: object, key: str, what: str):
    """``value`` if ``ok``, else the standard "expected <what>, got <value>" error."""
    if not ok:
        raise ConfigError(key, f"expected {what}, got {show(value)}")
    return value


def mapping(data: object, key: str, names: list[str], removed: dict[str, str] | None = None) -> dict:
    """``data`` as a dict (an empty YAML section is None), refusing unknown keys.

    A key in ``removed`` gets its own message: an operator upgrading with an old file
    learns what replaced the key instead of reading a list of the current ones.
    """
    if data is None:
        return {}
    expect(isinstance(data, dict), data, key, "a mapping of keys")
    for name in data:
        if removed and name in removed:
            raise ConfigError(f"{key}.{name}" if key else str(name), removed[name])
    for name in data:
        if name not in names:
            path = f"{key}.{name}" if key else str(name)
            raise ConfigError(path, f"unknown key (expected one of: {', '.join(names)})")
    return data


def strings(value: object, key: str) -> list[tuple[str, object]]:
    """A list (or one string) as (key path, element) pairs, the paths like ``upstreams[1]``."""
    if value is None:
        value = []
    elif isinstance(value, str):
        value = [value]
    expect(isinstance(value, list), value, key, "a list of strings")
    return [(f"{key}[{i}]", item) for i, item in enumerate(value)]


def items(value: object, key: str) -> list[tuple[str, object]]:
    """A YAML list as (key path, element) pairs; None is empty."""
    value = [] if value is None else value
    expect(isinstance(value, list), value, key, "a list")
    return [(f"{key}[{i}]", item) for i, item in enumerate(value)]


def unique(values: list, key: str) -> None:
    """Refuse a repeated entry, naming both places: a duplicate is an edit in the wrong place."""
    for i, item in enumerate(values):
        if item in values[:i]:
            raise ConfigError(f"{key}[{i}]", f"duplicate of {key}[{values.index(item)}] ({item})")


def from_text(parse: Callable[[object], object], text: object, key: str):
    """``parse(text)``, its ValueError turned into a ConfigError naming ``key``."""
    try:
        return parse(text)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


# -- scalars ------------------------------------------------------------------------------


def boolean(value: object, key: str) -> bool:
    return expect(isinstance(value, bool), value, key, "true or false")


def integer(value: object, key: str) -> int:
    """A count.  YAML's true/false are not integers here, although Python's bool is one."""
    return expect(isinstance(value, int) and not isinstance(value, bool), value, key, "an integer")


def text(value: object, key: str) -> str:
    """A non-empty string."""
    return expect(isinstance(value, str) and value, value, key, "a non-empty string")


def text_or_off(value: object, key: str) -> str:
    """A non-empty string, or "" for the default "off" (a path, an address)."""
    return "" if value == "" else text(value, key)


def ca_file(value: object, key: str) -> str:
    """upstream.tls_ca_file: any string; "" means the system trust store."""
    return expect(isinstance(value, str), value, key, "a file path (or \"\" for the system store)")


def socket_path(value: object, key: str) -> str:
    """admin.socket: a path, "auto", or "" (no socket: unlike other paths, "" is not the default)."""
    return expect(isinstance(value, str), value, key, 'a socket path, "auto" or "" (none)')


def choice(*allowed: str) -> Callable[[object, str], str]:
    """A parser for a non-empty string that must be one of ``allowed``."""

    def parse(value: object, key: str) -> str:
        word = text(value, key)
        if word not in allowed:
            raise ConfigError(key, f"must be one of: {', '.join(allowed)}, got {show(word)}")
        return word

    return parse


_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|TiB)?")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def size(value: object, key: str) -> int:
    """Bytes from an integer or a string such as "512MiB", "1GiB" (binary units, as LMDB sizes its map)."""
    found = None
    if isinstance(value, int) and not isinstance(value, bool):
        found = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        found = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    expect(found is not None and 0 <= found < 1 << 50, value, key, "a size in bytes (or e.g. 512MiB, 1GiB)")
    return found


def duration(value: object, key: str) -> float:
    """Seconds from a number (seconds) or a string: "500ms", "30s", "5m", "2h", "1d", "30"."""
    seconds = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) if abs(value) < 1e300 else math.inf  # inf, nan, 10**400
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    expect(seconds is not None, value, key, "a duration (seconds, or e.g. 500ms, 30s, 5m, 2h, 1d)")
    if seconds < 0 or math.isinf(seconds):
        what = "finite" if seconds > 0 else "non-negative"
        raise ConfigError(key, f"must be {what}, got {show(value)}")
    return seconds


parse_duration = duration  # the name the rest of the package and its tests know


def ttl(value: object, key: str) -> int:
    """A TTL: any duration that is a whole number of seconds (DNS TTLs are integers, RFC 2181 §8)."""
    seconds = duration(value, key)
    expect(seconds.is_integer(), value, key, "a whole number of seconds")
    return int(seconds)


def hedge_delay(value: object, key: str) -> float:
    """upstream.hedge_after: a duration, "auto" (-1: from measured latency) or "off" (0)."""
    if value in ("auto", "off"):
        return -1.0 if value == "auto" else 0.0
    return duration(value, key)


def fraction(value: object, key: str) -> float:
    """A share of a TTL, 0 up to but not including 1 (cache.prefetch: 1 would refresh on every hit)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1
    return float(expect(ok, value, key, "a fraction from 0 to below 1 (0.1 = last 10%)"))


def ratio(value: object, key: str) -> float:
    """A probability, 0 to 1 inclusive (logging.query_sample)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    return float(expect(ok, value, key, "a number from 0 to 1"))


def workers(value: object, key: str) -> int:
    """``workers``: a positive integer, or "auto" (WORKERS_AUTO: one per usable core)."""
    if value == "auto":
        return WORKERS_AUTO
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 256
    return expect(ok, value, key, 'an integer from 1 to 256, or "auto"')


# -- names --------------------------------------------------------------------------------


def zone(value: object, key: str) -> str:
    """A domain name in presentation form, lower-cased, without the trailing dot ("" = root)."""
    name = text(value, key).strip().lower().rstrip(".")
    try:
        parse_name(name + ".", "domain name")  # the one name validator; "." is the root
    except ValueError:
        raise ConfigError(key, f"expected a domain name such as example.com, got {show(value)}") from None
    return name


def zones(value: object, key: str) -> tuple[str, ...]:
    """A list of domain names (or one), each as ``zone`` gives it."""
    return tuple(zone(item, path) for path, item in strings(value, key))


def name_pattern(value: object, key: str) -> str:
    """stale.rules[].match: "*.example.com" (any name below) or "www.example.com" (that name)."""
    if value == "":
        raise ConfigError(key, "is required (e.g. \"*.elb.amazonaws.com\")")
    pattern = text(value, key).strip().lower()
    zone(pattern[2:] if pattern.startswith("*.") else pattern, key)
    return pattern.rstrip(".")


def _name_text(name: bytes) -> str:
    """"corp.example." for messages (names are kept in wire form)."""
    return name_to_text(name)


def wire_zone(value: object, key: str) -> bytes:
    """A zone in wire form, lower-case (records.parse_zone), for matching against queries."""
    return from_text(records.parse_zone, value, key)


def wire_zones(value: object, key: str) -> tuple[bytes, ...]:
    """A list of distinct zones in wire form (block_zones)."""
    found = [wire_zone(item, path) for path, item in strings(value, key)]
    unique([_name_text(z) for z in found], key)
    return tuple(found)


def local_records(value: object, key: str) -> tuple[records.Record, ...]:
    """Records in zone-file form ("host.corp. 300 A 10.0.0.1"), answered locally."""
    found = tuple(from_text(records.parse_record, item, path) for path, item in strings(value, key))
    for i, rec in enumerate(found):
        if rec.rtype == records.TYPES["CNAME"] and sum(r.name == rec.name for r in found) > 1:
            # RFC 2181 §10.1: a name with a CNAME has no other data, and only one CNAME.
            raise ConfigError(f"{key}[{i}]", f"{_name_text(rec.name)} has a CNAME and other "
                              "records (RFC 2181 §10.1: a CNAME stands alone)")
    return found


# -- addresses ----------------------------------------------------------------------------


def _ip(host: str, key: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(key, f"expected an IP address (not a hostname), got {host!r}") from None


def parse_address(value: object, key: str, default_port: int | None = None) -> Address:
    """"127.0.0.1:5353" or "[::1]:5353"; the port may be omitted if ``default_port`` is given.

    A bare IPv6 address is accepted only without a port ("2001:db8::1"): in
    "::1:53" the port cannot be told apart from the last group of the address.
    """
    expect(isinstance(value, str), value, key, "an address such as 127.0.0.1:5353")
    given = value.strip()
    if match := _BRACKETED.fullmatch(given):
        host, port_text = match.group(1), match.group(2)
        if _ip(host, key).version != 6:
            raise ConfigError(key, f"brackets are only for IPv6 addresses, got {given!r}")
    elif given.count(":") > 1:
        if default_port is None:
            raise ConfigError(key, f"IPv6 needs brackets and a port, e.g. [::1]:5353, got {given!r}")
        host, port_text = given, None
    elif ":" in given:
        host, port_text = given.split(":")
    else:
        host, port_text = given, None
    ip = _ip(host, key)
    if port_text is None:
        if default_port is None:
            raise ConfigError(key, f"missing port (as in 127.0.0.1:53 or [::1]:53), got {given!r}")
        return Address(str(ip), default_port)
    if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise ConfigError(key, f"port must be a number from 1 to 65535, got {port_text!r}")
    return Address(str(ip), int(port_text))


def address(value: object, key: str) -> Address:
    """An address this process binds, with its port ("127.0.0.1:9153")."""
    return parse_address(value, key)


def listen_addresses(value: object, key: str) -> tuple[Address, ...]:
    """At least one distinct address to bind (``listen``)."""
    found = tuple(parse_address(item, path) for path, item in strings(value, key))
    if not found:
        raise ConfigError(key, "must list at least one address")
    unique(list(found), key)
    return found


def parse_networks(value: object, key: str, allow_empty: bool = False) -> tuple[str, ...]:
    """A list of CIDR networks ("10.0.0.0/8", "2001:db8::/32", or a bare address), normalised.

    Host bits must be zero ("10.1.2.3/8" is refused): such an entry is usually a typo
    for a narrower network than the one it would silently allow.
    """
    networks = []
    for path, item in strings(value, key):
        expect(isinstance(item, str), item, path, "a network such as 10.0.0.0/8")
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=True)))
        except ValueError as exc:
            raise ConfigError(path, f"expected a network such as 10.0.0.0/8: {exc}") from None
    if not networks and not allow_empty:
        raise ConfigError(key, "must list at least one network (0.0.0.0/0 and ::/0 allow everyone)")
    return tuple(networks)


_HOST_PORT = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]+)):(\d{1,5})")


def host_ports(value: object, key: str) -> tuple[tuple[str, int], ...]:
    """Distinct "host:port" services we connect to (fleet.sentinels): a name or an IP, IPv6 in
    brackets.  A name is fine here, unlike a listen address: in Kubernetes a Sentinel is a
    Service name, resolved by the client at connect time."""
    found = []
    for path, item in strings(value, key):
        expect(isinstance(item, str), item, path, "host:port, e.g. 10.0.0.5:26379")
        match = _HOST_PORT.fullmatch(item.strip())
        if not match or not 1 <= int(match.group(3)) <= 65535:
            raise ConfigError(path, f"expected host:port, e.g. 10.0.0.5:26379 or [::1]:26379, got {show(item)}")
        host = match.group(1) or match.group(2)
        if match.group(1) and _ip(host, path).version != 6:
            raise ConfigError(path, f"brackets are only for IPv6 addresses, got {show(item)}")
        found.append((host, int(match.group(3))))
    unique(found, key)
    return tuple(found)


def networks(value: object, key: str) -> tuple[str, ...]:
    """At least one network: an empty allow-list would refuse everyone, surely by mistake."""
    return parse_networks(value, key)


def networks_or_none(value: object, key: str) -> tuple[str, ...]:
    """Networks, possibly none (an exemption list)."""
    return parse_networks(value, key, allow_empty=True)


def parse_upstream(value: object, key: str) -> UpstreamAddress:
    """"192.0.2.53", "192.0.2.53:53", "[2001:db8::1]:53", each optionally with udp:// or tcp://;
    "tls://ADDR[:PORT][#NAME]"; "https://ADDR[:PORT][/PATH][#NAME]".

    The address is always an IP literal: a hostname would have to be resolved
    through ourselves (no bootstrap lookup).  ``#NAME`` is the name the server's
    certificate must carry; without it the certificate must carry the IP address
    (an IP SAN, as 1.1.1.1's and 8.8.8.8's do).
    """
    transport = "udp"
    server_name = ""
    path = ""
    if isinstance(value, str) and "://" in value:
        scheme, _, value = value.strip().partition("://")
        transport = scheme.lower()
        if transport not in TRANSPORTS:
            raise ConfigError(key, f"unsupported scheme {scheme!r} (expected udp://, tcp://, tls:// or https://)")
    if isinstance(value, str) and "#" in value:
        # DNS over TLS (RFC 7858) and HTTPS (RFC 8484): tls://192.0.2.53:853#dns.example verifies that name.
        value, _, server_name = value.partition("#")
        if transport not in ("tls", "https"):
            raise ConfigError(key, "a #server-name is only for tls:// and https:// upstreams")
        server_name = zone(server_name, key)
        if not server_name:
            raise ConfigError(key, "empty #server-name")
    if transport == "https":
        value, slash, path = value.partition("/")
        path = slash + path if slash else DOH_PATH
        # RFC 3986 path characters only: it goes into the :path pseudo-header as is.
        if not re.fullmatch(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*", path):
            raise ConfigError(key, f"expected an HTTP path such as /dns-query after the address, got {path!r}")
    elif isinstance(value, str) and "/" in value:
        raise ConfigError(key, "a /path is only for https:// upstreams")
    default_port = {"tls": 853, "https": 443}.get(transport, 53)
    found = parse_address(value, key, default_port=default_port)
    return UpstreamAddress(found.host, found.port, transport, server_name, path)


def upstreams(value: object, key: str) -> tuple[UpstreamAddress, ...]:
    """Distinct upstreams; none is allowed (``upstreams``: then resolv.conf's are used)."""
    found = [parse_upstream(item, path) for path, item in strings(value, key)]
    unique([u.label for u in found], key)
    return tuple(found)


def upstream_group(value: object, key: str) -> tuple[UpstreamAddress, ...]:
    """At least one distinct upstream (a forward zone's group)."""
    found = tuple(parse_upstream(item, path) for path, item in strings(value, key))
    if not found:
        raise ConfigError(key, "must list at least one upstream")
    unique([u.label for u in found], key)
    return found


def auto_on_off(value: object, key: str) -> str:
    """auto | on | off.  YAML 1.1 reads a bare ``on``/``off`` as a boolean: taken as the word."""
    if value is True or value is False:
        return "on" if value else "off"
    return _AUTO_ON_OFF(value, key)


_AUTO_ON_OFF = choice("auto", "on", "off")
