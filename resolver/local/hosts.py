"""The hosts file: /etc/hosts format parsed into local records, re-read when it changes.

Format (hosts(5)): ``<address> <name> [<alias>...]``, ``#`` starts a comment.
Each name gets an A or AAAA record per address listed for it; each address gets
one PTR record, to the first name listed for it in the file (the canonical name,
as the C library's gethostbyaddr returns), so reverse lookups of hosts-file
addresses are answered locally too.

A bad line (an unparsable address, a scoped IPv6 address, an invalid name, or an
address with no name) is skipped with a warning naming ``file:line``: one typo
must not take every other entry down with it.  A missing or unreadable file is a
warning and no entries; serving goes on.

Change detection is a ``stat()`` at most once per ``check_interval`` (mtime, size
and inode, so an atomic rename and an in-place edit are both seen), from a
background task: never on the query path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from typing import Callable

from ..config import HostsFileConfig
from ..wire.names import parse_name
from ..wire.records import TYPES, Record, index, reverse_name

log = logging.getLogger("resolver.hosts")

MAX_WARNINGS = 20  # per read: a file of garbage must not flood the log


def parse_hosts(text: str, path: str, ttl: int) -> tuple[list[Record], list[str]]:
    """(records, warnings) from hosts-file text; each warning starts with ``path:line:``."""
    records: list[Record] = []
    warnings: list[str] = []
    seen: set[tuple[bytes, int, bytes]] = set()
    addresses: dict[str, ipaddress.IPv4Address | ipaddress.IPv6Address] = {}  # parsed once each
    ptr_done: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        try:
            if len(words) < 2:
                raise ValueError(f"address {words[0]!r} has no name")
            if "%" in words[0]:
                raise ValueError(f"scoped address {words[0]!r} cannot be served over DNS")
            ip = addresses.get(words[0])
            if ip is None:
                try:
                    ip = addresses[words[0]] = ipaddress.ip_address(words[0])
                except ValueError:
                    raise ValueError(f"expected an IP address, got {words[0]!r}") from None
            names = [parse_name(word, "host name") for word in words[1:]]
        except ValueError as e:
            warnings.append(f"{path}:{number}: {e}; line skipped")
            continue
        rtype = TYPES["A"] if ip.version == 4 else TYPES["AAAA"]
        for name in names:
            if (name, rtype, ip.packed) not in seen:
                seen.add((name, rtype, ip.packed))
                records.append(Record(name, rtype, ttl, ip.packed))
        if ip not in ptr_done:
            ptr_done.add(ip)
            records.append(Record(reverse_name(ip), TYPES["PTR"], ttl, names[0]))
    return records, warnings


class HostsFile:
    """Reads the file when its (mtime, size, inode) changes; hands the new data to ``on_change``.

    ``on_change`` gets the records indexed by name (``records.index``).  Reading,
    parsing and indexing run in a worker thread when called from ``watch``: a
    100 000-line block list takes seconds, which must not stall the event loop.
    """

    def __init__(self, config: HostsFileConfig, on_change: Callable[[dict], None]):
        self.config = config
        self.on_change = on_change
        self.signature: tuple | None = None
        self.reloads = 0        # successful reads (the first one included)
        self.bad_lines = 0      # lines skipped in the last read
        self.entries = 0        # records from the last read
        self.errors = 0         # reads that failed (missing or unreadable file)

    def check(self) -> bool:
        """Re-read the file if it changed since the last look; True if it was read."""
        return self._apply(self._read())

    def _read(self):
        """None if unchanged, else (records by name, record count, warnings, read error)."""
        path = self.config.path
        try:
            st = os.stat(path)
            signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as e:
            signature = ("missing", e.errno)
        if signature == self.signature:
            return None
        self.signature = signature
        problem = None
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                text = file.read()
        except OSError as e:
            problem, text = e.strerror or str(e), ""
        records, warnings = parse_hosts(text, path, self.config.ttl)
        return index(records), len(records), warnings, problem

    def _apply(self, result) -> bool:
        if result is None:
            return False
        data, count, warnings, problem = result
        path = self.config.path
        if problem is not None:
            self.errors += 1
            log.warning("hosts file %s: cannot read (%s); serving no hosts-file names", path, problem)
        for warning in warnings[:MAX_WARNINGS]:
            log.warning("hosts file %s", warning)
        if len(warnings) > MAX_WARNINGS:
            log.warning("hosts file %s: %d more bad lines skipped", path, len(warnings) - MAX_WARNINGS)
        self.bad_lines = len(warnings)
        self.entries = count
        self.reloads += 1
        self.on_change(data)
        return True

    async def watch(self) -> None:
        """Check every ``check_interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.config.check_interval)
            try:
                self._apply(await asyncio.to_thread(self._read))
            except Exception:  # background task boundary: keep the last good data
                log.exception("hosts file %s: reload failed", self.config.path)
