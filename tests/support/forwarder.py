"""The forwarder under test, running in-process on real sockets with a fake clock.

The App runs on its own uvloop event loop in a background thread, bound to
127.0.0.1 port 0 (UDP and TCP share the port it gets), with its metrics listener
on another ephemeral port.  Tests talk to it with dig and dnspython like any
client would, and move its clock with ``advance()`` instead of sleeping (the clock
flows in real time too: the upstreams on the other end of the sockets are real).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import threading
import urllib.request

import uvloop

from resolver.app import App
from resolver.clock import FakeClock
from resolver.config import Address, AdminConfig, Config, MetricsConfig, parse_config, parse_upstream


def forwarder_config(upstreams: list[str], **sections) -> Config:
    """A Config on ephemeral loopback ports; ``sections`` override fields per section,
    e.g. ``stale={"client_timeout": 0.2}``; nested sections as nested dicts
    (``cache={"persist": {"path": p}}``); list keys take their YAML form, e.g.
    ``forward=[{"zone": "corp.test", "upstreams": [...]}]``, ``local_records=[...]``."""
    base = Config(
        listen=(Address("127.0.0.1", 0),),
        upstreams=tuple(parse_upstream(u, f"upstreams[{i}]") for i, u in enumerate(upstreams)),
        metrics=MetricsConfig(enabled=True, listen=Address("127.0.0.1", 0)),
        # The admin API on a loopback TCP port (no Unix socket: parallel test forwarders
        # would share the default path); tests that need the socket set admin.socket.
        admin=AdminConfig(socket="", listen="127.0.0.1:0"),
    )
    def merged(obj, values):
        if not isinstance(values, dict):  # a plain value (e.g. workers=2), not a section
            return values
        return dataclasses.replace(obj, **{k: merged(getattr(obj, k), v) for k, v in values.items()})

    changes = {}
    for name, values in sections.items():
        if dataclasses.is_dataclass(getattr(base, name)) or not isinstance(values, list):
            changes[name] = merged(getattr(base, name), values)
        else:  # a list key, parsed as the config file would be; a listen address no upstream uses
            parsed = parse_config({"upstreams": upstreams, "listen": ["127.0.0.1:1"], name: values})
            changes[name] = getattr(parsed, name)
    return dataclasses.replace(base, **changes)


def http_request(port: int, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, str]:
    """(status, body) of one HTTP request to 127.0.0.1:``port``."""
    data = b"" if method == "POST" else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class RunningForwarder:
    def __init__(self, config: Config, clock: FakeClock | None = None, join: bool = False):
        # Real upstreams take real time: the clock flows, and advance() jumps it ahead
        # (TTLs expire and due timers fire at once, without sleeping).
        self.clock = clock or FakeClock(flowing=True)
        self.join = join  # bind next to a running instance (a deliberate handover: App(join=True))
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="forwarder", daemon=True)
        self.thread.start()
        # Port 0 gives UDP a free port; TCP then binds the same number, which another
        # process on a busy shared machine may hold (EADDRINUSE).  Try a few ports.
        for attempt in range(5):
            self.app: App = self.call(self._make(config))
            try:
                self.call(self.app.start())
                break
            except OSError as e:
                self.call(self.app.stop(0))
                if e.errno != errno.EADDRINUSE or attempt == 4:
                    raise

    async def _make(self, config: Config) -> App:
        return App(config, self.clock, join=self.join)

    def call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def port(self) -> int:
        return self.app.dns_port

    @property
    def metrics_port(self) -> int:
        return self.app.admin.port

    @property
    def admin_port(self) -> int:
        return self.app.control.port

    def admin_http(self, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, str]:
        """A request to the admin listener (loopback TCP): /cache, /lkg/*, /status, /reload."""
        return http_request(self.admin_port, path, method, headers)

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def http(self, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, str]:
        """A request to the metrics listener (/metrics, /healthz, /readyz; the rest is refused there)."""
        return http_request(self.metrics_port, path, method, headers)

    def metric(self, name: str, **labels) -> float:
        """The value of one sample from /metrics (0.0 if absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        _, text = self.http("/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def stop(self, grace: float = 1.0) -> None:
        if self.loop.is_closed():  # already stopped by the test itself
            return
        try:
            self.call(self.app.stop(grace))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()
