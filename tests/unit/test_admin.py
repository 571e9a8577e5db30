"""The HTTP route table and its one gate, without sockets.

Every route the admin server has is walked (``App.http_routes.routes``), so a route
added later is checked here without anyone remembering to list it: a request from a
non-loopback address, without the token, or on the public metrics listener is refused
on each, except /metrics, /healthz and /readyz.
"""

from __future__ import annotations

import pytest

from resolver import wire
from resolver.app import App
from resolver.clock import FakeClock
from resolver.ops.admin import BadRequest, Gate, default_socket_path, parse_head
from tests.support.forwarder import forwarder_config

PUBLIC = {"/metrics", "/healthz", "/readyz"}
TOKEN = b"s3cret-token-0123456789"
Q_A = wire.name_to_wire("www.test") + b"\x00\x01\x00\x01"


def make_app(ready: bool = True) -> App:
    app = App(forwarder_config(["127.0.0.1:1053"]), FakeClock())
    app.ready = ready
    return app


def target(path: str) -> str:
    """A request that would change state or show something if it were let through."""
    return {"/cache": "/cache?name=www.test", "/lkg/pin": "/lkg/pin?name=www.test&type=A",
            "/lkg/unpin": "/lkg/unpin?name=www.test&type=A"}.get(path, path)


def every_request(app: App):
    for route in app.http_routes.routes.values():
        for method in route.methods:
            yield route, method


def test_the_table_has_the_known_routes():
    routes = make_app().http_routes.routes
    assert PUBLIC | {"/cache", "/cache/flush", "/lkg/pin", "/lkg/unpin", "/lkg/pins", "/status", "/reload"} \
        == set(routes)
    assert {p for p, r in routes.items() if r.public} == PUBLIC


@pytest.mark.parametrize("peer", ["192.0.2.7", "10.0.0.5", "2001:db8::1", "127.0.0.1"])
def test_metrics_listener_serves_only_public_routes(peer):
    app = make_app()
    app.pipeline.lkg_pins.add(Q_A)
    for route, method in every_request(app):
        status, _, body = app.http_routes.handle(method, target(route.path), peer=peer, gate=Gate(False),
                                                 listener="metrics")
        if route.path in PUBLIC:
            assert status == 200, route.path
        else:
            assert status == 403 and b"admin listener only" in body, (route.path, method)
    assert app.pipeline.lkg_pins == {Q_A}  # nothing unpinned
    assert app.admin_stats.denied["metrics"] == sum(1 for r, _ in every_request(app) if not r.public)


@pytest.mark.parametrize("peer", ["192.0.2.7", "10.1.2.3", "2001:db8::1", "::ffff:192.0.2.7"])
def test_admin_listener_refuses_non_loopback_clients_on_every_privileged_route(peer):
    app = make_app()
    for route, method in every_request(app):
        status, _, _ = app.http_routes.handle(method, target(route.path), peer=peer, gate=Gate(True))
        assert (status == 200) if route.path in PUBLIC else (status == 403), (route.path, method)
    assert app.pipeline.lkg_pins == set()
    assert app.admin_stats.actions == {}


def test_admin_listener_with_a_token_wants_it_from_everyone_on_tcp():
    app = make_app()
    gate = Gate(True, TOKEN)
    for route, method in every_request(app):
        if route.public:
            continue
        for peer in ("127.0.0.1", "192.0.2.7"):
            for headers in ({}, {"Authorization": "Bearer wrong-token-0000000000"}, {"Authorization": "Basic x"},
                            {"Authorization": "Bearer " + TOKEN.decode() + "x"}):
                status, _, _ = app.http_routes.handle(method, target(route.path), headers, peer=peer, gate=gate)
                assert status == 401, (route.path, method, peer, headers)
    assert app.pipeline.lkg_pins == set()
    ok = {"Authorization": "Bearer " + TOKEN.decode()}
    assert app.http_routes.handle("POST", target("/lkg/pin"), ok, peer="192.0.2.7", gate=gate)[0] == 200
    assert app.pipeline.lkg_pins == {Q_A}


def test_unix_socket_clients_pass_the_gate_and_loopback_without_token_too():
    app = make_app()
    for peer in ("unix", "127.0.0.1", "::1"):
        assert app.http_routes.handle("GET", "/status", peer=peer, gate=Gate(True))[0] == 200
    assert app.http_routes.handle("GET", "/status", peer="unix", gate=Gate(True, TOKEN))[0] == 200


def test_cross_origin_posts_are_refused():
    app = make_app()
    status, _, _ = app.http_routes.handle("POST", "/lkg/pin?name=www.test", {"Origin": "http://evil.example"})
    assert status == 403 and app.pipeline.lkg_pins == set()


def test_public_routes():
    app = make_app()
    assert app.http_routes.handle("GET", "/metrics")[0] == 200
    assert b"resolver_build_info" in app.http_routes.handle("GET", "/metrics")[2]
    assert app.http_routes.handle("GET", "/healthz")[:2] == (200, "text/plain; charset=utf-8")
    assert app.http_routes.handle("GET", "/healthz?verbose=1")[0] == 200
    assert app.http_routes.handle("GET", "/readyz")[0] == 200
    assert make_app(ready=False).http_routes.handle("GET", "/readyz")[0] == 503
    assert make_app(ready=False).http_routes.handle("GET", "/healthz")[0] == 200


def test_unknown_paths_and_methods():
    app = make_app()
    assert app.http_routes.handle("GET", "/nope")[0] == 404
    assert app.http_routes.handle("POST", "/metrics")[0] == 405
    assert app.http_routes.handle("GET", "/cache/flush")[0] == 405  # GET must not flush
    assert app.http_routes.handle("GET", "/reload")[0] == 405


@pytest.mark.parametrize("head", [
    b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", b"HEAD /metrics HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET /x HTTP/1.0\r\n\r\n",  # HTTP/1.0 has no Host requirement
])
def test_parse_head_accepts(head):
    method, target_, headers = parse_head(head)
    assert method in ("GET", "HEAD") and target_.startswith("/")


@pytest.mark.parametrize("head", [
    b"\xff\xfe GARBAGE\r\n\r\n", b"GET /x\r\n\r\n", b"DELETE /x HTTP/1.1\r\n\r\n", b"GET x HTTP/1.1\r\n\r\n",
    b"GET /a\x1bb HTTP/1.1\r\n\r\n", b"GET /x HTTP/2\r\n\r\n", b"GET /x HTTP/1.1\r\n folded\r\n\r\n",
    b"GET /x HTTP/1.1\r\nBad Name: 1\r\n\r\n", b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"A: 1\r\n" * 64 + b"\r\n",
    b"GET /x HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host: 400 (RFC 9112 §3.2)
    b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",  # two Hosts (RFC 9112 §3.2)
])
def test_parse_head_refuses(head):
    with pytest.raises(BadRequest):
        parse_head(head)


def test_default_socket_path_choices():
    assert default_socket_path({"RESOLVER_ADMIN_SOCKET": "/x/a.sock"}, 0) == "/x/a.sock"
    assert default_socket_path({"RUNTIME_DIRECTORY": "/run/resolver"}, 999) == "/run/resolver/admin.sock"
    assert default_socket_path({}, 0) == "/run/resolver/admin.sock"
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/1000"}, 1000) == "/run/user/1000/resolver/admin.sock"
    assert default_socket_path({}, 1000) == "/tmp/resolver-1000/admin.sock"


def test_each_worker_gets_its_own_admin_socket():
    import dataclasses

    from resolver.cli import for_worker
    from resolver.config import AdminConfig

    config = dataclasses.replace(make_app().config, admin=AdminConfig(socket="/run/resolver/admin.sock",
                                                                      listen="127.0.0.1:8953"))
    assert for_worker(config, 0).admin == config.admin
    assert for_worker(config, 2).admin.socket == "/run/resolver/admin.sock.2"
    assert for_worker(config, 2).admin.listen == "127.0.0.1:8955"
