"""Checks that span fields or touch the file system, each error naming its key path.

The schema (schema.py) has already read every value by its own parser, so a value
here has the right type; what is left is how values relate (``total_timeout`` at
least ``attempt_timeout``), ranges, and paths that must exist or be readable.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from urllib.parse import urlsplit

from resolver.errors import ConfigError

from .fields import Address, UpstreamAddress, parse_address, show, zone
from .schema import ADMIN_SOCKET_AUTO, MAX_CACHE_ENTRIES, Config, ForwardZone


def check(c: Config) -> None:
    """Every check that needs no resolv.conf, in a fixed order (the first failure is reported)."""
    _check_ranges(c)
    u = c.upstream
    zone(u.probe_name, "upstream.probe_name")
    if u.tls_ca_file and not os.access(u.tls_ca_file, os.R_OK):
        raise ConfigError("upstream.tls_ca_file", f"cannot read {u.tls_ca_file!r}")
    for i, rule in enumerate(c.stale.rules):
        if rule.max_age > c.stale.max_age:
            raise ConfigError(f"stale.rules[{i}].max_age",
                              f"must not exceed stale.max_age ({c.stale.max_age:g}), got {rule.max_age:g}")
    if c.metrics.enabled and c.metrics.listen in c.listen:
        raise ConfigError("metrics.listen", f"is also a DNS listen address ({c.metrics.listen})")
    _check_persist_path(c.cache.persist.path)
    _check_admin(c)
    _check_fleet(c)


def _check_ranges(c: Config) -> None:
    u, cache, srv = c.upstream, c.cache, c.server
    rules = [
        ("upstream.attempt_timeout", u.attempt_timeout > 0, "must be greater than 0"),
        ("upstream.attempt_timeout_min", u.attempt_timeout_min > 0, "must be greater than 0"),
        ("upstream.attempt_timeout_max", u.attempt_timeout_max >= u.attempt_timeout_min,
         f"must be at least upstream.attempt_timeout_min ({u.attempt_timeout_min:g})"),
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
        ("security.max_inflight_per_client", c.security.max_inflight_per_client >= 1, "must be at least 1"),
        ("security.tcp_max_connections_per_client", c.security.tcp_max_connections_per_client >= 1,
         "must be at least 1"),
        ("security.tcp_read_timeout", c.security.tcp_read_timeout > 0, "must be greater than 0"),
        ("security.rate_limit", 0 <= c.security.rate_limit <= 1_000_000, "must be 0 (off) to 1000000"),
        ("security.rate_limit_slip", 0 <= c.security.rate_limit_slip <= 10, "must be 0 to 10"),
        ("hosts_file.check_interval", c.hosts_file.check_interval > 0, "must be greater than 0"),
        ("metrics.max_connections", 1 <= c.metrics.max_connections <= 1024, "must be 1 to 1024"),
        ("metrics.timeout", c.metrics.timeout > 0, "must be greater than 0"),
        ("admin.max_connections", 1 <= c.admin.max_connections <= 1024, "must be 1 to 1024"),
        ("admin.timeout", c.admin.timeout > 0, "must be greater than 0"),
        ("admin.max_pins", 1 <= c.admin.max_pins <= 100_000, "must be 1 to 100000"),
        ("fleet.read_budget", 0 < c.fleet.read_budget <= 1.0, "must be above 0 and at most 1s"),
        ("fleet.write_timeout", c.fleet.write_timeout > 0, "must be greater than 0"),
        ("fleet.write_queue", c.fleet.write_queue >= 1, "must be at least 1"),
        ("fleet.max_connections", 1 <= c.fleet.max_connections <= 1024, "must be 1 to 1024"),
        ("fleet.breaker_failures", c.fleet.breaker_failures >= 1, "must be at least 1"),
        ("fleet.breaker_reset", c.fleet.breaker_reset > 0, "must be greater than 0"),
        ("fleet.key_prefix", len(c.fleet.key_prefix) <= 64, "must be at most 64 characters"),
    ]
    for key, ok, problem in rules:
        if not ok:
            value = c
            for name in key.split("."):
                value = getattr(value, name)
            raise ConfigError(key, f"{problem}, got {show(value)}")


def _check_persist_path(path: str) -> None:
    """Absolute, and if it exists a regular file: a FIFO there would block start-up in
    open(), a device would be read as a snapshot.  A relative path would follow
    whatever directory the process was started in."""
    key = "cache.persist.path"
    if not path:
        return
    if not os.path.isabs(path):
        raise ConfigError(key, f"must be an absolute path, got {show(path)}")
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
        raise ConfigError("admin.socket", f"must be an absolute path, \"auto\" or \"\", got {show(a.socket)}")
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


FLEET_SCHEMES = ("redis://", "rediss://", "unix://")
FLEET_SECRET_MIN = 16  # bytes: an HMAC-SHA256 key shorter than this is guessable (RFC 2104 §3)


def _check_fleet(c: Config) -> None:
    f = c.fleet
    _check_fleet_mode(f)
    if not f.enabled:
        return
    if not f.secret_file:
        what = "fleet.url" if f.url else "fleet.sentinels"
        raise ConfigError("fleet.secret_file", f"required when {what} is set: every entry is authenticated")
    read_fleet_secret(f.secret_file)
    if f.tls_ca_file and not os.access(f.tls_ca_file, os.R_OK):
        raise ConfigError("fleet.tls_ca_file", f"cannot read {f.tls_ca_file!r}")


def _check_fleet_mode(f) -> None:
    """What ``fleet.url`` may be, per ``fleet.mode``; the Sentinel keys only in sentinel mode."""
    if f.mode != "sentinel":
        if f.sentinels or f.sentinel_service:
            key = "fleet.sentinels" if f.sentinels else "fleet.sentinel_service"
            raise ConfigError(key, f"only used with fleet.mode: sentinel (fleet.mode is {f.mode})")
        if not f.url:
            if f.mode == "cluster":
                raise ConfigError("fleet.url", "required with fleet.mode: cluster: a seed node, redis://host:6379")
            return
    if f.mode == "standalone":
        if not f.url.startswith(FLEET_SCHEMES):
            raise ConfigError("fleet.url",
                              f"must start with redis://, rediss:// or unix://, got {_without_password(f.url)}")
        return
    if not f.url.startswith(("redis://", "rediss://")) and (f.url or f.mode == "cluster"):
        raise ConfigError("fleet.url",
                          f"must start with redis:// or rediss:// in {f.mode} mode, got {_without_password(f.url)}")
    parts = urlsplit(f.url)
    if f.mode == "cluster":
        if not parts.hostname:
            raise ConfigError("fleet.url", f"needs a seed node's host in cluster mode, got {_without_password(f.url)}")
        if parts.path.strip("/") not in ("", "0"):
            raise ConfigError("fleet.url", f"a Redis Cluster has database 0 only, got {_without_password(f.url)}")
        return
    if not f.sentinels:
        raise ConfigError("fleet.sentinels", "required with fleet.mode: sentinel: host:26379 of each Sentinel")
    if not f.sentinel_service:
        raise ConfigError("fleet.sentinel_service", "required with fleet.mode: sentinel: the master's name")
    if parts.hostname or parts.port:
        raise ConfigError("fleet.url", "in sentinel mode the master's address comes from fleet.sentinels: give "
                          f"only password, database and TLS (rediss://:PASSWORD@/0), got {_without_password(f.url)}")


def _without_password(url: str) -> str:
    """``url`` quoted for an error message, its password (if any) masked: errors reach logs."""
    parts = urlsplit(url)
    if parts.password is not None:
        url = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()
    return show(url)


def _read_key_file(path: str, key: str, minimum: int, what: str) -> bytes:
    """A shared key from ``path``, surrounding whitespace stripped, ``minimum`` to 4096 long;
    ConfigError naming ``key`` if it cannot be read or its length is out of bounds (``what``
    ends the message "must hold ...")."""
    try:
        with open(path, "rb") as f:
            data = f.read(4097).strip()
    except OSError as e:
        raise ConfigError(key, f"cannot read {path!r}: {e.strerror}") from None
    if not minimum <= len(data) <= 4096:
        raise ConfigError(key, f"{path!r} must hold {what}")
    return data


def read_fleet_secret(path: str) -> bytes:
    """The fleet's shared HMAC key from ``path`` (surrounding whitespace stripped); ConfigError if unusable."""
    return _read_key_file(path, "fleet.secret_file", FLEET_SECRET_MIN,
                          f"a secret of {FLEET_SECRET_MIN} to 4096 bytes (e.g. `openssl rand -hex 32`)")


def read_token(path: str) -> bytes:
    """The admin bearer token from ``path`` (surrounding whitespace stripped); ConfigError if unusable."""
    key = "admin.token_file"
    token = _read_key_file(path, key, 16, "a token of 16 to 4096 characters")
    if any(b < 0x21 or b > 0x7e for b in token):
        raise ConfigError(key, f"{path!r}: the token must be printable ASCII without spaces")
    return token


def is_self(upstream: UpstreamAddress, listen: tuple[Address, ...]) -> bool:
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


def check_forward(forward: tuple[ForwardZone, ...], default: tuple[UpstreamAddress, ...],
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
            if is_self(u, listen):
                raise ConfigError(f"{key}[{j}]", f"points at this forwarder's own listen address ({u.label})")
            if u.label in owner:
                raise ConfigError(f"{key}[{j}]", f"{u.label} is also in {owner[u.label]}, a different upstream "
                                  "group; an upstream may be in one group only (zones may share a group "
                                  "by listing the same upstreams in the same order)")
            owner[u.label] = key
