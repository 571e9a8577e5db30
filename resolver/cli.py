"""Command line: argv, logging, signals, uvloop, exit codes.

Exit codes: 0 clean stop; 1 could not start (e.g. address in use); 2 bad
configuration or usage (one line on stderr naming the key and the problem).
``resolver ctl …`` is the operator's client (``ctl.py``, its own exit codes).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys

from .app import App, refuse_if_bound, tune_gc, version
from .config import ADMIN_SOCKET_AUTO, WORKERS_AUTO, Config, load_config
from .errors import ConfigError
from .ops import reload as live_reload
from .ops.admin import default_socket_path
from .ops.supervisor import Supervisor, usable_cores

log = logging.getLogger("resolver")


# Attributes every LogRecord has; anything else was passed as ``extra=`` (event fields).
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class _JsonFormatter(logging.Formatter):
    """One JSON object per line; fields given with ``extra=`` (e.g. ``event``,
    ``upstream``) become keys, so log pipelines can filter on them."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(config: Config) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if config.logging.format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.logging.level.upper())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="resolver", description="A resilient caching DNS forwarder (RFC 8767 serve-stale).")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML configuration file (default: embedded defaults)")
    p.add_argument("--resolv-conf", metavar="PATH",
                   help="take upstreams from this resolv.conf when the config lists none (default /etc/resolv.conf)")
    p.add_argument("--check-config", action="store_true", help="validate the configuration and exit")
    p.add_argument("--handover", action="store_true",
                   help="start next to a running resolver on the same addresses and take over from it "
                        "(zero-gap upgrade); without it, addresses already in use are an error")
    p.add_argument("--version", action="version", version=f"resolver {version()}")
    return p.parse_args(argv)


def for_worker(config: Config, worker: int) -> Config:
    """Worker ``i`` of several serves its metrics on the configured port + i (README "Workers"),
    and its admin API on the socket path + ".i" and admin.listen's port + i (``resolver ctl --worker i``)."""
    if worker and config.admin.enabled and config.admin.socket:
        path = default_socket_path() if config.admin.socket == ADMIN_SOCKET_AUTO else config.admin.socket
        config = dataclasses.replace(config, admin=dataclasses.replace(config.admin, socket=f"{path}.{worker}"))
    if worker and config.admin.enabled and config.admin.listen:
        host, _, port = config.admin.listen.rpartition(":")
        if int(port):  # as for metrics: each worker its own port, so ctl reaches the one it names
            admin = dataclasses.replace(config.admin, listen=f"{host}:{int(port) + worker}")
            config = dataclasses.replace(config, admin=admin)
    if worker == 0 or not config.metrics.enabled or config.metrics.listen.port == 0:
        return config
    listen = dataclasses.replace(config.metrics.listen, port=config.metrics.listen.port + worker)
    return dataclasses.replace(config, metrics=dataclasses.replace(config.metrics, listen=listen))


async def serve(config: Config, stop_event: asyncio.Event | None = None, *, config_path: str | None = None,
                resolv_conf: str | None = None, worker: int = 0, workers: int = 1, restarts: int = 0,
                process_gc: bool = False, join: bool = False) -> int:
    """Run until SIGTERM/SIGINT (or ``stop_event``), then stop cleanly; SIGHUP reloads ``config_path``.

    ``process_gc``: tune the garbage collector for the whole process once started
    (``app.tune_gc``); only ``main`` asks, as the process is then ours alone.
    ``join``: bind next to a running instance (``--handover``, or a sibling worker)."""
    app = App(config, worker=worker, workers=workers, join=join)
    app.worker_restarts = restarts
    try:
        await app.start()
    except OSError as e:
        log.error("cannot start: %s", e)
        await app.stop(0)
        return 1
    if process_gc:
        tune_gc()
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def apply(new: Config) -> None:
        app.reload(new)
        setup_logging(new)

    def on_hup() -> bool:
        return live_reload.reload(lambda: for_worker(load_config(config_path, resolv_conf), worker), apply,
                                  app.reloads, app.clock.wall)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    app.reload_source = on_hup  # POST /reload (resolver ctl reload)
    await stop.wait()
    log.info("stopping: finishing in-flight queries (grace %.1fs)", app.config.server.shutdown_grace)
    await app.stop()
    log.info("stopped")
    return 0


def _run(coro) -> int:
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ctl"]:  # the operator's client (ctl.py): talks to a running server
        from .ops import ctl
        return ctl.main(argv[1:])
    args = parse_args(argv)
    try:
        config = load_config(args.config, resolv_conf=args.resolv_conf)
        live_reload.check_runnable(config)  # e.g. server.udp_accelerator on without the extension
    except ConfigError as e:
        print(f"resolver: configuration error: {e}", file=sys.stderr)
        return 2
    if args.check_config:
        print("configuration ok")
        return 0
    setup_logging(config)
    workers = usable_cores() if config.workers == WORKERS_AUTO else config.workers
    options = dict(config_path=args.config, resolv_conf=args.resolv_conf, workers=workers, process_gc=True)
    if workers == 1:
        return _run(serve(config, join=args.handover, **options))
    if not args.handover:
        # Checked once here, before any worker binds: the workers then join each other.
        try:
            refuse_if_bound([for_worker(config, i) for i in range(workers)])
        except OSError as e:
            log.error("cannot start: %s", e)
            return 1

    def run_worker(index: int, restarts: int) -> int:
        current = config
        if restarts:  # a replacement worker takes the file as it is now (it may have been reloaded)
            try:
                current = load_config(args.config, resolv_conf=args.resolv_conf)
            except ConfigError as e:
                log.error("worker %d: configuration file now invalid, using the one loaded at start: %s", index, e)
        return _run(serve(for_worker(current, index), worker=index, restarts=restarts, join=True, **options))

    log.info("starting %d workers", workers)
    return Supervisor(workers, run_worker, stop_timeout=config.server.shutdown_grace + 10).run()
