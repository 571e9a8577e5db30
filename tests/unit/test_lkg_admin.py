"""Routing and input checks of the /lkg/* admin endpoints, without sockets."""

from __future__ import annotations

import pytest

from resolver import wire
from resolver.admin import AdminServer
from resolver.lkg_admin import PinHandler

Q_A = wire.name_to_wire("api.example.com") + b"\x00\x01\x00\x01"


class StubPipeline:
    def __init__(self):
        self.lkg_pins: set[bytes] = set()
        self.cached = set()

    def pin(self, question):
        self.lkg_pins.add(question)
        return question in self.cached

    def unpin(self, question):
        was = question in self.lkg_pins
        self.lkg_pins.discard(question)
        return was


def make():
    pipe = StubPipeline()
    admin = AdminServer(lambda: b"", lambda: True)
    admin.handlers.append(PinHandler(lambda: pipe))
    return admin, pipe


def test_pin_list_unpin():
    admin, pipe = make()
    pipe.cached.add(Q_A)
    assert admin.handle("POST", "/lkg/pin?name=API.Example.com.&type=a") == (200, "text/plain", b"pinned (records held)\n")
    assert pipe.lkg_pins == {Q_A}
    status, _, body = admin.handle("POST", "/lkg/pin?name=other.example&type=28")
    assert status == 200 and b"no positive records cached now" in body
    assert admin.handle("GET", "/lkg/pins")[2] == b"api.example.com. A\nother.example. AAAA\n"
    assert admin.handle("POST", "/lkg/unpin?name=api.example.com") == (200, "text/plain", b"unpinned\n")
    assert admin.handle("POST", "/lkg/unpin?name=api.example.com")[2] == b"was not pinned\n"
    assert admin.handle("GET", "/metrics")[0] == 200  # other routes untouched


@pytest.mark.parametrize("target", [
    "/lkg/pin", "/lkg/pin?", "/lkg/pin?name=", "/lkg/pin?name=a&name=b", "/lkg/pin?name=x&type=NOPE",
    "/lkg/pin?name=x&type=70000", "/lkg/pin?name=x&type=0", "/lkg/pin?name=" + "a" * 64 + ".com",
    "/lkg/pin?name=" + ".".join(["abcdefghi"] * 30), "/lkg/pin?name=%FF%FE", "/lkg/pin?name=caf%C3%A9.com",
    "/lkg/pin?name=x&type=A;B", "/lkg/pin?name=x&type=__class__", "/lkg/pin?" + "a=1&" * 600,
    "/lkg/pin?name=x&type=A&type=AAAA", "/lkg/unpin?%%%", "/lkg/pin?name=bad..name", "/lkg/pin?name=.x",
    "/lkg/pin?name=x&type=%C2%B2",
])
def test_garbage_is_400_and_pins_nothing(target):
    admin, pipe = make()
    status, _, _ = admin.handle("POST", target)
    assert status == 400
    assert pipe.lkg_pins == set()


def test_methods():
    admin, _ = make()
    assert admin.handle("GET", "/lkg/pin?name=x")[0] == 405
    assert admin.handle("POST", "/lkg/pins")[0] == 405
    assert admin.handle("GET", "/lkg/other")[0] == 404
