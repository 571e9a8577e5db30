"""The grown cache is frozen out of the garbage collector's full passes (App.freeze_long_lived)."""

from __future__ import annotations

import gc

from resolver import app as app_module
from resolver import wire
from resolver.app import App
from resolver.config import Address, Config, MetricsConfig, parse_upstream


def _fill(app: App, n: int) -> None:
    now = app.clock.monotonic()
    for i in range(n):
        question = wire.name_to_wire(f"h{i}.example") + b"\x00\x01\x00\x01"
        reply = (b"\x00\x00\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question
                 + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x01\x2c\x00\x04\xc0\x00\x02\x01")
        app.cache.put(wire.question_key(question, 0),
                      wire.parse_reply(reply, question, min_ttl=0, max_ttl=86400, max_negative_ttl=3600),
                      now, 86400)


def test_freeze_only_after_real_growth_and_entries_still_freed(monkeypatch):
    monkeypatch.setattr(app_module, "FREEZE_MIN_ENTRIES", 1000)
    config = Config(listen=(Address("127.0.0.1", 0),), upstreams=(parse_upstream("192.0.2.1", "u"),),
                    metrics=MetricsConfig(enabled=False))
    app = App(config)
    try:
        _fill(app, 500)
        assert not app.freeze_long_lived()  # small cache: nothing to gain
        _fill(app, 2000)
        before = gc.get_freeze_count()
        assert app.freeze_long_lived()
        assert gc.get_freeze_count() > before
        assert not app.freeze_long_lived()  # no growth since: no second freeze
        # Frozen entries are still released by reference counting when evicted.
        key = next(iter(app.cache.entries))
        import weakref

        class Probe:  # a weak-referenceable stand-in placed where an entry's body lives
            pass

        probe = Probe()
        ref = weakref.ref(probe)
        app.cache.entries[key].stale_body = probe
        del probe
        app.cache.remove(key)
        assert ref() is None
    finally:
        gc.unfreeze()
