"""Admin endpoints to pin and unpin a name's last-known-good answer during an incident.

    POST /lkg/pin?name=dynamodb.us-east-1.amazonaws.com&type=A
    POST /lkg/unpin?name=dynamodb.us-east-1.amazonaws.com&type=A
    GET  /lkg/pins

While a name is pinned, an empty answer (NXDOMAIN/NODATA) never replaces its cached
positive records, whatever ``stale.last_known_good`` says (zones, max_age, mode),
and the entry is kept past its stale window; the pin lasts until unpinned or the
process restarts.  This lets an operator who *knows* an empty answer is wrong hold
the line without a config change.  At most ``admin.max_pins`` pins are held.  Served on the admin listener only (admin.py's
gate): anyone who can pin can change answers.  ``resolver ctl pin|unpin|pins``.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from .. import wire
from .admin import TEXT, AdminStats, Reply, Request, Route, audit, text

log = logging.getLogger("resolver.admin")

_MAX_QUERY = 1024


def _question(params: dict) -> bytes:
    """The upstream question (lower-cased name + type + class IN) from name= and type=."""
    names, types = params.get("name", []), params.get("type", ["A"])
    if len(names) != 1 or len(types) != 1:
        raise ValueError("give exactly one name= (and at most one type=)")
    name, qtype = names[0].strip(), types[0].strip().upper()
    if not name:
        raise ValueError("name must be a non-empty ASCII domain name without empty labels")
    try:
        encoded = wire.parse_name(name, as_asked=True)
    except ValueError as e:
        raise ValueError(f"bad name: {e}") from None
    try:
        number = wire.qtype_from_text(qtype)
    except ValueError:
        raise ValueError(f"unknown type {qtype[:20]!r} (a name such as AAAA, or a number)") from None
    return wire.question_bytes(encoded, number)


def pin_text(question: bytes) -> str:
    """``name. TYPE`` for a pinned upstream question (name already escaped by wire.name_to_text)."""
    qtype = int.from_bytes(question[-4:-2], "big")
    return f"{wire.name_to_text(question[:-4])} {wire.qtype_to_text(qtype)}"


LISTING_CHUNK = 256  # pins formatted per written chunk


class PinRoutes:
    """``/lkg/pin``, ``/lkg/unpin``, ``/lkg/pins`` for the admin router.

    ``pipeline`` is a getter (a reload may replace objects); ``max_pins`` bounds the
    set (``admin.max_pins``): each pin holds a cache entry forever and is checked on
    every insert of that question, so an unbounded set is a memory and CPU leak an
    admin client could drive.  Every pin and unpin is an audit line and a count.
    """

    def __init__(self, pipeline, stats: AdminStats, max_pins: int):
        self.pipeline = pipeline
        self.stats = stats
        self.max_pins = max_pins

    def routes(self) -> list[Route]:
        return [Route("/lkg/pin", ("POST",), self.pin), Route("/lkg/unpin", ("POST",), self.unpin),
                Route("/lkg/pins", ("GET", "HEAD"), self.pins)]

    def _parse(self, request: Request) -> bytes:
        if len(request.query) > _MAX_QUERY:
            raise ValueError("query string too long")
        return _question(parse_qs(request.query, keep_blank_values=True, max_num_fields=8))

    def pin(self, request: Request) -> Reply:
        try:
            question = self._parse(request)
        except ValueError as e:
            return text(400, str(e))
        pipe = self.pipeline()
        if question not in pipe.lkg_pins and len(pipe.lkg_pins) >= self.max_pins:
            log.warning("admin pin refused: %d pins already (admin.max_pins) (by %s)", len(pipe.lkg_pins),
                        request.who, extra={"event": "admin_pin_refused", "peer": request.who})
            return text(507, f"pin limit reached ({self.max_pins}, admin.max_pins): unpin something first")
        held = pipe.pin(question)
        audit(self.stats, request, "pin", pin_text(question))
        note = "records held" if held else "no positive records cached now; pinned for when they are"
        return text(200, f"pinned ({note})")

    def unpin(self, request: Request) -> Reply:
        try:
            question = self._parse(request)
        except ValueError as e:
            return text(400, str(e))
        was = self.pipeline().unpin(question)
        if was:
            audit(self.stats, request, "unpin", pin_text(question))
        return text(200, "unpinned" if was else "was not pinned")

    def pins(self, request: Request) -> Reply:
        """The pins as ``name. TYPE`` lines, formatted chunk by chunk while being written."""
        questions = sorted(self.pipeline().lkg_pins)  # ≤ max_pins references: cheap to copy

        def lines():
            for start in range(0, len(questions), LISTING_CHUNK):
                yield "".join(pin_text(q) + "\n" for q in questions[start:start + LISTING_CHUNK]).encode()

        return Reply(200, TEXT, lines())
