"""The host cache tier in a running forwarder (in-process, real sockets, fake clock):
an entry found there is served like a local one, and no file problem stops serving.

Each fault — a foreign file at the path, a corrupt file, a truncated file, an
unwritable path, a full disk — must end as one warning, the process answering from
its in-process cache, nothing crashed (a crash in LMDB would take the test process
with it: these run in-process on purpose).
"""

from __future__ import annotations

import logging
import os
import subprocess

import dns.rcode
import pytest

from tests.support.client import ask, eventually
from tests.support.client import ede_codes as ede

STALE_TTL = 30


def host(path, **extra) -> dict:
    return {"persist": {"path": str(path), **extra}}


def hostcache_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "resolver.hostcache" and r.levelno >= logging.WARNING]


def test_an_entry_from_the_host_tier_is_served_stale_like_a_local_one(fake_upstream, start_forwarder, tmp_path):
    """RFC 8767 from L2: EDE 3, TTL answer_ttl, and the failure recheck timer (no upstream
    query for every client while it runs) — the pipeline's own rules, unchanged."""
    path = tmp_path / "cache.lmdb"
    fake_upstream.answer("www.test", "A", "192.0.2.7", ttl=60)
    first = start_forwarder([fake_upstream.address], cache=host(path))
    assert ask(first.port, "www.test").answer[0][0].address == "192.0.2.7"
    assert eventually(lambda: first.metric("resolver_host_cache_entries") == 1, timeout=5)
    first.stop()

    fake_upstream.reset_calls()
    fake_upstream.mode("drop")
    second = start_forwarder([fake_upstream.address], cache=host(path), stale={"client_timeout": 0.2})
    assert len(second.app.cache) == 0  # opened, not loaded
    fresh = ask(second.port, "www.test")  # fresh from L2: upstream not asked
    assert fresh.answer[0][0].address == "192.0.2.7" and 50 <= fresh.answer[0].ttl <= 60
    assert fake_upstream.calls == []
    second.advance(120)
    stale = ask(second.port, "www.test")
    assert stale.rcode() == dns.rcode.NOERROR and stale.answer[0][0].address == "192.0.2.7"
    assert ede(stale) == [3] and stale.answer[0].ttl == STALE_TTL
    calls = len(fake_upstream.calls)
    for _ in range(5):  # under the recheck timer: answered stale at once, upstream left alone
        again = ask(second.port, "www.test")
        assert ede(again) == [3] and again.answer[0].ttl == STALE_TTL
    assert len(fake_upstream.calls) == calls
    assert second.metric("resolver_cache_tier_lookups_total", tier="host", result="hit") >= 1


def test_a_foreign_file_at_the_path_is_one_warning_and_left_alone(fake_upstream, start_forwarder, tmp_path, caplog):
    path = tmp_path / "cache.lmdb"
    path.write_text("somebody's notes, not a cache\n" * 500)
    fake_upstream.answer("www.test", "A", "192.0.2.9")
    with caplog.at_level(logging.WARNING, logger="resolver.hostcache"):
        fwd = start_forwarder([fake_upstream.address], cache=host(path))
        assert ask(fwd.port, "www.test").answer[0][0].address == "192.0.2.9"
        assert ask(fwd.port, "www.test").answer[0][0].address == "192.0.2.9"  # from memory
    assert len(hostcache_warnings(caplog)) == 1
    assert fwd.metric("resolver_host_cache_up") == 0 and fwd.metric("resolver_host_cache_open_failures_total") == 1
    assert path.read_text().startswith("somebody's notes")


def test_an_unwritable_path_is_one_warning_and_serving_goes_on(fake_upstream, start_forwarder, tmp_path, caplog):
    (tmp_path / "state").write_text("a file where the directory should be")  # fails even for root
    fake_upstream.answer("www.test", "A", "192.0.2.9")
    with caplog.at_level(logging.WARNING, logger="resolver.hostcache"):
        fwd = start_forwarder([fake_upstream.address], cache=host(tmp_path / "state" / "cache.lmdb"))
        assert ask(fwd.port, "www.test").answer[0][0].address == "192.0.2.9"
    assert len(hostcache_warnings(caplog)) == 1
    assert fwd.metric("resolver_host_cache_up") == 0


def _fill(fake_upstream, start_forwarder, path, count: int) -> None:
    for i in range(count):
        fake_upstream.answer(f"n{i}.test", "A", f"192.0.2.{i % 250 + 1}", ttl=300)
    fwd = start_forwarder([fake_upstream.address], cache=host(path))
    for i in range(count):
        ask(fwd.port, f"n{i}.test")
    fwd.stop()


def test_a_corrupt_value_is_refused_and_never_served(fake_upstream, start_forwarder, tmp_path, caplog):
    path = tmp_path / "cache.lmdb"
    _fill(fake_upstream, start_forwarder, path, 20)
    data = bytearray(path.read_bytes())
    # n7.test's value: its magic then its record; flip a byte of the record (a stored
    # time), inside the value and outside LMDB's own page structures.
    name = b"\x02n7\x04test\x00"
    at = next(i for i in range(len(data)) if data.startswith(b"RSLV\x00\x01", i)
              and data.startswith(name, i + 6 + 36))  # magic, version, record header (36 bytes), key
    data[at + 6 + 20] ^= 0xFF
    path.write_bytes(bytes(data))
    fake_upstream.mode("drop")
    with caplog.at_level(logging.WARNING, logger="resolver.hostcache"):
        # A short total_timeout: with the upstream dropping, the damaged name's SERVFAIL comes
        # when the upstream exchange gives up, well inside the client's 3 s.
        fwd = start_forwarder([fake_upstream.address], cache=host(path), stale={"client_timeout": 0.2},
                              upstream={"attempt_timeout": 0.3, "total_timeout": 1.0})
        others = [ask(fwd.port, f"n{i}.test") for i in range(20) if i != 7]
        damaged = ask(fwd.port, "n7.test")
    assert all(r.rcode() == dns.rcode.NOERROR for r in others)  # the rest of the file is fine
    assert damaged.rcode() == dns.rcode.SERVFAIL  # refused, not served; upstream down: SERVFAIL
    assert fwd.metric("resolver_host_cache_rejected_values_total") == 1
    assert len(hostcache_warnings(caplog)) == 1


def test_a_truncated_file_is_refused_at_open_not_a_crash(fake_upstream, start_forwarder, tmp_path, caplog):
    """Reading a page past the end of a mapped file is SIGBUS: the open must refuse the file."""
    path = tmp_path / "cache.lmdb"
    _fill(fake_upstream, start_forwarder, path, 300)
    size = path.stat().st_size
    os.truncate(path, size // 2)
    with caplog.at_level(logging.WARNING, logger="resolver.hostcache"):
        fwd = start_forwarder([fake_upstream.address], cache=host(path))
        for i in range(300):
            assert ask(fwd.port, f"n{i}.test").rcode() == dns.rcode.NOERROR
    warnings = hostcache_warnings(caplog)
    assert len(warnings) == 1 and "truncated" in warnings[0]
    assert fwd.metric("resolver_host_cache_up") == 0


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 192 KiB tmpfs (mounting needs root: skipped otherwise) — a disk that fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_counted_and_logged_and_serving_goes_on(fake_upstream, start_forwarder, small_tmpfs, caplog):
    """1,500 names into a 192 KiB disk: it fills up.  The tier counts it (full_total) and makes
    room by evicting; whatever still cannot be written is counted (write errors, dropped writes)
    and logged at most once a minute.  Which of the two happens depends on how the writes fall
    into batches (timing), so the test takes either — before, it required a write error and
    failed whenever eviction made room every time (the disk full, 881 entries kept, 0 errors)."""
    count = 1500
    for i in range(count):
        fake_upstream.answer(f"n{i}.test", "A", f"192.0.2.{i % 250 + 1}", ttl=300)
    with caplog.at_level(logging.WARNING, logger="resolver.hostcache"):
        fwd = start_forwarder([fake_upstream.address], cache=host(small_tmpfs / "cache.lmdb"))
        for i in range(count):
            assert ask(fwd.port, f"n{i}.test").rcode() == dns.rcode.NOERROR
        assert eventually(lambda: fwd.metric("resolver_host_cache_full_total") >= 1, timeout=30)  # a loaded machine
        assert eventually(lambda: fwd.metric("resolver_host_cache_evictions_total")
                          + fwd.metric("resolver_host_cache_write_errors_total") >= 1, timeout=30)
        fake_upstream.mode("drop")
        fwd.advance(400)  # everything expired; the upstream down: all from memory, stale
        for i in range(0, count, 50):
            reply = ask(fwd.port, f"n{i}.test")
            assert reply.rcode() == dns.rcode.NOERROR and ede(reply) == [3]
    assert fwd.metric("resolver_host_cache_entries") > 0  # what fitted is kept, not wiped
    warnings = len(hostcache_warnings(caplog))
    assert warnings <= 2  # logged at most once a minute
    if fwd.metric("resolver_host_cache_write_errors_total"):
        assert warnings >= 1  # a failed write is logged (write failed, or entries not written)


def test_a_reload_cannot_move_the_host_tier(fake_upstream, start_forwarder, tmp_path):
    """The file is open and shared with the other workers: a new path or size needs a restart
    (a reload applying it in one worker would split the tier); the running config stays."""
    import dataclasses

    from resolver.errors import ConfigError

    fwd = start_forwarder([fake_upstream.address], cache=host(tmp_path / "cache.lmdb"))
    config = fwd.app.config
    moved = dataclasses.replace(config, cache=dataclasses.replace(
        config.cache, persist=dataclasses.replace(config.cache.persist, path=str(tmp_path / "other.lmdb"))))
    with pytest.raises(ConfigError) as info:
        fwd.app.reload(moved)
    assert info.value.key == "cache.persist"
    assert fwd.app.config is config and fwd.metric("resolver_host_cache_up") == 1
