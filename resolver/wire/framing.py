"""DNS over a byte stream (TCP, TLS): each message is preceded by its length as a
two-octet big-endian number (RFC 1035 §4.2.2, RFC 7766 §8).

Sans-IO: the callers read and write; this module only frames and unframes, so
every stream transport (the TCP listener, the TCP fallback upstream, DNS over TLS)
writes the prefix the same way.
"""

from __future__ import annotations

import struct

PREFIX_LEN = 2
MAX_MESSAGE = 65535  # the largest length two octets can carry
_U16 = struct.Struct(">H")


def frame(message: bytes) -> bytes:
    """``message`` with its length prefix, ready to write to the stream.

    A message over 65535 octets cannot be framed (struct.error): callers render
    replies within that limit (the TCP limit passed to ``render``)."""
    return _U16.pack(len(message)) + message


def frame_length(prefix: bytes) -> int:
    """The length of the message that follows a two-octet prefix read from the stream."""
    return _U16.unpack(prefix)[0]
