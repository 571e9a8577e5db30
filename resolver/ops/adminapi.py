"""The admin API's route table: one function lists every route, public or privileged.

Public (served on the metrics listener too, no gate): ``/metrics``, ``/healthz``,
``/readyz``.  Everything else is privileged (admin listener only, behind the gate
in ``admin.py``): ``/status``, ``/cache`` (lookup), ``/cache/flush``, ``/lkg/pin``,
``/lkg/unpin``, ``/lkg/pins``, ``/reload``.  ``resolver ctl`` (``ctl.py``) is the
client.  Readiness means "listeners are bound"; upstream health is deliberately
*not* part of it: when upstreams fail the cache keeps serving, and an unready pod
would be taken out of service exactly when it is most useful.
"""

from __future__ import annotations

import asyncio
import json

from . import cacheadmin, metrics
from .admin import JSON, TEXT, Reply, Request, Route, Router, audit, text
from .lkg_admin import PinRoutes

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _json(status: int, doc: dict) -> Reply:
    return Reply(status, JSON, (json.dumps(doc, indent=1) + "\n").encode())


def build_router(app) -> Router:
    """Every route of ``app``'s HTTP listeners.  ``app`` is read at request time (a reload replaces parts)."""
    router = Router(app.admin_stats)

    def metrics_page(request: Request) -> Reply:
        return Reply(200, METRICS_TYPE, metrics.render(app.registry))

    def healthz(request: Request) -> Reply:
        return Reply(200, TEXT, b"ok\n")

    def readyz(request: Request) -> Reply:
        # Names the process (``ready pid=N``); ``?pid=N`` is 200 only from that one (handover.py).
        status, ctype, body = app.readiness("GET", request.target)
        return Reply(status, ctype, body)

    def lookup(request: Request) -> Reply:
        status, body = cacheadmin.show(app.cache, app.clock.monotonic(), request.query)
        return Reply(status, JSON, body)

    async def flush(request: Request) -> Reply:
        try:
            name, qtype, zone = cacheadmin.parse_flush(request.query)
        except cacheadmin.BadRequest as e:
            return _json(400, {"error": str(e)})
        n = 0
        for n in cacheadmin.flush_keys(app.cache, name, qtype, zone):
            await asyncio.sleep(0)  # DNS answers between slices of a long scan
        what = request.query or "everything"
        audit(app.admin_stats, request, "flush", f"{what}: {n} entries")
        return _json(200, {"flushed": n})

    def status(request: Request) -> Reply:
        return _json(200, status_document(app))

    def reload(request: Request) -> Reply:
        source = getattr(app, "reload_source", None)
        if source is None:
            return _json(409, {"reloaded": False, "error": "started without --config: nothing to reload"})
        ok = source()
        audit(app.admin_stats, request, "reload", "succeeded" if ok else "refused")
        if ok:
            return _json(200, {"reloaded": True})
        return _json(409, {"reloaded": False, "error": app.reloads.last_error})

    for route in (
        Route("/metrics", ("GET", "HEAD"), metrics_page, public=True),
        Route("/healthz", ("GET", "HEAD"), healthz, public=True),
        Route("/readyz", ("GET", "HEAD"), readyz, public=True),
        Route("/status", ("GET", "HEAD"), status),
        Route("/cache", ("GET", "HEAD"), lookup),
        Route("/cache/flush", ("POST",), flush),
        Route("/reload", ("POST",), reload),
        *PinRoutes(lambda: app.pipeline, app.admin_stats, app.config.admin.max_pins).routes(),
    ):
        router.add(route)
    return router


def status_document(app) -> dict:
    """What ``resolver ctl status`` shows: version, uptime, upstreams, outage cover, cache."""
    now = app.clock.monotonic()
    wall_offset = app.clock.wall() - now
    upstreams = []
    for pool in app.router.pools:
        for u in pool.upstreams:
            h = pool.health[u.label]
            upstreams.append({
                "upstream": u.label,
                "up": h.up,
                "latency_ms": round(h.srtt * 1000, 1) if h.samples else None,
                "consecutive_failures": h.failures,
                "requests": pool.requests.get(u.label, 0),
            })
    episodes = app.episodes
    fresh, stale = app.cache.counts(now)
    down = [u["upstream"] for u in upstreams if not u["up"]]
    return {
        "version": app.version,
        "uptime_seconds": round(now - app.started_at, 3),
        "upstreams": upstreams,
        "outage": {
            # Covered = stale answers are being served in place of failing upstreams.
            "covering": episodes.active,
            "since": round(episodes.started + wall_offset, 3) if episodes.active else None,
            "stale_answers": episodes.total if episodes.active else 0,
            "upstreams_down": down,
        },
        "cache": {"entries": len(app.cache), "fresh": fresh, "stale": stale,
                  "max_entries": app.cache.max_entries, "evictions": app.cache.evictions},
        "pins": {"held": len(app.pipeline.lkg_pins), "max": app.config.admin.max_pins},
        "reloads": {"successes": app.reloads.successes, "failures": app.reloads.failures},
    }
