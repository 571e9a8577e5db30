"""Operator access to the cache: inspect one entry, flush one name or everything.

Served on the admin listener as ``GET /cache?name=…&type=…`` and ``POST /cache/flush``
(``?name=…[&type=…]``, ``?zone=…`` or nothing for everything; ``resolver ctl lookup``
and ``flush``).  The logic lives here, apart from HTTP,
so it is a pure function of (cache, now, query parameters) → (status, JSON body)
and its tests need no sockets.  Everything a request carries is untrusted: a bad
name or type is a 400 that says what was wrong, never an exception.

An entry is shown as the cache holds it: fresh or stale, seconds of TTL left (or
how long it has been expired), the failure recheck timer, the rcode and its
records as text (via dnslib, aged to ``now``).  The same question can be cached
up to four times, once per DO/CD combination (they are part of the cache key), so
the answer is a list.
"""

from __future__ import annotations

import json
from typing import Iterator

from dnslib import DNSRecord

from .. import wire
from ..cache.store import Cache, Entry
from ..stats import rcode_label

_FLAGS = {0: "", wire.KEY_CD: "cd", wire.KEY_DO: "do", wire.KEY_DO | wire.KEY_CD: "do,cd"}
_MAX_PARAMS = 8


class BadRequest(ValueError):
    """The operator's request is malformed; the message says how."""


def parse_params(query: str, allowed: tuple[str, ...] = ("name", "type")) -> dict[str, str]:
    """``name=www.test&type=A`` → dict; repeated, unknown or undecodable keys are refused."""
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query),
                          max_num_fields=_MAX_PARAMS, errors="strict")
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"bad query string: {e}") from None
    params: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            raise BadRequest(f"unknown parameter {key!r} (expected {', '.join(allowed)})")
        if key in params:
            raise BadRequest(f"parameter {key!r} given twice")
        params[key] = value
    return params


def parse_name(text: str) -> bytes:
    """A name as clients ask it → lower-case wire form (``wire.parse_name``, ``as_asked``)."""
    if not text:
        raise BadRequest("name: expected a domain name such as www.example.com")
    try:
        if text != text.strip():  # taken literally, as before: a space is not in any name we serve
            raise ValueError(text)
        return wire.parse_name(text, as_asked=True)
    except ValueError:
        raise BadRequest(f"name: invalid domain name {text!r}") from None


def parse_type(text: str | None) -> int:
    """A record type by name (A, AAAA, …), as TYPEnnn, or as a number; default A."""
    if text is None:
        return wire.TYPE_A
    try:
        return wire.qtype_from_text(text)
    except ValueError:
        raise BadRequest(f"type: unknown record type {text!r}") from None


def _keys(name: bytes, qtype: int) -> list[tuple[str, bytes]]:
    question = wire.question_bytes(name, qtype)  # class IN: the only class we cache
    return [(label, wire.question_key(question, flags)) for flags, label in _FLAGS.items()]


def _records(entry: Entry, question: bytes, now: float) -> list[str]:
    body = entry.aged_body(now) if now < entry.fresh_until else entry.body
    try:
        msg = DNSRecord.parse(b"\x00\x00" + entry.hdr + question + body)
    except Exception as e:  # dnslib raises assorted errors; show, don't fail
        return [f"; cannot show records: {type(e).__name__}"]
    return [str(rr) for rr in (*msg.rr, *msg.auth, *msg.ar)]


def describe(entry: Entry, question: bytes, now: float) -> dict:
    fresh = now < entry.fresh_until
    return {
        "state": "fresh" if fresh else "stale",
        "ttl_left": round(entry.fresh_until - now, 3) if fresh else 0,
        "expired_for": 0 if fresh else round(now - entry.fresh_until, 3),
        "stale_servable_for": round(max(0.0, entry.stale_until - now), 3),
        "recheck_left": round(max(0.0, entry.recheck_until - now), 3),
        "cached_for": round(now - entry.stored_at, 3),
        "kind": entry.kind,
        "rcode": rcode_label(entry.rcode),
        "source": "upstream",
        "records": _records(entry, question, now),
    }


def show(cache: Cache, now: float, query: str) -> tuple[int, bytes]:
    try:
        params = parse_params(query)
        if "name" not in params:
            raise BadRequest("name: required, e.g. /cache?name=www.example.com&type=A")
        name, qtype = parse_name(params["name"]), parse_type(params.get("type"))
    except BadRequest as e:
        return 400, _json({"error": str(e)})
    question = wire.question_bytes(name, qtype)
    found = []
    for flags, key in _keys(name, qtype):
        entry = cache.get(key)
        if entry is not None and now < entry.stale_until:
            found.append({"flags": flags, **describe(entry, question, now)})
    doc = {"name": wire.name_to_text(name), "type": wire.qtype_to_text(qtype), "entries": found}
    return (200 if found else 404), _json(doc)


FLUSH_SLICE = 10_000  # keys examined per loop turn when flushing a name or a zone


def parse_flush(query: str) -> tuple[bytes | None, int | None, bool]:
    """(name, type, whole zone?) of a flush request; (None, None, False) = everything."""
    params = parse_params(query, ("name", "type", "zone"))
    if "type" in params and "name" not in params:
        raise BadRequest("type: only together with name")
    if "zone" in params and len(params) > 1:
        raise BadRequest("zone: not together with name or type")
    if "zone" in params:
        return parse_name(params["zone"]), None, True
    name = parse_name(params["name"]) if "name" in params else None
    return name, (parse_type(params["type"]) if "type" in params else None), False


def flush_keys(cache: Cache, name: bytes | None, qtype: int | None, zone: bool) -> Iterator[int]:
    """Drop everything, one name and type, every type of a name, or a whole zone.

    A generator: it yields the count so far after each slice of ``FLUSH_SLICE`` keys,
    so the caller can hand the loop back to DNS between slices (an explicit operator
    action is O(entries) when it must look at every key; it must never stall answers).
    Its final value is the number of entries dropped.
    """
    if name is None:
        n = len(cache)
        cache.clear()
        yield n
        return
    if qtype is not None:
        yield sum(cache.remove(key) for _, key in _keys(name, qtype))
        return
    def doomed(key: bytes) -> bool:
        owner = wire.key_name(key)
        # endswith first: a cheap filter over every key before the label walk
        return owner == name or (zone and owner.endswith(name) and wire.in_zone(owner, name))

    cache.remove_lower_where(doomed)  # the host tier holds what other workers learnt too
    keys = list(cache.entries)  # references only
    n = 0
    for start in range(0, len(keys), FLUSH_SLICE):
        for key in keys[start:start + FLUSH_SLICE]:
            if doomed(key) and cache.remove(key):
                n += 1
        yield n


def flush(cache: Cache, query: str) -> tuple[int, bytes]:
    """Synchronous flush (tests, small caches): ``flush_keys`` run to the end."""
    try:
        name, qtype, zone = parse_flush(query)
    except BadRequest as e:
        return 400, _json({"error": str(e)})
    n = 0
    for n in flush_keys(cache, name, qtype, zone):
        pass
    return 200, _json({"flushed": n})


def _json(doc: dict) -> bytes:
    return (json.dumps(doc, indent=1) + "\n").encode()
