"""The admin HTTP listener: /metrics, /healthz, /readyz, and the cache admin.

A deliberately small HTTP/1.1 server on asyncio streams (one request per
connection, bounded request size and read time), because it must share the event
loop — and so the live objects — with the DNS listeners; prometheus_client's own
server runs in a thread.  Readiness means "listeners are bound"; upstream health
is deliberately *not* part of it: when upstreams fail the cache keeps serving,
and an unready pod would be taken out of service exactly when it is most useful.

``GET /cache?name=…&type=…`` and ``POST /cache/flush[?name=…[&type=…]]`` (logic in
``cacheadmin.py``) are served only while the listener is on a loopback address,
unless ``metrics.allow_remote_admin`` is set: whoever can flush the cache can take
away what carries clients through an outage.  A flush is refused when the request
carries an ``Origin`` header (a browser page posting cross-site to localhost).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Callable

from . import cacheadmin
from .cache import Cache

log = logging.getLogger("resolver.admin")

_MAX_REQUEST = 8192
_READ_TIMEOUT = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            503: "Service Unavailable"}
_JSON = "application/json"


class AdminServer:
    def __init__(self, metrics: Callable[[], bytes], ready: Callable[[], bool], cache: Cache | None = None,
                 now: Callable[[], float] | None = None, allow_remote_admin: bool = False):
        self.metrics = metrics
        self.ready = ready
        self.cache = cache
        self.now = now
        self.allow_remote_admin = allow_remote_admin
        self.loopback = True  # set from the listen address in start()
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.handlers: list[Callable[[str, str], tuple[int, str, bytes] | None]] = []  # extra routes

    async def start(self, host: str, port: int) -> None:
        self.loopback = ipaddress.ip_address(host).is_loopback
        # reuse_port: during a zero-gap upgrade the successor binds this port while we still run.
        self.server = await asyncio.start_server(self._client, host=host, port=port, limit=_MAX_REQUEST,
                                                 reuse_port=True)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("metrics and health on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", self.port)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def handle(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
        """Route one request; returns (status, content type, body).  Pure, for tests."""
        for handler in self.handlers:
            if (answer := handler(method, path)) is not None:
                return answer
        path, _, query = path.partition("?")
        if path in ("/cache", "/cache/flush") and self.cache is not None:
            return self._cache(method, path, query, headers or {})
        routes = {"/metrics", "/healthz", "/readyz"}
        if path not in routes:
            return 404, "text/plain", b"not found\n"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n"
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics()
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if self.ready():
            return 200, "text/plain", b"ready\n"
        return 503, "text/plain", b"not ready\n"

    def _cache(self, method: str, path: str, query: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
        if not self.loopback and not self.allow_remote_admin:
            return 403, "text/plain", (b"cache admin is only served on a loopback listener "
                                       b"(metrics.allow_remote_admin enables it)\n")
        if path == "/cache":
            if method not in ("GET", "HEAD"):
                return 405, "text/plain", b"method not allowed\n"
            return _ctype(cacheadmin.show(self.cache, self.now(), query))
        if method != "POST":
            return 405, "text/plain", b"method not allowed (use POST)\n"
        if "origin" in headers:
            return 403, "text/plain", b"cross-origin requests may not flush the cache\n"
        status, body = cacheadmin.flush(self.cache, query)
        if status == 200:
            log.warning("cache flushed by admin request (%s): %s", query or "everything",
                        " ".join(body.decode().split()), extra={"event": "cache_flushed"})
        return status, _JSON, body

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                status, ctype, body = 400, "text/plain", b"bad request\n"
                method = "GET"
            else:
                method = parts[0]
                status, ctype, body = self.handle(method, parts[1], _headers(head))
            head_out = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head_out + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:
            log.exception("admin request failed")
        finally:
            writer.transport.abort() if writer.transport.is_closing() else writer.close()


def _ctype(result: tuple[int, bytes]) -> tuple[int, str, bytes]:
    return result[0], _JSON, result[1]


def _headers(head: bytes) -> dict[str, str]:
    """Header names (lower-cased) → values; malformed lines are skipped."""
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return out
