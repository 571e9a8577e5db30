"""Unit tests for resolver.handover's pure part and its refusal to crash on bad handles."""

from __future__ import annotations

import struct

from resolver import handover


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
