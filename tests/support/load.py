"""A bounded client load over UDP and TCP that records every query's fate.

Clients behave like a stub resolver: a query not answered within ``timeout`` is
sent again (new socket, so a new source port), up to ``tries`` times.  A query is
*failed* when no try got a NOERROR answer with records; ``retried`` counts tries
that were lost (what a client would notice as a delay).  Bounded in count and in
time, so a broken forwarder cannot hang the test.
"""

from __future__ import annotations

import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode


class Load:
    def __init__(self, port: int, names: list[tuple[str, str]], *, udp_clients: int = 2, tcp_clients: int = 1,
                 max_queries: int = 50_000, max_seconds: float = 60.0, timeout: float = 1.0, tries: int = 3):
        self.port = port
        self.names = names
        self.max_queries = max_queries
        self.max_seconds = max_seconds
        self.timeout = timeout
        self.tries = tries
        self.lock = threading.Lock()
        self.sent = {"udp": 0, "tcp": 0}
        self.ok = {"udp": 0, "tcp": 0}
        self.retried = {"udp": 0, "tcp": 0}
        self.failed = {"udp": 0, "tcp": 0}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=("udp", i), daemon=True)
                        for i in range(udp_clients)]
        self.threads += [threading.Thread(target=self._client, args=("tcp", i), daemon=True)
                         for i in range(tcp_clients)]

    def start(self) -> "Load":
        self.started = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> "Load":
        self._stop.set()
        for t in self.threads:
            t.join(self.timeout * self.tries + 5)
        return self

    def total(self, what: dict) -> int:
        return sum(what.values())

    def summary(self) -> str:
        return (f"sent {self.sent}, answered {self.ok}, lost tries (retried) {self.retried}, "
                f"failed {self.failed}; first errors {self.errors[:5]}")

    def _client(self, transport: str, n: int) -> None:
        i = n
        end = self.started + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < end:
            with self.lock:
                if self.total(self.sent) >= self.max_queries:
                    return
                self.sent[transport] += 1
            name, rtype = self.names[i % len(self.names)]
            i += 1
            ok = False
            for _ in range(self.tries):
                try:
                    q = dns.message.make_query(name, rtype)
                    if transport == "udp":
                        r = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=self.timeout)
                        if r.flags & dns.flags.TC:  # too big for UDP: retry over TCP, as stubs do
                            r = dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=self.timeout)
                    else:
                        r = dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=self.timeout)
                    if r.rcode() == dns.rcode.NOERROR and r.answer:
                        ok = True
                        break
                    err = f"{transport} {name}: rcode {dns.rcode.to_text(r.rcode())}"
                except (dns.exception.DNSException, OSError, EOFError) as exc:
                    err = f"{transport} {name}: {type(exc).__name__}: {exc}"
                with self.lock:
                    self.retried[transport] += 1
                    if len(self.errors) < 50:
                        self.errors.append(err)
            with self.lock:
                if ok:
                    self.ok[transport] += 1
                else:
                    self.failed[transport] += 1
