"""Sans-IO DNS message logic: bytes in, bytes or values out; no sockets, no clock.

One module per job; this package re-exports their public names, so callers
write ``from resolver import wire`` and ``wire.parse_query(...)``:

=================  ==============================================================
``constants``      rcodes, record types, classes, header bits, EDE codes; building
                   header flags; record types typed by people
``names``          names wire ↔ text, the one validator of typed names, zone matching
``query``          ``parse_query`` / ``Query``, the cache-key layout and its readers,
                   the query we send upstream
``reply``          ``check_reply_matches``, ``parse_reply`` (RFC 2308 kinds),
                   ``Prepared``, TTL aging
``render``         ``render``, ``error_reply``, OPT, EDE, TC
``framing``        the TCP/TLS two-octet length prefix (RFC 1035 §4.2.2, RFC 7766 §8)
``records``        local data: static records, names and zones parsed from config
``scrub``          0x20 case randomisation and scrubbing of unrelated records
=================  ==============================================================

Two paths share these modules:

* the **miss path** parses a client query strictly (`parse_query`), builds the
  upstream query, validates the upstream reply (`parse_reply`) and turns it into a
  `Prepared` answer: the reply stored as wire bytes with the offsets of its TTL
  fields, so that later hits never parse or pack a message again;
* the **hit path** (see ``serve.pipeline.Pipeline.answer_fast``) copies a prepared
  answer and writes the client's ID, the client's question bytes and the aged TTLs
  in place.  `render` is the general form of the same operation and is what the
  miss path and unusual queries use, so both paths produce the same bytes.

dnslib is used where a general parser earns its cost: tests compare our bytes to
dnslib's, and the admin endpoints print entries through it.  The per-message code
here only walks record headers (name, type, class, TTL, length), which is all a
forwarding cache needs.
"""

from __future__ import annotations

from .constants import (
    AA, AD, BADVERS, CD, CLASS_IN, EDE_NETWORK_ERROR, EDE_NO_REACHABLE_AUTHORITY, EDE_STALE_ANSWER,
    EDE_STALE_NXDOMAIN, FORMERR, NOERROR, NOTIMP, NXDOMAIN, OPCODE_MASK, QR, RA, RCODE_MASK, RD, REFUSED,
    SERVFAIL, TC, TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_AXFR, TYPE_CNAME, TYPE_DNAME, TYPE_DS, TYPE_IXFR, TYPE_NS,
    TYPE_NSEC, TYPE_NSEC3, TYPE_OPT, TYPE_PTR, TYPE_RRSIG, TYPE_SOA, TYPE_TXT, header_counts, qtype_from_text,
    qtype_to_text, query_flags, reply_flags,
)
from .framing import MAX_MESSAGE, PREFIX_LEN, frame, frame_length
from .names import ROOT, in_zone, name_to_text, name_to_wire, parse_name, skip_name, zone_of, zone_to_wire
from .query import (
    KEY_CD, KEY_DO, KEY_EXACT_TAIL, KEY_FLAGGED, Query, build_upstream_query, key_flags, key_name, key_prefix,
    key_question, parse_query, question_bytes, question_key,
)
from .render import EDE_OPTION, ede_option, error_reply, opt_record, render, truncated
from .reply import (
    FAILURE, NEGATIVE_NXDOMAIN, NODATA, POSITIVE, Prepared, age_body, check_reply_matches, failure_prepared,
    fixed_ttl_body, parse_reply,
)

__all__ = [
    "AA", "AD", "BADVERS", "CD", "CLASS_IN", "EDE_NETWORK_ERROR", "EDE_NO_REACHABLE_AUTHORITY", "EDE_STALE_ANSWER",
    "EDE_STALE_NXDOMAIN", "FORMERR", "NOERROR", "NOTIMP", "NXDOMAIN", "OPCODE_MASK", "QR", "RA", "RCODE_MASK", "RD",
    "REFUSED", "SERVFAIL", "TC", "TYPE_A", "TYPE_AAAA", "TYPE_ANY", "TYPE_AXFR", "TYPE_CNAME", "TYPE_DNAME",
    "TYPE_DS", "TYPE_IXFR", "TYPE_NS", "TYPE_NSEC", "TYPE_NSEC3", "TYPE_OPT", "TYPE_PTR", "TYPE_RRSIG", "TYPE_SOA",
    "TYPE_TXT", "header_counts", "qtype_from_text", "qtype_to_text", "query_flags", "reply_flags",
    "MAX_MESSAGE", "PREFIX_LEN", "frame", "frame_length",
    "ROOT", "in_zone", "name_to_text", "name_to_wire", "parse_name", "skip_name", "zone_of", "zone_to_wire",
    "KEY_CD", "KEY_DO", "KEY_EXACT_TAIL", "KEY_FLAGGED", "Query", "build_upstream_query", "key_flags", "key_name",
    "key_prefix", "key_question", "parse_query", "question_bytes", "question_key",
    "EDE_OPTION", "ede_option", "error_reply", "opt_record", "render", "truncated",
    "FAILURE", "NEGATIVE_NXDOMAIN", "NODATA", "POSITIVE", "Prepared", "age_body", "check_reply_matches",
    "failure_prepared", "fixed_ttl_body", "parse_reply",
]
