"""SIGHUP live reload: new upstreams and settings apply, the cache stays, a bad file changes nothing."""

from __future__ import annotations

import dataclasses
import signal

from resolver.config import Address, parse_upstream
from resolver.errors import ConfigError
from resolver.ops import reload as live_reload
from tests.support.client import ask, eventually
from tests.support.process import metric, start, wait_for_dns, write_config
from tests.support.unbound import free_port


def test_reload_switches_upstreams_and_keeps_the_cache(fake_upstream, second_upstream, start_forwarder):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    second_upstream.answer("new.test", "A", "192.0.2.2")
    fwd = start_forwarder([fake_upstream.address])
    ask(fwd.port, "www.test")
    app = fwd.app
    new = dataclasses.replace(app.config, upstreams=(parse_upstream(second_upstream.address, "upstreams[0]"),),
                              cache=dataclasses.replace(app.config.cache, max_entries=50),
                              stale=dataclasses.replace(app.config.stale, answer_ttl=7))
    assert live_reload.reload(lambda: new, app.reload, app.reloads, app.clock.wall)
    assert ask(fwd.port, "new.test").answer[0][0].address == "192.0.2.2"
    assert second_upstream.calls_for("new.test")
    assert ask(fwd.port, "www.test").answer[0][0].address == "192.0.2.1"  # cache kept
    assert not second_upstream.calls_for("www.test")
    assert app.cache.max_entries == 50 and app.pipeline.stale.answer_ttl == 7
    assert fwd.metric("resolver_config_reloads_total", result="success") == 1
    assert app.clock.wall() - 5 < fwd.metric("resolver_config_last_reload_success_timestamp_seconds") <= app.clock.wall()
    assert fwd.metric("resolver_upstream_requests_total", upstream=f"udp://{second_upstream.address}") == 1


def test_reload_refuses_listen_changes_and_bad_files(fake_upstream, start_forwarder, caplog):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    fwd = start_forwarder([fake_upstream.address])
    app = fwd.app
    before = app.config
    moved = dataclasses.replace(before, listen=(Address("127.0.0.1", free_port()),),
                                cache=dataclasses.replace(before.cache, max_entries=5))

    def bad_file():
        raise ConfigError("cache.max_entries", "expected an integer, got 'lots'")

    assert not live_reload.reload(lambda: moved, app.reload, app.reloads, app.clock.wall)
    assert not live_reload.reload(bad_file, app.reload, app.reloads, app.clock.wall)
    assert app.config is before and app.cache.max_entries == before.cache.max_entries
    errors = [r.getMessage() for r in caplog.records if r.name == "resolver.reload"]
    assert len(errors) == 2 and "listen" in errors[0] and "cache.max_entries" in errors[1]
    assert fwd.metric("resolver_config_reloads_total", result="failure") == 2
    assert ask(fwd.port, "www.test").answer[0][0].address == "192.0.2.1"


def test_sighup_reloads_the_file_in_a_real_process(fake_upstream, second_upstream, tmp_path):
    fake_upstream.answer("www.test", "A", "192.0.2.1")
    second_upstream.answer("new.test", "A", "192.0.2.2")
    port, mport = free_port(), free_port()
    head = f"listen: ['127.0.0.1:{port}']\nmetrics: {{listen: '127.0.0.1:{mport}'}}\n"
    path = write_config(tmp_path, head + f"upstreams: ['{fake_upstream.address}']\n")
    proc = start("--config", str(path))
    try:
        wait_for_dns(port)
        assert ask(port, "www.test").answer[0][0].address == "192.0.2.1"
        path.write_text(head + f"upstreams: ['{second_upstream.address}']\n")
        proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: metric(mport, "resolver_config_reloads_total", result="success") == 1, 10)
        assert ask(port, "new.test").answer[0][0].address == "192.0.2.2"
        assert ask(port, "www.test").answer[0][0].address == "192.0.2.1"  # from the kept cache
        path.write_text(head + "cache: {max_entries: lots}\n")
        proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: metric(mport, "resolver_config_reloads_total", result="failure") == 1, 10)
        assert ask(port, "new.test").answer[0][0].address == "192.0.2.2"  # still running, old config
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "reload refused" in err and "cache.max_entries" in err


def test_sighup_to_the_parent_reloads_every_worker(fake_upstream, second_upstream, tmp_path):
    from tests.support.process import metrics_ports, ready

    port = free_port()
    mport = metrics_ports(2, {port})
    head = f"listen: ['127.0.0.1:{port}']\nmetrics: {{listen: '127.0.0.1:{mport}'}}\nworkers: 2\n"
    path = write_config(tmp_path, head + f"upstreams: ['{fake_upstream.address}']\n")
    proc = start("--config", str(path))
    try:
        assert eventually(lambda: ready(mport) and ready(mport + 1), 20)
        path.write_text(head + f"upstreams: ['{second_upstream.address}']\n")
        proc.send_signal(signal.SIGHUP)
        for m in (mport, mport + 1):
            assert eventually(lambda: metric(m, "resolver_config_reloads_total", result="success") == 1, 10)
            assert metric(m, "resolver_worker") == m - mport
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
