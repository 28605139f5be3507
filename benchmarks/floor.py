"""The floor: what uvloop alone costs per query here. Answers from a dict, no parsing.

    python benchmarks/floor.py PORT

A reply is built once per distinct query (bytes after the ID) with dnslib and then
only its ID is patched. ``peers.py`` runs it beside the GSLB so that the GSLB's
figure can be read against what Python and the event loop cost on their own.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from dnslib import RR, A, DNSRecord


class Floor(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: dict[bytes, bytes] = {}
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.replies.get(data[2:])
        if reply is None:
            query = DNSRecord.parse(data)
            response = query.reply()
            for address in ("192.0.2.11", "192.0.2.12"):
                response.add_answer(RR(query.q.qname, rdata=A(address), ttl=30))
            reply = self.replies[data[2:]] = response.pack()
        self.transport.sendto(data[:2] + reply[2:], addr)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Floor, local_addr=("127.0.0.1", port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(int(sys.argv[1])))
