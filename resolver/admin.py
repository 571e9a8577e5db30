"""The admin HTTP listener: /metrics, /healthz, /readyz.

A deliberately small HTTP/1.1 server on asyncio streams (one request per
connection, bounded request size and read time), because it must share the event
loop — and so the live objects — with the DNS listeners; prometheus_client's own
server runs in a thread.  Readiness means "listeners are bound"; upstream health
is deliberately *not* part of it: when upstreams fail the cache keeps serving,
and an unready pod would be taken out of service exactly when it is most useful.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

log = logging.getLogger("resolver.admin")

_MAX_REQUEST = 8192
_READ_TIMEOUT = 5.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class AdminServer:
    def __init__(self, metrics: Callable[[], bytes], ready: Callable[[], bool]):
        self.metrics = metrics
        self.ready = ready
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.handlers: list[Callable[[str, str], tuple[int, str, bytes] | None]] = []  # extra routes

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._client, host=host, port=port, limit=_MAX_REQUEST)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("metrics and health on http://%s:%d/metrics", host if ":" not in host else f"[{host}]", self.port)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def handle(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Route one request; returns (status, content type, body).  Pure, for tests."""
        for handler in self.handlers:
            if (answer := handler(method, path)) is not None:
                return answer
        path = path.split("?", 1)[0]
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
                status, ctype, body = self.handle(method, parts[1])
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
