"""Local answers: names answered here, never sent upstream and never stale.

In order of precedence, for a query's (lower-case) name:

1. **Local data** — ``local_records`` from the config, then the hosts file (a name
   in both is answered from the config alone).  The name is owned locally: a
   type it has is answered, a CNAME is followed through local data (RFC 1034
   §4.3.2 step 3a; a target outside local data is resolved like any other name
   and its answer appended, see `Chase`), and any other type gets NODATA with an SOA so
   it can be cached negatively (RFC 2308 §3), with the name's own TTL as minimum.
2. **localhost** and every name under it (RFC 6761 §6.3: a caching server SHOULD
   answer these itself): A 127.0.0.1, AAAA ::1, NODATA for other types.
3. **block_zones** — every name at or under such a zone gets NXDOMAIN, with the
   zone's SOA (TTL and minimum ``BLOCK_TTL``) so the denial is cached (RFC 2308 §3)
   instead of re-asked by every client retry.  Local data inside a blocked zone
   still answers (point 1 comes first), so a zone can be blocked with exceptions.

Why before the cache, on the slow path, rather than pre-rendered into the cache:
a local answer never expires, must not be evicted, swept, snapshotted, flushed
or served stale, and must win over anything an upstream said about the same name
— the cache has rules for all of those that local data must escape.  The cost is
the general path (parse + render, measured in bench/local.py) for local names
only; cache hits for other names are untouched.  Names that become local at run
time (a hosts-file change) are purged from the cache (``purge``), so a cached
upstream answer cannot shadow them on the hit path.

AA is set: this server is the source of these answers.
"""

from __future__ import annotations

import struct
from collections import Counter

import dnslib

from .. import wire
from ..cache.store import Cache
from ..config import Config
from ..wire.constants import CLASS_IN as _CLASS_IN, TYPE_A, TYPE_AAAA, TYPE_ANY as _TYPE_ANY, \
    TYPE_CNAME as _CNAME, TYPE_NS, TYPE_SOA
from ..wire.records import Record, index

LOCALHOST = wire.name_to_wire("localhost")
LOCALHOST_TTL = 3600  # the data never changes (RFC 6761 §6.3)
BLOCK_TTL = 60  # short, so lifting a block reaches clients within a minute
KINDS = ("records", "hosts", "localhost", "blocked")  # metric label values
_MAX_CHAIN = 8  # CNAME hops followed in local data; more is a loop or a mistake
_SOA_NAMES = wire.name_to_wire("localhost") + wire.name_to_wire("nobody.invalid")
_LOCALHOST_DATA = {
    TYPE_A: [Record(LOCALHOST, TYPE_A, LOCALHOST_TTL, bytes((127, 0, 0, 1)))],
    TYPE_AAAA: [Record(LOCALHOST, TYPE_AAAA, LOCALHOST_TTL, bytes(15) + b"\x01")],
}


def _soa(zone: bytes, ttl: int) -> bytes:
    """A synthetic SOA record for negative answers: TTL = MINIMUM = ``ttl`` (RFC 2308 §5)."""
    rdata = _SOA_NAMES + struct.pack(">IIIII", 1, 3600, 1200, 604800, ttl)
    return zone + struct.pack(">HHIH", TYPE_SOA, _CLASS_IN, ttl, len(rdata)) + rdata


def _rr(record: Record, qname: bytes, ttl: int | None = None) -> bytes:
    # The owner is the question's name in most answers: point at it (RFC 1035 §4.1.4).
    owner = b"\xc0\x0c" if record.name == qname else record.name
    return owner + struct.pack(">HHIH", record.rtype, _CLASS_IN, record.ttl if ttl is None else ttl,
                               len(record.rdata)) + record.rdata


def _last_label(zone: bytes) -> bytes:
    """The wire form of a zone's last label with the root ("\x03com\x00"); the root zone: "\x00"."""
    off = 0
    while zone[off] and zone[off + 1 + zone[off]]:
        off += 1 + zone[off]
    return zone[off:]


class LocalAnswers:
    """The local data and the rules above; ``answer`` is called before the cache."""

    def __init__(self, config: Config):
        self.static = index(config.local_records)
        self.hosts: dict[bytes, dict[int, list[Record]]] = {}
        self.hosts_ttl = config.hosts_file.ttl
        # Zone apex → kind, for one suffix walk per query: RFC 6761 localhost and block_zones.
        self.zones = {LOCALHOST: "localhost"}
        self.zones.update((zone, "blocked") for zone in config.block_zones)
        # The zones' last labels ("\x09localhost\x00"): a name ending in none of them is
        # in no zone, told by one bytes.endswith instead of a walk over its labels.
        tails = {_last_label(zone) for zone in self.zones}
        self._tails = tuple(tails) if len(tails) <= 64 else b""
        self.answers: Counter = Counter()  # kind (KINDS) → local answers sent

    def set_hosts(self, new: dict[bytes, dict[int, list[Record]]]) -> set[bytes]:
        """Replace the hosts-file data (``records.index`` form); returns the names that were
        not local before."""
        added = {name for name in new if name not in self.hosts and name not in self.static}
        self.hosts = new
        return added

    def _data(self, name: bytes):
        data = self.static.get(name)
        if data is not None:
            return data, "records"
        data = self.hosts.get(name)
        if data is not None:
            return data, "hosts"
        return None, None

    def owns(self, name: bytes) -> bool:
        """Is ``name`` (lower-case wire) answered here rather than upstream?"""
        return self._data(name)[0] is not None or wire.zone_of(name, self.zones) is not None

    def answer(self, q: wire.Query, limit: int, edns_size: int) -> bytes | None:
        """The reply for ``q`` if its name is local, else None (go on to the cache)."""
        qname = q.qname.lower()
        if q.qclass == _CLASS_IN:
            data, kind = self._data(qname)
            if data is not None:
                return self._from_data(q, qname, data, kind, limit, edns_size)
        if not qname.endswith(self._tails):
            return None
        zone = wire.zone_of(qname, self.zones)
        if zone is None:
            return None
        if self.zones[zone] == "blocked":  # any class: a blocked name never leaves the host
            self.answers["blocked"] += 1
            return self._reply(q, wire.NXDOMAIN, [], [_soa(zone, BLOCK_TTL)], limit, edns_size)
        if q.qclass == _CLASS_IN:
            return self._localhost(q, qname, limit, edns_size)
        return None

    def _from_data(self, q, qname, data, kind, limit, edns_size) -> bytes:
        self.answers[kind] += 1
        answer: list[bytes] = []
        name, seen = qname, set()
        while data is not None and len(seen) < _MAX_CHAIN and name not in seen:
            seen.add(name)
            if q.qtype == _TYPE_ANY:
                wanted = [r for rs in data.values() for r in rs]
            else:
                wanted = data.get(q.qtype) or data.get(_CNAME) or []
            answer += [_rr(r, qname) for r in wanted]
            if len(wanted) != 1 or wanted[0].rtype != _CNAME or q.qtype in (_CNAME, _TYPE_ANY):
                break
            name = wanted[0].rdata  # RFC 1034 §4.3.2: restart at the CNAME's target
            data = self._data(name)[0]
        if data is None:  # the chain left local data: the target is resolved as usual
            return Chase(answer, name)
        if answer:
            return self._reply(q, wire.NOERROR, answer, [], limit, edns_size)
        ttl = min(r.ttl for rs in data.values() for r in rs)
        return self._reply(q, wire.NOERROR, [], [_soa(qname, ttl)], limit, edns_size)

    def _localhost(self, q, qname, limit, edns_size) -> bytes:
        self.answers["localhost"] += 1
        records = _LOCALHOST_DATA.get(q.qtype, [])
        answer = [_rr(Record(qname, r.rtype, r.ttl, r.rdata), qname) for r in records]
        if qname == LOCALHOST and q.qtype == TYPE_SOA:
            answer = [_soa(b"\xc0\x0c", LOCALHOST_TTL)]
        elif qname == LOCALHOST and q.qtype == TYPE_NS:
            answer = [b"\xc0\x0c" + struct.pack(">HHIH", TYPE_NS, _CLASS_IN, LOCALHOST_TTL, 2) + b"\xc0\x0c"]
        if answer:
            return self._reply(q, wire.NOERROR, answer, [], limit, edns_size)
        return self._reply(q, wire.NOERROR, [], [_soa(LOCALHOST, LOCALHOST_TTL)], limit, edns_size)

    def _reply(self, q, rcode, answer, authority, limit, edns_size) -> bytes:
        # QR, AA, RD (cleared by render if the client did not set it); RA, the client's CD.
        flags = wire.reply_flags(rcode, cd=q.cd, aa=True)
        hdr = flags + wire.header_counts(1, len(answer), len(authority), 0)
        hdr_opt = flags + wire.header_counts(1, len(answer), len(authority), 1)
        return wire.render(q, hdr, hdr_opt, b"".join(answer + authority), limit, edns_size)


class Chase:
    """A local CNAME chain whose last target is not local data (e.g. a local alias for
    a cloud load balancer).  Stub resolvers do not follow CNAMEs themselves, so the
    target is resolved here like any other name (cache, upstream, serve-stale) and
    its answer appended to the local CNAMEs (RFC 1034 §4.3.2 step 3a); the RCODE is
    the target's (RFC 6604 §2).  The pipeline drives it: ``subquery`` → resolve →
    ``merge``.
    """

    __slots__ = ("records", "target")

    def __init__(self, records: list[bytes], target: bytes):
        self.records = records  # our CNAME RRs, wire form (owner may point at offset 12)
        self.target = target

    def subquery(self, q: wire.Query) -> bytes:
        """The query for the target: the client's type, class, CD, DO and EDNS size."""
        opt = wire.opt_record(q.udp_size, q.do) if q.edns else b""
        return (q.id + wire.query_flags(q.cd) + wire.header_counts(1, 0, 0, 1 if opt else 0)
                + self.target + q.question[-4:] + opt)

    def merge(self, q: wire.Query, sub: bytes, limit: int, edns_size: int) -> bytes:
        """The client's reply: its question, our CNAMEs, then the target's records."""
        if sub is None:  # cannot happen for our own well-formed subquery; never crash on it
            return wire.error_reply(q.data, wire.SERVFAIL, q.qend, edns=q.edns, udp_size=edns_size)
        rec = dnslib.DNSRecord.parse(sub)
        # Re-encoded without compression: their pointers were offsets into ``sub``.
        body = b"".join(_uncompressed(rr) for rr in rec.rr + rec.auth)
        options = b"".join(struct.pack(">HH", o.code, len(o.data)) + o.data
                           for rr in rec.ar if rr.rtype == wire.TYPE_OPT for o in rr.rdata)
        flags = wire.reply_flags(sub[3] & wire.RCODE_MASK, cd=sub[3] & wire.CD)
        an, ns = len(self.records) + len(rec.rr), len(rec.auth)
        hdr = flags + wire.header_counts(1, an, ns, 0)
        hdr_opt = flags + wire.header_counts(1, an, ns, 1)
        return wire.render(q, hdr, hdr_opt, b"".join(self.records) + body, limit, edns_size,
                           options if q.edns else b"")


def _uncompressed(rr: dnslib.RR) -> bytes:
    """One record as wire bytes with no compression pointers (stands anywhere in a message)."""
    buf = dnslib.DNSBuffer()
    buf.names = _NoCompression()
    rr.pack(buf)
    return bytes(buf.data)


class _NoCompression(dict):
    """A dnslib name table that never remembers a name, so nothing is compressed."""

    def __setitem__(self, key, value):
        pass


def purge(cache: Cache, owns) -> int:
    """Drop cached answers for names that ``owns(name)`` says are now answered locally.

    O(cache size); run at start and when the hosts file changes, never per query.
    """
    dead = []
    for key in cache.entries:
        if owns(wire.key_name(key)):
            dead.append(key)
    for key in dead:
        cache.remove(key)
    return len(dead)
