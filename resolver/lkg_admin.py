"""Admin endpoints to pin and unpin a name's last-known-good answer during an incident.

    POST /lkg/pin?name=dynamodb.us-east-1.amazonaws.com&type=A
    POST /lkg/unpin?name=dynamodb.us-east-1.amazonaws.com&type=A
    GET  /lkg/pins

While a name is pinned, an empty answer (NXDOMAIN/NODATA) never replaces its cached
positive records, whatever ``stale.last_known_good`` says (zones, max_age, mode),
and the entry is kept past its stale window; the pin lasts until unpinned or the
process restarts.  This lets an operator who *knows* an empty answer is wrong hold
the line without a config change.  It is served on the metrics listener, which is
loopback by default: anyone who can reach it can change answers.

A separate handler so that ``admin.py`` only needs one hook (``handlers``).
"""

from __future__ import annotations

from urllib.parse import parse_qs

from dnslib import QTYPE

from . import wire

_MAX_QUERY = 1024


def _question(params: dict) -> bytes:
    """The upstream question (lower-cased name + type + class IN) from name= and type=."""
    names, types = params.get("name", []), params.get("type", ["A"])
    if len(names) != 1 or len(types) != 1:
        raise ValueError("give exactly one name= (and at most one type=)")
    name, qtype = names[0].strip(), types[0].strip().upper()
    if not name or not name.isascii() or (name != "." and "" in name.removesuffix(".").split(".")):
        raise ValueError("name must be a non-empty ASCII domain name without empty labels")
    try:
        encoded = wire.name_to_wire(name.lower())
    except (ValueError, UnicodeError) as e:
        raise ValueError(f"bad name: {e}") from None
    number = int(qtype) if qtype.isdigit() and len(qtype) <= 5 else QTYPE.reverse.get(qtype)
    if not isinstance(number, int) or not 0 < number < 65536:
        raise ValueError(f"unknown type {qtype[:20]!r} (a name such as AAAA, or a number)")
    return encoded + number.to_bytes(2, "big") + b"\x00\x01"


class PinHandler:
    """Routes /lkg/*; ``pipeline`` is a getter (a reload may replace objects)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __call__(self, method: str, target: str) -> tuple[int, str, bytes] | None:
        path, _, query = target.partition("?")
        if path not in ("/lkg/pin", "/lkg/unpin", "/lkg/pins"):
            return None
        pipe = self.pipeline()
        if path == "/lkg/pins":
            if method not in ("GET", "HEAD"):
                return 405, "text/plain", b"method not allowed\n"
            lines = sorted(f"{wire.name_to_text(q[:-4])} {QTYPE.get(int.from_bytes(q[-4:-2], 'big'))}"
                           for q in pipe.lkg_pins)
            return 200, "text/plain", "".join(line + "\n" for line in lines).encode()
        if method != "POST":
            return 405, "text/plain", b"method not allowed (use POST)\n"
        if len(query) > _MAX_QUERY:
            return 400, "text/plain", b"query string too long\n"
        try:
            question = _question(parse_qs(query, keep_blank_values=True, max_num_fields=8))
        except ValueError as e:
            return 400, "text/plain", f"{e}\n".encode()
        if path == "/lkg/pin":
            held = pipe.pin(question)
            note = "records held" if held else "no positive records cached now; pinned for when they are"
            return 200, "text/plain", f"pinned ({note})\n".encode()
        was = pipe.unpin(question)
        return 200, "text/plain", b"unpinned\n" if was else b"was not pinned\n"
