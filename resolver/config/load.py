"""Loading: strict YAML from a file, resolv.conf for upstreams, then the schema and the checks.

Parsing is strict on purpose: an unknown key, a repeated key, a wrong type or an
out-of-range value stops the process at start-up with the full key path
(``cache.max_entrys: unknown key ...``), because a typo that silently falls back to
a default is otherwise discovered during the outage it was meant to soften.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace

import yaml

from resolver.errors import ConfigError

from . import validate
from .fields import Address, UpstreamAddress
from .schema import Config, read_config


def parse_config(data: object, resolv_conf: str | None = None) -> Config:
    """Build a Config from ``yaml.safe_load`` output (None or {} means all defaults).

    ``resolv_conf`` (the --resolv-conf flag) overrides the ``resolv_conf`` key; the
    file is read only when no upstreams are configured.
    """
    config = read_config(data)
    if resolv_conf:
        config = replace(config, resolv_conf=resolv_conf)
    validate.check(config)
    upstreams = _choose_upstreams(config.upstreams, config.listen, config.resolv_conf)
    validate.check_forward(config.forward, upstreams, config.listen)
    return replace(config, upstreams=upstreams)


def _choose_upstreams(explicit: tuple[UpstreamAddress, ...], listen: tuple[Address, ...], path: str):
    """The configured upstreams, else resolv.conf's nameservers; never ourselves."""
    found = explicit or [UpstreamAddress(ip) for ip in read_resolv_conf(path)]
    kept = tuple(u for u in found if not validate.is_self(u, listen))
    if not kept and explicit:
        raise ConfigError("upstreams[0]",
                          f"points at this forwarder's own listen address ({explicit[0].label})")
    if not kept:
        raise ConfigError("upstreams", f"no usable upstream: none configured and {path} lists "
                          "none (besides this forwarder itself)")
    return kept


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
