"""The ceiling for any Python DNS server on this machine (issue 3's reference).

A uvloop UDP server that does nothing but copy the query's ID into a fixed reply
(an A record for h0.bench.test): every cost left is uvloop's and the kernel's
per-datagram work.  The benchmark runs it beside the forwarders in the cache-hit
test, so "resolver / ceiling" is measured in the same run on the same machine.

    python bench/ceiling.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

# Header after the ID: QR RD RA, NOERROR, 1 question, 1 answer; h0.bench.test A IN;
# answer: pointer to the name, A IN, TTL 86400, 192.0.2.1.
REPLY_TAIL = (b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
              b"\x02h0\x05bench\x04test\x00\x00\x01\x00\x01"
              b"\xc0\x0c\x00\x01\x00\x01\x00\x01\x51\x80\x00\x04\xc0\x00\x02\x01")


class Ceiling(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(data[:2] + REPLY_TAIL, addr)


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Ceiling, local_addr=("127.0.0.1", port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
