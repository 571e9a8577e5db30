"""Local DNS data as values: names, zones and static records, parsed and encoded.

Sans-IO, shared by ``config`` (``local_records``, ``block_zones``, ``forward``
zones), ``local/hosts.py`` (the hosts file) and ``local/answers.py`` (answering).  Every parser
raises ``ValueError`` with a message meant for a person; the caller adds where
the text came from (a config key path, or file:line).

Names are kept in wire form, lower-cased: that is what the pipeline has in hand
(``Query.qname``) so lookups need no conversion per query.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from .constants import TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_NS, TYPE_PTR, TYPE_SOA, TYPE_TXT  # noqa: F401
from .names import name_to_text, name_to_wire, parse_name

# Record types a local record may have (RFC 1035 §3.3, RFC 3596 for AAAA).
TYPES = {"A": TYPE_A, "CNAME": TYPE_CNAME, "PTR": TYPE_PTR, "TXT": TYPE_TXT, "AAAA": TYPE_AAAA}
_TXT_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"\s*')
_MAX_TTL = 2**31 - 1  # RFC 2181 §8
_RECORD = re.compile(r"(\S+)\s+(\S+)\s+(?:[iI][nN]\s+)?(\S+)\s+(.+)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Record:
    """One static record: owner (wire, lower-case), type code, TTL, rdata (wire)."""

    name: bytes
    rtype: int
    ttl: int
    rdata: bytes

    def __str__(self) -> str:
        type_name = next(k for k, v in TYPES.items() if v == self.rtype)
        return f"{name_to_text(self.name)} {self.ttl} IN {type_name}"


def index(records) -> dict[bytes, dict[int, list[Record]]]:
    """name → type → records, in the order given: the form local answers look up."""
    out: dict[bytes, dict[int, list[Record]]] = {}
    for r in records:
        out.setdefault(r.name, {}).setdefault(r.rtype, []).append(r)
    return out


def parse_zone(text: str) -> bytes:
    """A zone for ``forward`` or ``block_zones``; the root is refused (it would be every name)."""
    zone = parse_name(text, "zone")
    if zone == b"\x00":
        raise ValueError("the root zone '.' covers every name; use the top-level upstreams instead")
    return zone


def reverse_name(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """The in-addr.arpa / ip6.arpa name of an address (RFC 1035 §3.5, RFC 3596 §2.5)."""
    return name_to_wire(ip.reverse_pointer)


def _txt_rdata(value: str) -> bytes:
    """TXT rdata from one or more "quoted" strings, or from bare text (one string)."""
    value = value.strip()
    if value.startswith('"'):
        strings, pos = [], 0
        while pos < len(value):
            match = _TXT_STRING.match(value, pos)
            if not match:
                raise ValueError(f"TXT data must be quoted strings, got {value!r}")
            strings.append(re.sub(r"\\(.)", r"\1", match.group(1)))
            pos = match.end()
    else:
        strings = [value]
    out = b""
    for s in strings:
        raw = s.encode("utf-8")
        if len(raw) > 255:
            raise ValueError("a TXT string is longer than 255 octets; split it into several quoted strings")
        out += bytes((len(raw),)) + raw
    return out


def rdata_for(rtype: int, value: str) -> bytes:
    """Wire rdata for one of TYPES from its presentation text."""
    if rtype in (TYPE_A, TYPE_AAAA):
        family = "IPv4" if rtype == TYPE_A else "IPv6"
        try:
            ip = ipaddress.ip_address(value.strip())
        except ValueError:
            raise ValueError(f"expected an {family} address, got {value.strip()!r}") from None
        if (ip.version == 4) != (rtype == TYPE_A):
            raise ValueError(f"expected an {family} address, got {value.strip()!r}")
        return ip.packed
    if rtype in (TYPE_CNAME, TYPE_PTR):
        return parse_name(value, "target name")
    return _txt_rdata(value)


def parse_record(text: object) -> Record:
    """"<name> [<ttl>] [IN] <type> <value>", as in a zone file (RFC 1035 §5.1).

    The TTL is required: local data has no upstream to take one from, and an
    implicit default would decide how long clients keep it.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a record such as 'printer.lan. 300 IN A 192.0.2.10', got {text!r}")
    match = _RECORD.fullmatch(text.strip())
    if not match:
        raise ValueError(f"expected '<name> <ttl> [IN] <type> <value>', got {text!r}")
    owner, ttl_text, type_text, value = match.groups()
    name = parse_name(owner)
    if not (ttl_text.isascii() and ttl_text.isdigit()):
        raise ValueError(f"expected a TTL (seconds) after the name, got {ttl_text!r}")
    ttl = int(ttl_text)
    if ttl > _MAX_TTL:
        raise ValueError(f"TTL {ttl} is over 2147483647 (RFC 2181 §8)")
    rtype = TYPES.get(type_text.upper())
    if rtype is None:
        raise ValueError(f"unsupported type {type_text!r} (expected one of: {', '.join(TYPES)})")
    return Record(name, rtype, ttl, rdata_for(rtype, value))
