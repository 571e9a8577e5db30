"""The cache survives a restart: warm through a real Unbound, stop, start again with the
upstream dead — the first query is answered from the snapshot.  And a bad snapshot
file or an unwritable path never stops the forwarder."""

from __future__ import annotations

import logging

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from resolver.cache import snapshot
from tests.support.client import ask, eventually


def test_restart_during_outage_answers_from_the_snapshot(unbound, fake_upstream, start_forwarder, tmp_path):
    path = str(tmp_path / "cache.snap")
    first = start_forwarder([unbound.address], cache={"persist": {"engine": "snapshot", "path": path, "interval": 3600}})
    assert ask(first.port, "www.test").answer[0][0].address == "192.0.2.1"
    assert ask(first.port, "v6.test", "AAAA").rcode() == dns.rcode.NOERROR
    first.stop()  # clean shutdown writes the snapshot
    assert first.app.persist.stats.saves == 1

    # The new process: upstream silent (an outage), clock past the TTL.
    fake_upstream.mode("drop")
    second = start_forwarder([fake_upstream.address], cache={"persist": {"engine": "snapshot", "path": path}},
                             stale={"client_timeout": 0.2})
    assert second.metric("resolver_cache_snapshot_loaded_entries") == 2
    fresh = ask(second.port, "www.test")
    assert fresh.answer[0][0].address == "192.0.2.1"
    assert 290 <= fresh.answer[0].ttl <= 300
    assert fake_upstream.calls == []  # fresh from the snapshot: upstream not asked
    second.advance(400)  # expired: now it is served stale (RFC 8767), not SERVFAIL
    stale = ask(second.port, "v6.test", "AAAA")
    assert stale.rcode() == dns.rcode.NOERROR
    assert stale.answer[0].ttl == 30


def test_snapshot_written_periodically(unbound, start_forwarder, tmp_path):
    path = tmp_path / "cache.snap"
    fwd = start_forwarder([unbound.address], cache={"persist": {"engine": "snapshot", "path": str(path), "interval": 0.2}})
    ask(fwd.port, "www.test")
    assert eventually(lambda: fwd.metric("resolver_cache_snapshot_entries") == 1, timeout=10)
    assert fwd.metric("resolver_cache_snapshot_saves_total") >= 1
    _, records = snapshot.decode(path.read_bytes())
    assert len(records) == 1


def test_corrupt_snapshot_warns_once_and_starts_empty(fake_upstream, start_forwarder, tmp_path, caplog):
    path = tmp_path / "cache.snap"
    path.write_bytes(b"RSLVSNAP" + b"\xff" * 100)
    fake_upstream.answer("www.test", "A", "192.0.2.9")
    with caplog.at_level(logging.WARNING, logger="resolver.persist"):
        fwd = start_forwarder([fake_upstream.address], cache={"persist": {"engine": "snapshot", "path": str(path)}})
    warnings = [r for r in caplog.records if r.name == "resolver.persist"]
    assert len(warnings) == 1 and "empty cache" in warnings[0].getMessage()
    assert fwd.metric("resolver_cache_snapshot_load_failures_total") == 1
    assert ask(fwd.port, "www.test").answer[0][0].address == "192.0.2.9"


def test_unwritable_path_counts_failures_and_keeps_serving(fake_upstream, start_forwarder, tmp_path, caplog):
    path = tmp_path / "missing-dir" / "cache.snap"
    fake_upstream.answer("www.test", "A", "192.0.2.9")
    fwd = start_forwarder([fake_upstream.address], cache={"persist": {"engine": "snapshot", "path": str(path), "interval": 0.1}})
    assert eventually(lambda: fwd.metric("resolver_cache_snapshot_save_failures_total") >= 2, timeout=10)
    assert ask(fwd.port, "www.test").answer[0][0].address == "192.0.2.9"
    assert fwd.metric("resolver_cache_snapshot_saves_total") == 0
