"""Unit tests for resolver.handover's pure part and its refusal to crash on bad handles."""

from __future__ import annotations

import struct

from resolver.serve import handover


def test_steering_program_selects_a_successor_socket():
    code = handover.steering_program(3)
    insns = [struct.unpack("=HBBI", code[i:i + 8]) for i in range(0, len(code), 8)]
    assert [op for op, *_ in insns] == [0x20, 0x94, 0x04, 0x16]  # ld cpu; mod 3; add 3; ret a
    assert insns[1][3] == 3 and insns[2][3] == 3
    assert insns[0][3] == (-0x1000 + 36) & 0xFFFFFFFF  # SKF_AD_OFF + SKF_AD_CPU


def test_bad_handles_are_refused_not_raised():
    assert handover.steer_away(-1, 1) is False
    assert handover.unsteer(-1) is False
    assert handover.read_queued_datagrams(-1) == []
    assert handover.accept_queued(-1) == []


def test_readyz_names_the_process_and_answers_only_for_its_pid():
    """Both processes of a handover answer on the metrics port: ``?pid=`` picks one."""
    from resolver.serve.handover import readiness_route

    state = {"ready": False}
    route = readiness_route(lambda: state["ready"], (4242,))
    assert route("GET", "/metrics") is None and route("POST", "/readyz") is None
    assert route("GET", "/readyz") == (503, "text/plain", b"not ready pid=4242\n")
    state["ready"] = True
    assert route("GET", "/readyz") == (200, "text/plain", b"ready pid=4242\n")
    assert route("GET", "/readyz?pid=4242")[0] == 200
    assert route("GET", "/readyz?pid=17") == (503, "text/plain", b"not this instance: pid=4242\n")
    worker = readiness_route(lambda: True, (4243, 4000))  # a worker: its supervisor's pid counts too
    assert worker("GET", "/readyz?pid=4000") == (200, "text/plain", b"ready pid=4243 supervisor=4000\n")
