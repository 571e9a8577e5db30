"""Domain names: wire ↔ presentation form, the one validator of typed names, zone matching.

Names are compared in wire form, lower-cased (RFC 4343: ASCII case-insensitive),
because that is what the pipeline has in hand (``Query.qname``, the cache key).
Zones are wire names too: every section of the config that names zones
(``forward``, ``block_zones``, ``stale.last_known_good.zones``, ``stale.rules``)
is matched by the same label-aligned walk below, whether the config holds the
zone as bytes or as text (``zone_to_wire`` converts the latter once, at start).
"""

from __future__ import annotations

import re

from ..errors import FormatError

# A label typed into config or local data: letters, digits, hyphen and underscore
# (RFC 952/1123 hostnames, plus "_" for service labels such as _dmarc), not
# starting or ending with a hyphen; anything else there is a typo.
_HOST_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", re.ASCII)
# A label as clients ask for it, for operator lookups of what is cached: also "*"
# (a literal wildcard owner) and hyphens anywhere.
_ASKED_LABEL = re.compile(r"[a-z0-9_*-]{1,63}", re.ASCII)

ROOT = b"\x00"


def name_to_text(wire_name: bytes) -> str:
    """Presentation form of an uncompressed wire name, for logs and admin output."""
    labels = []
    off = 0
    while off < len(wire_name) and wire_name[off]:
        n = wire_name[off]
        labels.append(wire_name[off + 1 : off + 1 + n].decode("ascii", "backslashreplace"))
        off += 1 + n
    return ".".join(labels) + "."


def name_to_wire(name: str) -> bytes:
    """Wire form of a presentation name (no escapes); for tests and admin queries.

    Limits of RFC 1035 §2.3.4: labels of 63 octets, names of 255.  The root is
    "." or "".
    """
    out = bytearray()
    for label in name.strip(".").split("."):
        if label:
            raw = label.encode("ascii")
            if len(raw) > 63:
                raise ValueError(f"label too long: {label!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    if len(out) > 255:
        raise ValueError("name too long")
    return bytes(out)


def parse_name(text: object, what: str = "name", *, as_asked: bool = False) -> bytes:
    """A typed name ("printer.lan", "printer.lan.", ".") in lower-case wire form, or ValueError.

    The one validator of names that people type.  By default (config, local data,
    the hosts file) wildcards, empty labels and characters outside letters, digits,
    "-" and "_" are refused: a name that can never be asked for is better reported
    than silently kept.  ``as_asked`` (operator lookups of the cache or pins) also
    takes "*" and hyphens at either end, as names clients may really ask.  The
    message names ``what`` and says what is wrong; callers add where the text came
    from (a key path, file:line, a request parameter).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected a {what}, got {text!r}")
    name = text.strip().lower()
    if name == ".":
        return ROOT
    labels = name[:-1].split(".") if name.endswith(".") else name.split(".")
    pattern = _ASKED_LABEL if as_asked else _HOST_LABEL
    for label in labels:
        if not pattern.fullmatch(label):
            allowed = "letters, digits, '-', '_' or '*'" if as_asked else \
                "letters, digits, '-' or '_' (no wildcards or empty labels)"
            raise ValueError(f"invalid {what} {text!r}: label {label!r} must be 1-63 {allowed}")
    out = b"".join(bytes((len(label),)) + label.encode("ascii") for label in labels) + ROOT
    if len(out) > 255:
        raise ValueError(f"invalid {what} {text!r}: longer than 255 octets")
    return out


def zone_to_wire(zone: str) -> bytes:
    """A zone as the config holds it in text ("example.com", "" for the root) → wire form."""
    return name_to_wire(zone.lower())


def in_zone(name: bytes, zone: bytes) -> bool:
    """Is wire name ``name`` equal to ``zone`` or below it?  Label-aligned: "xb.c" is not in "b.c".

    Both lower-case wire names; the root zone holds every name.
    """
    off, end = 0, len(name)
    while off < end:
        if name[off:] == zone:
            return True
        if not name[off]:
            return False
        off += 1 + name[off]
    return False


def zone_of(name: bytes, zones) -> bytes | None:
    """The longest of ``zones`` (a set or dict of lower-case wire names) holding ``name``, or None.

    Walks the name's suffixes from the longest (the name itself) down to the root,
    one lookup per label however many zones there are, so the first hit is the
    longest match.
    """
    off, end = 0, len(name)
    while off < end:
        if name[off:] in zones:
            return name[off:]
        if not name[off]:
            return None
        off += 1 + name[off]
    return None


def skip_name(msg: bytes, off: int) -> int:
    """Offset past a possibly-compressed name in a message; pointers are not followed,
    so no loop is possible (RFC 1035 §4.1.4)."""
    end = len(msg)
    while True:
        if off >= end:
            raise FormatError("name runs past the end of the message")
        n = msg[off]
        if n == 0:
            return off + 1
        if n & 0xC0 == 0xC0:
            if off + 2 > end:
                raise FormatError("compression pointer truncated")
            return off + 2
        if n & 0xC0:
            raise FormatError("unknown label type")
        off += 1 + n
