"""Configuration: a strict YAML schema turned into frozen dataclasses.

One module per job:

* ``fields``   — value parsers (duration, TTL, fraction, address, networks, zone ...),
                 each with its error wording; they know values, not field names;
* ``schema``   — the frozen dataclasses; every field declares its parser and unit on
                 itself (``setting(30.0, parse=fields.duration, unit="s")``) and every
                 default lives there, mirrored in ``config/resolver.yaml``;
* ``validate`` — checks across fields and against the file system, with key paths;
* ``load``     — strict YAML (unknown and repeated keys refused), resolv.conf, and
                 ``parse_config`` / ``load_config`` tying the three together.

This module only re-exports the public names, so ``from resolver.config import X``
is the one import the rest of the package needs.
"""

from __future__ import annotations

from resolver.errors import ConfigError  # what every parser raises; importable from here as before

from .fields import (
    TRANSPORTS,
    WORKERS_AUTO,
    Address,
    UpstreamAddress,
    parse_address,
    parse_duration,
    parse_networks,
    parse_upstream,
)
from .load import load_config, parse_config, read_resolv_conf
from .schema import (
    ADMIN_SOCKET_AUTO,
    DEFAULT_ALLOW,
    LKG_MODES,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_CACHE_ENTRIES,
    PERSIST_ENGINES,
    POLICIES,
    REFUSED_ACTIONS,
    AdminConfig,
    CacheConfig,
    Config,
    FleetConfig,
    ForwardZone,
    HostsFileConfig,
    LastKnownGoodConfig,
    LoggingConfig,
    MetricsConfig,
    PersistConfig,
    SecurityConfig,
    ServerConfig,
    StaleConfig,
    StaleRule,
    UpstreamOptions,
)
from .validate import read_fleet_secret, read_token

__all__ = [
    "ADMIN_SOCKET_AUTO", "DEFAULT_ALLOW", "LKG_MODES", "LOG_FORMATS", "LOG_LEVELS", "MAX_CACHE_ENTRIES",
    "PERSIST_ENGINES", "POLICIES", "REFUSED_ACTIONS", "TRANSPORTS", "WORKERS_AUTO",
    "Address", "AdminConfig", "CacheConfig", "Config", "ConfigError", "FleetConfig", "ForwardZone", "HostsFileConfig",
    "LastKnownGoodConfig", "LoggingConfig", "MetricsConfig", "PersistConfig", "SecurityConfig",
    "ServerConfig", "StaleConfig", "StaleRule", "UpstreamAddress", "UpstreamOptions",
    "load_config", "parse_address", "parse_config", "parse_duration", "parse_networks",
    "parse_upstream", "read_fleet_secret", "read_resolv_conf", "read_token",
]
