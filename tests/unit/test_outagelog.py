"""The "serving stale" episode log: one line in, rate-limited lines during, one line out."""

from __future__ import annotations

import logging

from resolver.clock import FakeClock
from resolver.ops.outagelog import StaleEpisodes
from resolver.stats import Stats
from resolver.upstream.pool import Health


class Pool:
    def __init__(self):
        self.health = {"udp://192.0.2.1:53": Health()}


def make():
    stats, pool, clock = Stats(), Pool(), FakeClock()
    return StaleEpisodes(stats, lambda: pool, clock.monotonic, report_every=60), stats, pool, clock


def lines(caplog):
    out = [r.getMessage() for r in caplog.records if r.name == "resolver.stale"]
    caplog.clear()
    return out


def test_episode_start_progress_and_end(caplog):
    caplog.set_level(logging.INFO)
    episodes, stats, pool, clock = make()
    episodes.tick()
    assert lines(caplog) == []  # nothing stale: nothing logged
    pool.health["udp://192.0.2.1:53"].up = False
    stats.stale_answers["timeout"] += 3
    stats.tally.cell(b"\x03www\x04test\x00\x00\x01\x00\x01", 0).stale += 2  # hit-path recheck answers
    clock.advance(10)
    episodes.tick()
    assert lines(caplog) == ["serving stale answers: upstreams failing (recheck=2, timeout=3); "
                             "upstreams down: udp://192.0.2.1:53"]
    for _ in range(5):  # 50 s: under report_every, nothing more
        stats.stale_answers["timeout"] += 1
        clock.advance(10)
        episodes.tick()
    assert lines(caplog) == []
    stats.stale_answers["timeout"] += 1
    clock.advance(10)
    episodes.tick()
    assert lines(caplog) == ["still serving stale: 6 answers in the last 60s (timeout=6); "
                             "upstreams down: udp://192.0.2.1:53"]
    clock.advance(10)
    episodes.tick()
    assert lines(caplog) == ["stopped serving stale after 70s: 11 stale answers in all"]
    clock.advance(10)
    episodes.tick()
    assert lines(caplog) == []


def test_json_log_lines_carry_event_fields():
    """With logging.format json, the episode lines are filterable by their fields."""
    import json

    from resolver.cli import _JsonFormatter

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep()
    logging.getLogger("resolver.stale").addHandler(handler)
    try:
        episodes, stats, pool, clock = make()
        pool.health["udp://192.0.2.1:53"].up = False
        stats.stale_answers["servfail"] += 4
        episodes.tick()
    finally:
        logging.getLogger("resolver.stale").removeHandler(handler)
    doc = json.loads(_JsonFormatter().format(records[0]))
    assert doc["event"] == "stale_started" and doc["answers"] == 4 and doc["reasons"] == {"servfail": 4}
    assert doc["upstreams_down"] == ["udp://192.0.2.1:53"] and doc["level"] == "warning"
    assert doc["msg"].startswith("serving stale answers")
