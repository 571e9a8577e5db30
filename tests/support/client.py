"""Talking to a forwarder under test as a client would, over 127.0.0.1 only.

One ``ask`` (dnspython, UDP or TCP), ``dig`` for the real tool's view, raw datagrams and
TCP framing for malformed input, and the readers tests share (TTLs, EDE codes).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import dns.edns
import dns.message
import dns.query


def ask(port: int, name: str, rtype: str = "A", *, tcp: bool = False, timeout: float = 3.0,
        edns: int | None = 0) -> dns.message.Message:
    """One question to 127.0.0.1:``port``; ``edns`` is the EDNS version sent (None: no OPT record)."""
    q = dns.message.make_query(name, rtype, use_edns=edns)
    send = dns.query.tcp if tcp else dns.query.udp
    return send(q, "127.0.0.1", port=port, timeout=timeout)


def dig(port: int, *args: str) -> str:
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+tries=1", "+time=3", *args],
                         capture_output=True, text=True, timeout=15)
    return out.stdout


def eventually(check, timeout: float = 3.0) -> bool:
    """Poll ``check`` until true or ``timeout`` passes (for effects of background tasks)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


def ttls(msg: dns.message.Message) -> set[int]:
    return {rrset.ttl for rrset in msg.answer}


def ede_codes(msg: dns.message.Message) -> list[int]:
    return [o.code for o in msg.options if o.otype == dns.edns.OptionType.EDE]


def udp_exchange(port: int, data: bytes, timeout: float = 0.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def tcp_connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=3)
    return s


def read_msg(s: socket.socket) -> bytes:
    size = struct.unpack(">H", _recv_exact(s, 2))[0]
    return _recv_exact(s, size)


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf
