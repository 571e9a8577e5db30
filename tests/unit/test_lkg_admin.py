"""Routing and input checks of the /lkg/* admin endpoints, without sockets."""

from __future__ import annotations

import pytest

from resolver import wire
from resolver.ops.admin import AdminStats, Router
from resolver.ops.lkg_admin import PinRoutes

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


def make(max_pins: int = 1000):
    pipe = StubPipeline()
    admin = Router(AdminStats())
    for route in PinRoutes(lambda: pipe, admin.stats, max_pins).routes():
        admin.add(route)
    return admin, pipe


def test_pin_list_unpin():
    admin, pipe = make()
    pipe.cached.add(Q_A)
    assert admin.handle("POST", "/lkg/pin?name=API.Example.com.&type=a") == (200, "text/plain; charset=utf-8", b"pinned (records held)\n")
    assert pipe.lkg_pins == {Q_A}
    status, _, body = admin.handle("POST", "/lkg/pin?name=other.example&type=28")
    assert status == 200 and b"no positive records cached now" in body
    assert admin.handle("GET", "/lkg/pins")[2] == b"api.example.com. A\nother.example. AAAA\n"
    assert admin.handle("POST", "/lkg/unpin?name=api.example.com")[::2] == (200, b"unpinned\n")
    assert admin.handle("POST", "/lkg/unpin?name=api.example.com")[2] == b"was not pinned\n"
    assert admin.stats.actions == {"pin": 2, "unpin": 1}  # "was not pinned" changed nothing


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


def test_pins_are_bounded_and_every_change_is_an_audit_line(caplog):
    admin, pipe = make(max_pins=3)
    for i in range(3):
        assert admin.handle("POST", f"/lkg/pin?name=n{i}.example")[0] == 200
    assert admin.handle("POST", "/lkg/pin?name=again.example")[0] == 507
    assert admin.handle("POST", "/lkg/pin?name=n0.example")[0] == 200  # re-pinning a held pin is fine
    assert len(pipe.lkg_pins) == 3
    assert admin.handle("POST", "/lkg/unpin?name=n1.example")[0] == 200
    assert admin.handle("POST", "/lkg/pin?name=again.example")[0] == 200
    lines = [r for r in caplog.records if getattr(r, "event", "") == "admin_action"]
    assert [(r.action, r.target) for r in lines] == [
        ("pin", "n0.example. A"), ("pin", "n1.example. A"), ("pin", "n2.example. A"), ("pin", "n0.example. A"),
        ("unpin", "n1.example. A"), ("pin", "again.example. A")]
    assert all(r.peer == "127.0.0.1" for r in lines)
    assert admin.stats.actions == {"pin": 5, "unpin": 1}


def test_pin_listing_is_written_in_chunks():
    import asyncio

    from resolver.ops.admin import Gate, Request
    from resolver.ops.lkg_admin import LISTING_CHUNK

    admin, pipe = make(max_pins=10_000)
    for i in range(LISTING_CHUNK * 2 + 5):
        pipe.lkg_pins.add(wire.name_to_wire(f"n{i:05d}.example") + b"\x00\x01\x00\x01")
    reply = asyncio.run(admin.dispatch(Request("GET", "/lkg/pins", peer="127.0.0.1"), Gate(True)))
    chunks = list(reply.body)
    assert len(chunks) == 3 and sum(c.count(b"\n") for c in chunks) == LISTING_CHUNK * 2 + 5
