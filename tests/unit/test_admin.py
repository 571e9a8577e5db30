"""Routing of the admin listener, without sockets."""

from resolver.admin import AdminServer


def make(ready=True):
    return AdminServer(lambda: b"resolver_up 1\n", lambda: ready)


def test_routes():
    admin = make()
    assert admin.handle("GET", "/metrics")[0] == 200
    assert admin.handle("GET", "/metrics")[2] == b"resolver_up 1\n"
    assert admin.handle("GET", "/healthz") == (200, "text/plain", b"ok\n")
    assert admin.handle("GET", "/readyz")[0] == 200
    assert admin.handle("GET", "/healthz?verbose=1")[0] == 200


def test_not_ready_until_listeners_bound():
    assert make(ready=False).handle("GET", "/readyz")[0] == 503
    assert make(ready=False).handle("GET", "/healthz")[0] == 200


def test_unknown_paths_and_methods():
    admin = make()
    assert admin.handle("GET", "/nope")[0] == 404
    assert admin.handle("POST", "/metrics")[0] == 405
    assert admin.handle("GET", "")[0] == 404
